package routing

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
)

// TLS session-ticket keys, replicated so that a ticket one node issued
// resumes on any other, and after an in-place upgrade (see
// routing/DESIGN.md, "Session-ticket keys"). They are FSM state beside the
// table, never part of it: lookups, exports and the routing API read the
// table only, so the keys cannot leak through them.

// TicketKey is one session-ticket key (crypto/tls derives its AES and
// HMAC keys from these 32 bytes: Config.SetSessionTicketKeys). It is a
// secret: printing it (fmt, slog) shows only its fingerprint, and only
// JSON (the command and snapshot encoding) carries its bytes.
type TicketKey [32]byte

// ID is the key's fingerprint: the first 8 bytes of its SHA-256 in hex.
// It identifies a key in logs and status without revealing it.
func (k TicketKey) ID() string {
	h := sha256.Sum256(k[:])
	return hex.EncodeToString(h[:8])
}

// String shows the fingerprint only.
func (k TicketKey) String() string { return "ticket-key:" + k.ID() }

// GoString shows the fingerprint only (%#v).
func (k TicketKey) GoString() string { return k.String() }

// Format shows the fingerprint for every verb, so that no format
// (%x, %v, %d ...) prints the key's bytes.
func (k TicketKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// LogValue shows the fingerprint in structured logs.
func (k TicketKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText encodes the key in base64 (JSON: a string).
func (k TicketKey) MarshalText() ([]byte, error) {
	return []byte(base64.StdEncoding.EncodeToString(k[:])), nil
}

// UnmarshalText decodes a base64 key of exactly 32 bytes.
func (k *TicketKey) UnmarshalText(b []byte) error {
	// The length first: Decode writes past a buffer too short for what
	// it decodes (a longer string panicked here, in a command or a
	// snapshot from the network).
	if len(b) != base64.StdEncoding.EncodedLen(len(k)) {
		return invalid("a session-ticket key is 32 bytes in base64")
	}
	var buf [33]byte // DecodedLen(44)
	n, err := base64.StdEncoding.Decode(buf[:], b)
	if err != nil || n != len(k) {
		return invalid("a session-ticket key is 32 bytes in base64")
	}
	copy(k[:], buf[:n])
	return nil
}

// Bounds of the ring a rotation may ask for.
const (
	MinTicketKeys = 2  // the pending key and the current one
	MaxTicketKeys = 16 // more would only widen what a stolen ring decrypts
)

// TicketRing is the replicated set of session-ticket keys, newest first.
// Keys[0] is pending: every node accepts tickets sealed with it, none
// seals with it yet, so that a node that applies the next rotation a
// little before another never issues a ticket the other cannot open.
// Keys[1] is current (sealing); the rest are previous keys, still
// accepted. A ring of one key seals with it.
type TicketRing struct {
	Keys []TicketKey `json:"keys"`
	// Rotated is when the last rotation was written (unix milliseconds,
	// the leader's clock, carried in the command so that every node
	// applies the same value).
	Rotated int64 `json:"rotated"`
}

// TicketRotation is the payload of CmdTicketKeys: new keys, newest first,
// put in front of the ring, which then keeps its Keep newest keys.
type TicketRotation struct {
	Keys []TicketKey `json:"keys"`
	Keep int         `json:"keep"`
	At   int64       `json:"at"` // unix ms, the leader's clock
}

// Empty reports whether the ring holds no key.
func (r *TicketRing) Empty() bool { return r == nil || len(r.Keys) == 0 }

// Rotate returns the ring with rot applied. It is deterministic (the
// command carries the keys, their number and the time) and idempotent: a
// key the ring already holds is not added again, and a rotation whose
// keys are all there already (a write retried after an unknown outcome)
// changes nothing.
func (r *TicketRing) Rotate(rot TicketRotation) (*TicketRing, error) {
	if len(rot.Keys) == 0 {
		return nil, invalid("ticket-keys without a key")
	}
	if rot.Keep < MinTicketKeys || rot.Keep > MaxTicketKeys {
		return nil, invalid("ticket-keys: keep %d is not between %d and %d", rot.Keep, MinTicketKeys, MaxTicketKeys)
	}
	var zero TicketKey
	for _, k := range rot.Keys {
		if k == zero {
			return nil, invalid("ticket-keys: an all-zero key")
		}
	}
	keys := make([]TicketKey, 0, len(rot.Keys)+len(r.keys()))
	for i, k := range rot.Keys {
		if !slices.Contains(r.keys(), k) && !slices.Contains(rot.Keys[:i], k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return r, nil
	}
	keys = append(keys, r.keys()...)
	if len(keys) > rot.Keep {
		keys = keys[:rot.Keep]
	}
	return &TicketRing{Keys: keys, Rotated: rot.At}, nil
}

func (r *TicketRing) keys() []TicketKey {
	if r == nil {
		return nil
	}
	return r.Keys
}

// ServerKeys returns the keys in crypto/tls's order
// (Config.SetSessionTicketKeys): the sealing key first, then every other
// key of the ring, which are accepted too. Nil for an empty ring.
func (r *TicketRing) ServerKeys() [][32]byte {
	if r.Empty() {
		return nil
	}
	out := make([][32]byte, 0, len(r.Keys))
	seal := 0
	if len(r.Keys) > 1 {
		seal = 1
	}
	out = append(out, r.Keys[seal])
	for i, k := range r.Keys {
		if i != seal {
			out = append(out, k)
		}
	}
	return out
}

// Sealing returns the fingerprint of the key that seals new tickets ("" for
// an empty ring), for status and logs.
func (r *TicketRing) Sealing() string {
	if k := r.ServerKeys(); len(k) > 0 {
		return TicketKey(k[0]).ID()
	}
	return ""
}

// Clone returns a copy that shares nothing with r.
func (r *TicketRing) Clone() *TicketRing {
	if r == nil {
		return nil
	}
	return &TicketRing{Keys: append([]TicketKey(nil), r.Keys...), Rotated: r.Rotated}
}
