package node

import (
	"crypto/rand"
	"crypto/tls"
	"sync"
)

// TicketKeys seals and opens the TLS session tickets of every listener of
// a node with one set of keys that the node does not own: the cluster's
// (routing.TicketRing, replicated by raft) or, on a standalone node, its
// own, handed to the next process by an in-place upgrade. A ticket issued
// by one node, or by the process before an upgrade, then resumes on any
// other, so that clients reconnecting after a failover, a VIP move or an
// upgrade skip the full handshake.
//
// The keys are crypto/tls's (Config.SetSessionTicketKeys: 32 bytes each,
// the sealing key first, every key accepted): tickets are sealed and
// opened by crypto/tls's own code, on a private Config that holds the
// keys, through each listener Config's WrapSession and UnwrapSession. A
// rotation changes that one Config, so every listener, those reloaded
// since included, follows at once.
//
// Until keys are set it holds a random key of its own (tickets then
// resume on this process only, as with crypto/tls's default keys).
type TicketKeys struct {
	sealer *tls.Config // holds the keys; never serves a connection

	mu   sync.Mutex
	keys [][32]byte // as last set, the sealing key first
}

// NewTicketKeys returns keys holding one random key of this process.
func NewTicketKeys() *TicketKeys {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic("node: no randomness for a session-ticket key: " + err.Error())
	}
	t := &TicketKeys{sealer: &tls.Config{}}
	t.Set([][32]byte{k})
	return t
}

// Set replaces the keys (the sealing key first; all of them are accepted).
// An empty set is ignored: the keys in use stay.
func (t *TicketKeys) Set(keys [][32]byte) {
	if len(keys) == 0 {
		return
	}
	keys = append([][32]byte(nil), keys...)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sealer.SetSessionTicketKeys(keys)
	t.keys = keys
}

// Keys returns a copy of the keys in use, the sealing key first.
func (t *TicketKeys) Keys() [][32]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([][32]byte(nil), t.keys...)
}

// install makes cfg seal and open its tickets with these keys.
func (t *TicketKeys) install(cfg *tls.Config) {
	cfg.WrapSession = t.sealer.EncryptTicket
	cfg.UnwrapSession = t.sealer.DecryptTicket
}
