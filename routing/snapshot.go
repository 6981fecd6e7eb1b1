package routing

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Snapshot format (version 1):
//
//	"PRTCSNP1"
//	uvarint length + JSON {backends, pools, domains, default_pool, index, seeded}
//	uvarint user count, then per user:
//	  uvarint len + user, kind byte, uvarint len + name,
//	  [uvarint len + login], [uvarint len + source]
//
// The kind byte's bit 0 says pool (1) or backend (0); bit 1 that a login
// (a rename, Target.Login) follows, bit 2 that a source (Target.Source)
// follows. Only CmdImport writes either, and a leader writes it only when
// every node applies it, so no older version meets those bits.
//
// The small parts are JSON (easy to evolve); the user rules, which can
// number millions, are a compact binary list.
const snapshotMagic = "PRTCSNP1"

// Bits of a user rule's kind byte.
const (
	kindPool   = 1 << 0
	kindLogin  = 1 << 1
	kindSource = 1 << 2
)

// Bounds that protect Restore from a corrupt or hostile snapshot.
const (
	maxSnapHeader = 64 << 20
	maxSnapString = 4096
)

type snapHeader struct {
	Backends    []*Backend        `json:"backends"`
	Pools       []*Pool           `json:"pools"`
	Domains     map[string]string `json:"domains"`
	DefaultPool string            `json:"default_pool"`
	// Index is the raft index of the last command the table reflects
	// (FSM.AppliedIndex). Snapshots written before it was recorded lack
	// it; older versions ignore it.
	Index *uint64 `json:"index,omitempty"`
	// Seeded is the record of the last seed from a configuration file
	// (Table.WithSeed). Older snapshots lack it (the next seed writes the
	// file's entries as new ones); older versions ignore it.
	Seeded *Seed `json:"seeded,omitempty"`
	// HashKey is the table's hash key when it is not the default
	// (address). Only a command that every node knows sets it
	// (CmdSetHashKey), so no older version reads a snapshot holding it.
	HashKey HashKey `json:"hash_key,omitempty"`
	// RegexMap is the regex popmap in order. Only a command that every
	// node knows sets it (CmdSetRegexMap), so no older version reads a
	// snapshot holding it.
	RegexMap []RegexRule `json:"regex_map,omitempty"`
	// Sources is the directory sources' sync state. Only a command that
	// every node knows sets it (CmdSourceState).
	Sources map[string]SourceState `json:"sources,omitempty"`
	// Tickets is the session-ticket key ring (FSM state beside the
	// table: TicketRing). Only a command that every node knows writes it
	// (CmdTicketKeys); older versions ignore it. The public
	// WriteSnapshot never writes it.
	Tickets *TicketRing `json:"tickets,omitempty"`
	// VIPs are the placements of virtual addresses. Only a command that
	// every node knows writes them (CmdSetVIPs), so no older version
	// reads a snapshot holding them.
	VIPs      []VIPAssignment `json:"vips,omitempty"`
	VIPLeader string          `json:"vip_leader,omitempty"`
}

// WriteSnapshot writes t in the snapshot format (without an index).
func WriteSnapshot(w io.Writer, t *Table) error { return writeSnapshot(w, t, nil, nil) }

