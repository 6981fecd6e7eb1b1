package routing

import (
	"encoding/json"
	"errors"
	"fmt"
)

// CommandType is the first byte of a replicated command. Values are only
// ever appended: a node that reads a type it does not know stops rather
// than skip it, so an old binary in a rolling upgrade can never silently
// diverge from the others.
type CommandType byte

const (
	CmdPutBackend     CommandType = 1
	CmdDeleteBackend  CommandType = 2
	CmdPutPool        CommandType = 3
	CmdDeletePool     CommandType = 4
	CmdPutUsers       CommandType = 5
	CmdDeleteUsers    CommandType = 6
	CmdPutDomain      CommandType = 7
	CmdDeleteDomain   CommandType = 8
	CmdSetDefaultPool CommandType = 9
	CmdPatchBackend   CommandType = 10 // some fields of one backend (BackendPatch)
	CmdSeed           CommandType = 11 // a configuration file's routing section (Seed)
	CmdSetHashKey     CommandType = 12 // the part of user names pools hash on (Target: HashKey)
	CmdImport         CommandType = 13 // user rules of one import source, with renames, and its prunes (WithImport)
	CmdSetRegexMap    CommandType = 14 // the regex popmap of one import source (WithRegexMap)
	CmdSourceState    CommandType = 15 // the sync state of one directory source (WithSourceState)
	// CmdTicketKeys rotates the TLS session-ticket keys (TicketRing). It
	// changes FSM state beside the table, never the table (FSM.Apply).
	CmdTicketKeys CommandType = 16
	CmdSetVIPs    CommandType = 17 // placements of virtual addresses on nodes (WithVIPs)
)

// CommandLevel is the newest command type this binary applies; nodes
// gossip it, and a leader writes a type newer than BaseCommandLevel only
// when every server of the cluster has reached it (cluster.ErrUnsupported
// otherwise), so an older node in a rolling upgrade never meets a type it
// does not know. BaseCommandLevel is what every Portico release applies.
const (
	CommandLevel     = CmdSetVIPs
	BaseCommandLevel = CmdSetDefaultPool
)

func (t CommandType) String() string {
	switch t {
	case CmdPutBackend:
		return "put-backend"
	case CmdDeleteBackend:
		return "delete-backend"
	case CmdPutPool:
		return "put-pool"
	case CmdDeletePool:
		return "delete-pool"
	case CmdPutUsers:
		return "put-users"
	case CmdDeleteUsers:
		return "delete-users"
	case CmdPutDomain:
		return "put-domain"
	case CmdDeleteDomain:
		return "delete-domain"
	case CmdSetDefaultPool:
		return "set-default-pool"
	case CmdPatchBackend:
		return "patch-backend"
	case CmdSeed:
		return "seed"
	case CmdSetHashKey:
		return "set-hash-key"
	case CmdImport:
		return "import"
	case CmdSetRegexMap:
		return "set-regex-map"
	case CmdSourceState:
		return "source-state"
	case CmdTicketKeys:
		return "ticket-keys"
	case CmdSetVIPs:
		return "set-vips"
	}
	return fmt.Sprintf("unknown(%d)", byte(t))
}

// commandVersion is the encoding version of the payload (second byte).
// A payload version newer than this binary knows is refused like an
// unknown type.
const commandVersion = 1

// Command is one change to the routing table. Every command is a put or a
// delete by key, so applying it twice gives the same table: a write whose
// outcome is unknown (leader lost mid-request) can be retried safely.
type Command struct {
	Type    CommandType
	Backend *Backend      `json:",omitempty"`
	Pool    *Pool         `json:",omitempty"`
	Users   []UserRoute   `json:",omitempty"`
	Names   []string      `json:",omitempty"` // ids / names / users / domains to delete
	Domain  string        `json:",omitempty"`
	Target  string        `json:",omitempty"` // pool of a domain rule; default pool; hash key
	Patch   *BackendPatch `json:",omitempty"`
	Seed    *Seed         `json:",omitempty"`
	Source  string        `json:",omitempty"` // import source (CmdImport, CmdSetRegexMap); directory source (CmdSourceState)
	Regex   []RegexRule   `json:",omitempty"`
	// State is a directory source's sync state (CmdSourceState); nil
	// removes it.
	State *SourceState `json:",omitempty"`
	// Tickets: CmdTicketKeys's new keys (secret: see TicketKey).
	Tickets *TicketRotation `json:",omitempty"`
	VIPs    []VIPAssignment `json:",omitempty"` // CmdSetVIPs
}

// payload is what is JSON-encoded after the two header bytes.
type payload struct {
	Backend *Backend        `json:"backend,omitempty"`
	Pool    *Pool           `json:"pool,omitempty"`
	Users   []UserRoute     `json:"users,omitempty"`
	Names   []string        `json:"names,omitempty"`
	Domain  string          `json:"domain,omitempty"`
	Target  string          `json:"target,omitempty"`
	Patch   *BackendPatch   `json:"patch,omitempty"`
	Seed    *Seed           `json:"seed,omitempty"`
	Source  string          `json:"source,omitempty"`
	Regex   []RegexRule     `json:"regex,omitempty"`
	State   *SourceState    `json:"state,omitempty"`
	Tickets *TicketRotation `json:"tickets,omitempty"`
	VIPs    []VIPAssignment `json:"vips,omitempty"`
}

