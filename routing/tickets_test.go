package routing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func tk(b byte) TicketKey {
	var k TicketKey
	for i := range k {
		k[i] = b ^ byte(i)
	}
	return k
}

func ringKeys(r *TicketRing) []TicketKey { return r.Keys }

func TestTicketRingRotation(t *testing.T) {
	var r *TicketRing
	if !r.Empty() || r.ServerKeys() != nil || r.Sealing() != "" {
		t.Fatal("nil ring not empty")
	}
	// First rotation: a pending and a current key.
	r, err := r.Rotate(TicketRotation{Keys: []TicketKey{tk(2), tk(1)}, Keep: 4, At: 100})
	if err != nil {
		t.Fatal(err)
	}
	if got := ringKeys(r); len(got) != 2 || got[0] != tk(2) || got[1] != tk(1) || r.Rotated != 100 {
		t.Fatalf("first ring %v rotated %d", got, r.Rotated)
	}
	// tk(1) seals; tk(2) is pending: accepted, not sealing.
	sk := r.ServerKeys()
	if len(sk) != 2 || sk[0] != [32]byte(tk(1)) || sk[1] != [32]byte(tk(2)) {
		t.Fatalf("server keys %v", sk)
	}
	if r.Sealing() != tk(1).ID() {
		t.Fatalf("sealing %s", r.Sealing())
	}
	// Each rotation promotes the pending key and keeps Keep keys.
	for i, b := range []byte{3, 4, 5} {
		if r, err = r.Rotate(TicketRotation{Keys: []TicketKey{tk(b)}, Keep: 4, At: int64(200 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	want := []TicketKey{tk(5), tk(4), tk(3), tk(2)}
	if fmt.Sprint(ringKeys(r)) != fmt.Sprint(want) {
		t.Fatalf("ring %v, want %v", ringKeys(r), want)
	}
	sk = r.ServerKeys()
	if sk[0] != [32]byte(tk(4)) || len(sk) != 4 {
		t.Fatalf("sealing key %v", TicketKey(sk[0]))
	}
	for _, k := range want {
		found := false
		for _, s := range sk {
			found = found || s == [32]byte(k)
		}
		if !found {
			t.Fatalf("%v not accepted", k)
		}
	}
	// A smaller Keep shrinks the ring.
	r2, err := r.Rotate(TicketRotation{Keys: []TicketKey{tk(6)}, Keep: 2, At: 300})
	if err != nil || fmt.Sprint(ringKeys(r2)) != fmt.Sprint([]TicketKey{tk(6), tk(5)}) {
		t.Fatalf("keep 2: %v %v", ringKeys(r2), err)
	}
	// The input ring is unchanged (immutable once stored).
	if fmt.Sprint(ringKeys(r)) != fmt.Sprint(want) {
		t.Fatal("Rotate changed its receiver")
	}
}

func TestTicketRingRotateIdempotent(t *testing.T) {
	r, _ := (*TicketRing)(nil).Rotate(TicketRotation{Keys: []TicketKey{tk(2), tk(1)}, Keep: 4, At: 1})
	rot := TicketRotation{Keys: []TicketKey{tk(3)}, Keep: 4, At: 2}
	once, _ := r.Rotate(rot)
	twice, err := once.Rotate(rot)
	if err != nil || fmt.Sprint(twice.Keys) != fmt.Sprint(once.Keys) || twice.Rotated != once.Rotated {
		t.Fatalf("applied twice: %v, once: %v (%v)", twice.Keys, once.Keys, err)
	}
}

// A rotation carrying a huge list (a buggy or hostile member's command)
// leaves a ring of Keep keys, the newest.
func TestTicketRingRotateHugeList(t *testing.T) {
	rot := TicketRotation{Keep: 4, At: 1}
	for i := range 10000 {
		var k TicketKey
		k[0], k[1], k[2] = byte(i), byte(i>>8), 1
		rot.Keys = append(rot.Keys, k)
	}
	r, err := (&TicketRing{Keys: []TicketKey{tk(9)}}).Rotate(rot)
	if err != nil || len(r.Keys) != 4 || r.Keys[0] != rot.Keys[0] || r.Keys[3] != rot.Keys[3] {
		t.Fatalf("ring of %d keys (%v)", len(r.Keys), err)
	}
}

func TestTicketRingRotateInvalid(t *testing.T) {
	for _, rot := range []TicketRotation{
		{Keep: 4},
		{Keys: []TicketKey{tk(1)}, Keep: 1},
		{Keys: []TicketKey{tk(1)}, Keep: MaxTicketKeys + 1},
		{Keys: []TicketKey{{}}, Keep: 4},
	} {
		if _, err := (*TicketRing)(nil).Rotate(rot); err == nil {
			t.Errorf("%+v accepted", rot)
		}
	}
}

// A key never prints its bytes: not with any fmt verb, not in slog, not
// in a printed command.
func TestTicketKeyRedacted(t *testing.T) {
	k := tk(0x5a)
	raw := [32]byte(k)
	secrets := []string{fmt.Sprintf("%x", raw[:]), fmt.Sprint(raw[:]), fmt.Sprintf("%v", raw)}
	b64, _ := k.MarshalText()
	secrets = append(secrets, string(b64))
	c := Command{Type: CmdTicketKeys, Tickets: &TicketRotation{Keys: []TicketKey{k}, Keep: 4}}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "key", k, "keys", c.Tickets.Keys, "cmd", c)
	var shown []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%x", "%X", "%d", "%s", "%q"} {
		shown = append(shown, fmt.Sprintf(verb, k), fmt.Sprintf(verb, *c.Tickets), fmt.Sprintf(verb, c.Tickets.Keys))
	}
	shown = append(shown, logged.String())
	for _, s := range shown {
		for _, secret := range secrets {
			if strings.Contains(s, secret) {
				t.Fatalf("%q shows the key", s)
			}
		}
		if !strings.Contains(s, k.ID()) {
			t.Fatalf("%q lacks the fingerprint", s)
		}
	}
}

func TestTicketKeyJSON(t *testing.T) {
	k := tk(7)
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	var back TicketKey
	if err := json.Unmarshal(b, &back); err != nil || back != k {
		t.Fatalf("round trip: %v %v", back, err)
	}
	// Longer than a key: 48 characters decode to 36 bytes, which once
	// overran the decoding buffer (a panic, found by FuzzDecodeCommand).
	for _, bad := range []string{`"AAAA"`, `"` + strings.Repeat("A", 44) + `A"`, `"!!"`, `12`,
		`"` + strings.Repeat("0", 48) + `"`, `"` + strings.Repeat("A", 4096) + `"`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// The rotation is replicated state: the FSM applies it beside the table
// (which it leaves alone), tells OnTickets, refuses a bad one on every
// node alike, and a snapshot carries it to a restored node.
func TestFSMTicketKeys(t *testing.T) {
	f := NewFSM()
	var told []*TicketRing
	f.OnTickets = func(r *TicketRing) { told = append(told, r) }
	applyTo(t, f, 1, Command{Type: CmdPutBackend, Backend: &Backend{ID: "b", Host: "h", IMAPPort: 143}})
	before := f.Table()
	if resp := applyTo(t, f, 2, Command{Type: CmdTicketKeys, Tickets: &TicketRotation{Keys: []TicketKey{tk(2), tk(1)}, Keep: 3, At: 10}}); resp != nil {
		t.Fatal(resp)
	}
	if f.Table() != before {
		t.Fatal("ticket-keys replaced the table")
	}
	if f.AppliedIndex() != 2 || len(told) != 1 || told[0].Sealing() != tk(1).ID() {
		t.Fatalf("index %d told %v", f.AppliedIndex(), told)
	}
	if resp := applyTo(t, f, 3, Command{Type: CmdTicketKeys, Tickets: &TicketRotation{Keys: []TicketKey{tk(3)}, Keep: 1}}); resp == nil {
		t.Fatal("keep 1 accepted")
	}
	if resp := applyTo(t, f, 4, Command{Type: CmdTicketKeys}); resp == nil {
		t.Fatal("no keys accepted")
	}
	applyTo(t, f, 5, Command{Type: CmdTicketKeys, Tickets: &TicketRotation{Keys: []TicketKey{tk(3)}, Keep: 3, At: 20}})
	got := f.Tickets()
	if fmt.Sprint(got.Keys) != fmt.Sprint([]TicketKey{tk(3), tk(2), tk(1)}) || got.Rotated != 20 {
		t.Fatalf("ring %v", got)
	}
	// Tickets returns a copy.
	got.Keys[0] = tk(9)
	if f.Tickets().Keys[0] != tk(3) {
		t.Fatal("Tickets shares the ring")
	}

	snap, _ := f.Snapshot()
	var buf bytes.Buffer
	if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	// The public snapshot writer (the table alone) never carries keys.
	var pub bytes.Buffer
	if err := WriteSnapshot(&pub, f.Table()); err != nil {
		t.Fatal(err)
	}
	b64, _ := tk(3).MarshalText()
	if bytes.Contains(pub.Bytes(), b64) || !bytes.Contains(buf.Bytes(), b64) {
		t.Fatal("keys in the wrong snapshot")
	}
	g := NewFSM()
	var gtold *TicketRing
	g.OnTickets = func(r *TicketRing) { gtold = r }
	if err := g.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(g.Tickets().Keys) != fmt.Sprint(f.Tickets().Keys) || g.Tickets().Rotated != 20 || gtold == nil {
		t.Fatalf("restored %v (told %v)", g.Tickets(), gtold)
	}
	// A snapshot without keys restores none.
	if err := g.Restore(io.NopCloser(bytes.NewReader(pub.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !g.Tickets().Empty() {
		t.Fatal("keys survived a snapshot without them")
	}
}

// A node one level older halts on the command rather than skip it.
func TestTicketKeysCommandLevel(t *testing.T) {
	if CommandLevel < CmdTicketKeys || BaseCommandLevel >= CmdTicketKeys {
		t.Fatal("ticket-keys must be gated by the command level")
	}
	b, err := Command{Type: CmdTicketKeys, Tickets: &TicketRotation{Keys: []TicketKey{tk(1)}, Keep: 2}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeCommand(b)
	if err != nil || c.Tickets == nil || c.Tickets.Keys[0] != tk(1) {
		t.Fatalf("decoded %+v %v", c, err)
	}
	if CmdTicketKeys.String() != "ticket-keys" {
		t.Fatal(CmdTicketKeys.String())
	}
}