// writeSnapshot writes t, the index it reflects when known, and the
// session-ticket keys when there are any.
func writeSnapshot(w io.Writer, t *Table, index *uint64, tickets *TicketRing) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(snapshotMagic)
	hdr := snapHeader{Backends: t.Backends(), Pools: t.Pools(), Domains: t.domains, DefaultPool: t.defaultPool, Index: index}
	if t.hashKey != HashAddress {
		hdr.HashKey = t.hashKey
	}
	if t.seed != nil {
		seeded := t.Seeded()
		hdr.Seeded = &seeded
	}
	if len(t.regex) > 0 {
		hdr.RegexMap = t.RegexMap()
	}
	if len(t.sources) > 0 {
		hdr.Sources = t.sources
	}
	if !tickets.Empty() {
		hdr.Tickets = tickets
	}
	if len(t.vips) > 0 {
		hdr.VIPs = t.VIPs()
	}
	hdr.VIPLeader = t.vipLeader
	h, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	var num [binary.MaxVarintLen64]byte
	putU := func(v uint64) { bw.Write(num[:binary.PutUvarint(num[:], v)]) }
	putS := func(s string) { putU(uint64(len(s))); bw.WriteString(s) }
	putU(uint64(len(h)))
	bw.Write(h)
	putU(uint64(t.users.len()))
	t.users.each(func(u string, tg Target) bool {
		putS(u)
		var kind byte
		name := tg.Backend
		if tg.Pool != "" {
			kind, name = kindPool, tg.Pool
		}
		if tg.Login != "" {
			kind |= kindLogin
		}
		if tg.Source != "" {
			kind |= kindSource
		}
		bw.WriteByte(kind)
		putS(name)
		if tg.Login != "" {
			putS(tg.Login)
		}
		if tg.Source != "" {
			putS(tg.Source)
		}
		return true
	})
	return bw.Flush()
}

// ReadSnapshot reads a table written by WriteSnapshot, validating it.
func ReadSnapshot(r io.Reader) (*Table, error) {
	s, err := readSnapshot(r)
	return s.table, err
}

// snapshot is what a snapshot holds.
type snapshot struct {
	table   *Table
	index   *uint64 // nil if the snapshot does not record one
	tickets *TicketRing
}

// readSnapshot reads a table, the index it reflects and the
// session-ticket keys.
func readSnapshot(r io.Reader) (snapshot, error) {
	t, idx, tickets, err := readSnapshotParts(r)
	return snapshot{table: t, index: idx, tickets: tickets}, err
}