// Encode returns the command's wire form: type byte, version byte, JSON.
func (c Command) Encode() ([]byte, error) {
	if c.Type == 0 {
		return nil, errors.New("command without type")
	}
	p, err := json.Marshal(payload{Backend: c.Backend, Pool: c.Pool, Users: c.Users, Names: c.Names, Domain: c.Domain, Target: c.Target, Patch: c.Patch, Seed: c.Seed, Source: c.Source, Regex: c.Regex, State: c.State, Tickets: c.Tickets, VIPs: c.VIPs})
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(c.Type), commandVersion}, p...), nil
}

// ErrUnknownCommand: the command type or version is newer than this binary.
var ErrUnknownCommand = errors.New("unknown command")

// DecodeCommand parses a command's wire form.
func DecodeCommand(b []byte) (Command, error) {
	if len(b) < 2 {
		return Command{}, fmt.Errorf("%w: %d bytes", ErrInvalid, len(b))
	}
	t := CommandType(b[0])
	if t == 0 || t > CommandLevel {
		return Command{}, fmt.Errorf("%w: type %d", ErrUnknownCommand, b[0])
	}
	if b[1] != commandVersion {
		return Command{}, fmt.Errorf("%w: %s version %d (this binary knows %d)", ErrUnknownCommand, t, b[1], commandVersion)
	}
	var p payload
	if err := json.Unmarshal(b[2:], &p); err != nil {
		return Command{}, fmt.Errorf("%w: %s: %v", ErrInvalid, t, err)
	}
	return Command{Type: t, Backend: p.Backend, Pool: p.Pool, Users: p.Users, Names: p.Names, Domain: p.Domain, Target: p.Target, Patch: p.Patch, Seed: p.Seed, Source: p.Source, Regex: p.Regex, State: p.State, Tickets: p.Tickets, VIPs: p.VIPs}, nil
}

// Apply returns the table with c applied. It is deterministic: it depends
// only on t and c (no clock, randomness or configuration). An error leaves
// the table unchanged.
func (t *Table) Apply(c Command) (*Table, error) {
	switch c.Type {
	case CmdPutBackend:
		if c.Backend == nil {
			return nil, invalid("put-backend without backend")
		}
		return t.WithBackend(*c.Backend)
	case CmdDeleteBackend:
		n := t
		for _, id := range c.Names {
			var err error
			if n, err = n.WithoutBackend(id); err != nil {
				return nil, err
			}
		}
		return n, nil
	case CmdPutPool:
		if c.Pool == nil {
			return nil, invalid("put-pool without pool")
		}
		return t.WithPool(*c.Pool)
	case CmdDeletePool:
		n := t
		for _, name := range c.Names {
			var err error
			if n, err = n.WithoutPool(name); err != nil {
				return nil, err
			}
		}
		return n, nil
	case CmdPutUsers:
		// A put-users carries no rename or source: a node older than
		// CmdImport decodes the command without them, so every node
		// must apply it without them too.
		users := make([]UserRoute, len(c.Users))
		for i, u := range c.Users {
			users[i] = UserRoute{User: u.User, Target: Target{Backend: u.Backend, Pool: u.Pool}}
		}
		return t.WithUsers(users)
	case CmdDeleteUsers:
		return t.WithoutUsers(c.Names), nil
	case CmdPutDomain:
		return t.WithDomain(c.Domain, c.Target)
	case CmdDeleteDomain:
		n := t
		for _, d := range c.Names {
			n = n.WithoutDomain(d)
		}
		return n, nil
	case CmdSetDefaultPool:
		return t.WithDefaultPool(c.Target)
	case CmdPatchBackend:
		if c.Patch == nil {
			return nil, invalid("patch-backend without patch")
		}
		return t.WithBackendPatch(*c.Patch)
	case CmdSeed:
		if c.Seed == nil {
			return nil, invalid("seed without seed")
		}
		return t.WithSeed(*c.Seed)
	case CmdSetHashKey:
		if c.Target == "" {
			return nil, invalid("set-hash-key without a key")
		}
		return t.WithHashKey(HashKey(c.Target))
	case CmdImport:
		return t.WithImport(c.Source, c.Users, c.Names)
	case CmdSetRegexMap:
		return t.WithRegexMap(c.Source, c.Regex)
	case CmdSourceState:
		return t.WithSourceState(c.Source, c.State)
	case CmdTicketKeys:
		return t, nil // FSM state beside the table (FSM.Apply)
	case CmdSetVIPs:
		return t.WithVIPs(c.VIPs, c.Target)
	}
	return nil, fmt.Errorf("%w: type %d", ErrUnknownCommand, byte(c.Type))
}