func readSnapshotParts(r io.Reader) (*Table, *uint64, *TicketRing, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != snapshotMagic {
		return nil, nil, nil, errors.New("routing snapshot: bad magic (not a routing snapshot, or a newer format)")
	}
	hl, err := binary.ReadUvarint(br)
	if err != nil || hl > maxSnapHeader {
		return nil, nil, nil, fmt.Errorf("routing snapshot: bad header length")
	}
	hb := make([]byte, hl)
	if _, err := io.ReadFull(br, hb); err != nil {
		return nil, nil, nil, fmt.Errorf("routing snapshot: header: %w", err)
	}
	var h snapHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, nil, nil, fmt.Errorf("routing snapshot: header: %w", err)
	}
	spec := TableSpec{Domains: h.Domains, DefaultPool: h.DefaultPool, HashKey: h.HashKey}
	for _, b := range h.Backends {
		if b != nil {
			spec.Backends = append(spec.Backends, *b)
		}
	}
	for _, p := range h.Pools {
		if p != nil {
			spec.Pools = append(spec.Pools, *p)
		}
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("routing snapshot: user count: %w", err)
	}
	readS := func() (string, error) {
		l, err := binary.ReadUvarint(br)
		if err != nil {
			return "", err
		}
		if l > maxSnapString {
			return "", fmt.Errorf("string of %d bytes", l)
		}
		b := make([]byte, l)
		_, err = io.ReadFull(br, b)
		return string(b), err
	}
	t, err := NewTable(spec) // backends, pools, domains, default
	if err != nil {
		return nil, nil, nil, fmt.Errorf("routing snapshot: %w", err)
	}
	users := &userMap{}
	// Keys written by a version whose canonical form was another (before
	// NFC and IDNA) are stored under today's; two of them that are now one
	// key keep one rule, decided by the names alone (preferKey) so that
	// every node restoring this snapshot keeps the same.
	var migrated map[string]string // canonical key -> the key it was read as
	sources := map[string]string{}
	per := int(min(n, 1<<24) / userShards)
	for i := range users.shards {
		users.shards[i] = make(map[string]Target, per+per/8)
	}
	for i := uint64(0); i < n; i++ {
		u, err := readS()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: %w", i, err)
		}
		kind, err := br.ReadByte()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: %w", i, err)
		}
		name, err := readS()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: %w", i, err)
		}
		if kind&^(kindPool|kindLogin|kindSource) != 0 {
			return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: bad kind %d", i, kind)
		}
		tg := Target{Backend: name}
		if kind&kindPool != 0 {
			tg = Target{Pool: name}
		}
		if kind&kindLogin != 0 {
			if tg.Login, err = readS(); err != nil || !validUser(tg.Login) {
				return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: bad login %q (%v)", i, tg.Login, err)
			}
		}
		if kind&kindSource != 0 {
			if tg.Source, err = readS(); err != nil || !ValidSource(tg.Source) {
				return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: bad source %q (%v)", i, tg.Source, err)
			}
		}
		// Not validUser's 512 bytes: a key may be longer than the name
		// it was made from (a table of an older version may hold one);
		// readS bounds it.
		if u == "" || !utf8.ValidString(u) || strings.ContainsAny(u, "\x00\r\n") {
			return nil, nil, nil, fmt.Errorf("routing snapshot: user %d: bad name %q", i, u)
		}
		if err := t.checkTarget(tg); err != nil {
			return nil, nil, nil, fmt.Errorf("routing snapshot: user %s: %w", u, err)
		}
		tg = t.shareNames(tg)
		if tg.Source != "" {
			// Sources are few: one string each.
			if s, ok := sources[tg.Source]; ok {
				tg.Source = s
			} else {
				sources[tg.Source] = tg.Source
			}
		}
		key := NormalizeUser(u)
		sh := users.shards[shardOf(key)]
		_, dup := sh[key]
		if key != u || dup && migrated[key] != "" {
			if migrated == nil {
				migrated = map[string]string{}
			}
			prev, was := migrated[key]
			if !was && dup {
				prev = key // the canonical key itself was read before
			}
			if dup && !preferKey(key, u, prev) {
				continue
			}
			if key == u {
				delete(migrated, key)
			} else {
				migrated[key] = u
			}
		}
		if !dup {
			users.n++
		}
		sh[key] = tg
	}
	t.users = users
	if h.Seeded != nil {
		t.seed = recordOf(*h.Seeded)
	}
	for _, r := range h.RegexMap {
		c, err := compileRule(r)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("routing snapshot: %w", err)
		}
		t.regex = append(t.regex, c)
	}
	for name, st := range h.Sources {
		if t, err = t.WithSourceState(name, &st); err != nil {
			return nil, nil, nil, fmt.Errorf("routing snapshot: %w", err)
		}
	}
	if h.Tickets != nil {
		for _, k := range h.Tickets.Keys {
			if k == (TicketKey{}) {
				return nil, nil, nil, errors.New("routing snapshot: an all-zero session-ticket key")
			}
		}
		if len(h.Tickets.Keys) > MaxTicketKeys {
			return nil, nil, nil, fmt.Errorf("routing snapshot: %d session-ticket keys", len(h.Tickets.Keys))
		}
	}
	if len(h.VIPs) > 0 {
		t.vips = make(map[string]VIPAssignment, len(h.VIPs))
		for _, v := range h.VIPs {
			if _, err := netip.ParseAddr(v.Address); err != nil || !validNode(v.Node) || t.vips[v.Address].Node != "" {
				return nil, nil, nil, fmt.Errorf("routing snapshot: bad VIP placement %+v", v)
			}
			t.vips[v.Address] = v
		}
	}
	if h.VIPLeader != "" && !validNode(h.VIPLeader) {
		return nil, nil, nil, fmt.Errorf("routing snapshot: bad VIP leader %q", h.VIPLeader)
	}
	t.vipLeader = h.VIPLeader
	return t, h.Index, h.Tickets, nil
}
