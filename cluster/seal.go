package cluster

import (
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/cluster/pki"
)

// Signed gossip. memberlist's shared key keeps outsiders out of the
// gossip, but every holder of it can say anything in anyone's name. So
// everything a node gossips about itself (its metadata, its backend
// health view, its throttle counters) is sealed: signed with its node
// certificate's key, naming the node. A receiver accepts it only with a
// valid signature by a key it has seen in a verified TLS handshake with
// that very node (its certificate names the node and comes from the
// cluster CA), and each channel then accepts data only about the signer.
//
//	envelope = version:1 name_len:1 name key_id:8 payload_len:uvarint payload signature
//	signed   = "portico-gossip-1" 0x00 channel name_len name payload
//
// A key not seen yet makes the message wait for nothing: it is dropped,
// and the signer's certificate is fetched (a handshake with its cluster
// port) so that its next message, or the next push/pull, is accepted.
const (
	sealVersion = 1
	sealContext = "portico-gossip-1\x00"
	// chanMeta is the "channel" of node metadata (never a gossip channel).
	chanMeta = 0
)

var (
	errMalformedSeal = errors.New("malformed sealed message")
	errBadSignature  = errors.New("bad signature")
)

// unknownKeyError: the signer's key has not been verified yet.
type unknownKeyError struct {
	name string
	kid  pki.KeyID
}

func (e *unknownKeyError) Error() string {
	return fmt.Sprintf("no verified key %s for node %q yet", e.kid, e.name)
}

func signedBytes(ch byte, name string, payload []byte) []byte {
	b := make([]byte, 0, len(sealContext)+2+len(name)+len(payload))
	b = append(b, sealContext...)
	b = append(b, ch, byte(len(name)))
	b = append(b, name...)
	return append(b, payload...)
}

// seal signs payload for channel ch in this node's name.
func (n *Agent) seal(ch byte, payload []byte) []byte {
	b, err := sealWith(n.trust.material(), n.cfg.NodeName, ch, payload)
	if err != nil {
		n.log.Error("signing gossip failed", "error", err)
		return nil
	}
	return b
}

// sealWith seals payload in name's name with m's key.
func sealWith(m *pki.Material, name string, ch byte, payload []byte) ([]byte, error) {
	if len(name) == 0 || len(name) > 255 {
		return nil, fmt.Errorf("node name of %d bytes", len(name))
	}
	sig, err := pki.Sign(m.Signer(), signedBytes(ch, name, payload))
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 2+len(name)+8+binary.MaxVarintLen64+len(payload)+len(sig))
	b = append(b, sealVersion, byte(len(name)))
	b = append(b, name...)
	b = append(b, m.Self.KeyID[:]...)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	b = append(b, payload...)
	return append(b, sig...), nil
}

// parsedSeal is an envelope's fields, not yet verified.
type parsedSeal struct {
	name    string
	kid     pki.KeyID
	payload []byte
	sig     []byte
}

func parseSeal(b []byte) (parsedSeal, error) {
	var p parsedSeal
	if len(b) < 2 || b[0] != sealVersion {
		return p, errMalformedSeal
	}
	nl := int(b[1])
	b = b[2:]
	if nl == 0 || len(b) < nl+8 {
		return p, errMalformedSeal
	}
	p.name = string(b[:nl])
	copy(p.kid[:], b[nl:nl+8])
	b = b[nl+8:]
	l, k := binary.Uvarint(b)
	if k <= 0 || l > uint64(len(b)-k) {
		return p, errMalformedSeal
	}
	p.payload = b[k : k+int(l)]
	p.sig = b[k+int(l):]
	if len(p.sig) == 0 || len(p.sig) > 256 {
		return p, errMalformedSeal
	}
	return p, nil
}

// open verifies an envelope for channel ch and returns its signer and
// payload. An unknown key starts a fetch of the signer's certificate.
func (n *Agent) open(ch byte, b []byte) (string, []byte, error) {
	p, err := parseSeal(b)
	if err != nil {
		return "", nil, err
	}
	if p.name == n.cfg.NodeName {
		// Our own name: only our own key (a peer echoing our message, or
		// someone pretending to be us).
		if p.kid != n.trust.material().Self.KeyID {
			return "", nil, errBadSignature
		}
		if !pki.VerifySignature(n.trust.material().Self.Key, signedBytes(ch, p.name, p.payload), p.sig) {
			return "", nil, errBadSignature
		}
		return p.name, p.payload, nil
	}
	key, ok := n.peers.key(p.name, p.kid)
	if !ok {
		n.peers.wantKey(p.name)
		return "", nil, &unknownKeyError{p.name, p.kid}
	}
	if !pki.VerifySignature(key, signedBytes(ch, p.name, p.payload), p.sig) {
		return "", nil, errBadSignature
	}
	return p.name, p.payload, nil
}

// peerBook is what this node has verified about other nodes: their keys
// (from TLS handshakes), the cluster address each was reached at, and
// their last verified metadata.
type peerBook struct {
	n *Agent

	mu        sync.Mutex
	keys      map[string][]peerKey // by node name, newest last
	addrs     map[string]string    // node name -> cluster address verified by dialling it
	metas     map[string]*trustedMeta
	lastFetch map[string]time.Time

	fetchCh chan string
	// Messages waiting for their sender's key, by sender (bounded).
	pending      map[string][]heldMsg
	pendingBytes int
	retrying     map[string]bool // a fetch is due again (retryLocked)
	dropped      atomic.Uint64   // gossip messages dropped: malformed, unverifiable or forged
}

type peerKey struct {
	kid      pki.KeyID
	key      crypto.PublicKey
	notAfter time.Time
}

type trustedMeta struct {
	raw  string
	meta *Meta
}

// maxKeysPerNode bounds the keys kept per node (a rotation adds one).
const maxKeysPerNode = 4

func newPeerBook(n *Agent) *peerBook {
	return &peerBook{n: n, keys: map[string][]peerKey{}, addrs: map[string]string{},
		metas: map[string]*trustedMeta{}, lastFetch: map[string]time.Time{}, fetchCh: make(chan string, 64)}
}

// learn records an identity verified in a TLS handshake.
func (b *peerBook) learn(id pki.Identity) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ks := b.keys[id.Name]
	for i := range ks {
		if ks[i].kid == id.KeyID {
			ks[i].notAfter = id.NotAfter
			return
		}
	}
	ks = append(ks, peerKey{kid: id.KeyID, key: id.Key, notAfter: id.NotAfter})
	if len(ks) > maxKeysPerNode {
		ks = ks[len(ks)-maxKeysPerNode:]
	}
	b.keys[id.Name] = ks
}

func (b *peerBook) key(name string, kid pki.KeyID) (crypto.PublicKey, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range b.keys[name] {
		if k.kid == kid && time.Now().Before(k.notAfter) {
			return k.key, true
		}
	}
	return nil, false
}

// hasKey reports whether a valid key of name was seen in a verified TLS
// handshake.
func (b *peerBook) hasKey(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range b.keys[name] {
		if time.Now().Before(k.notAfter) {
			return true
		}
	}
	return false
}

// verifiedAddr returns the cluster address name was verified at.
func (b *peerBook) verifiedAddr(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addrs[name]
}

// wantKey asks the fetch loop for name's certificate (non-blocking).
func (b *peerBook) wantKey(name string) {
	select {
	case b.fetchCh <- name:
	default:
	}
}

// fetchInterval limits handshakes to one node.
const fetchInterval = time.Second

// fetchLoop verifies nodes whose keys or addresses are wanted: a TLS
// handshake with the node's cluster port (its address from its gossiped
// metadata, unverified, or from raft's configuration) proves which node
// answers there.
func (b *peerBook) fetchLoop() {
	defer b.n.wg.Done()
	for {
		select {
		case <-b.n.stop:
			return
		case name := <-b.fetchCh:
			b.fetch(name)
		}
	}
}

func (b *peerBook) fetch(name string) {
	if name == b.n.cfg.NodeName {
		return
	}
	b.mu.Lock()
	if since := time.Since(b.lastFetch[name]); since < fetchInterval {
		// Fetched a moment ago (maybe in vain: the node was not up
		// yet). Messages held meanwhile must not wait for the sender's
		// next message, which may be the next push/pull: try again once
		// the interval is over.
		b.retryLocked(name, fetchInterval-since)
		b.mu.Unlock()
		return
	}
	b.lastFetch[name] = time.Now()
	if len(b.lastFetch) > 4096 { // names come from the network: bound the map
		for k, t := range b.lastFetch {
			if time.Since(t) > fetchInterval {
				delete(b.lastFetch, k)
			}
		}
	}
	b.mu.Unlock()
	for _, addr := range b.n.candidateAddrs(name) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := b.n.trust.dial(ctx, addr, alpnRPC, name)
		cancel()
		if err != nil {
			b.n.log.Debug("verifying a member's certificate failed", "member", name, "address", addr, "error", err)
			continue
		}
		c.Close()
		b.mu.Lock()
		b.addrs[name] = addr
		held := b.pending[name]
		delete(b.pending, name)
		for _, m := range held {
			b.pendingBytes -= len(m.sealed)
		}
		b.mu.Unlock()
		for _, m := range held {
			b.n.del.deliver(m.ch, m.sealed)
		}
		b.n.poke()
		return
	}
	// Not reached at any address: try again later while messages wait.
	b.mu.Lock()
	b.retryLocked(name, fetchInterval)
	b.mu.Unlock()
}

// retryLocked asks for name's certificate again after d if messages from
// name are held, once (b.mu held).
func (b *peerBook) retryLocked(name string, d time.Duration) {
	if len(b.pending[name]) == 0 || b.retrying[name] {
		return
	}
	if b.retrying == nil {
		b.retrying = map[string]bool{}
	}
	b.retrying[name] = true
	time.AfterFunc(d, func() {
		b.mu.Lock()
		delete(b.retrying, name)
		waiting := len(b.pending[name]) > 0
		b.mu.Unlock()
		select {
		case <-b.n.stop:
		default:
			if waiting {
				b.wantKey(name)
			}
		}
	})
}

// candidateAddrs lists where name's cluster port may be: raft's
// configuration first (written by a leader that verified it), then the
// member's gossiped metadata (unverified: the handshake decides).
func (n *Agent) candidateAddrs(name string) []string {
	var out []string
	if cf := n.raft.GetConfiguration(); cf.Error() == nil {
		for _, s := range cf.Configuration().Servers {
			if string(s.ID) == name {
				out = append(out, string(s.Address))
			}
		}
	}
	for _, m := range n.del.snapshot() {
		if m.name != name {
			continue
		}
		if meta := unverifiedMeta(m.meta); meta != nil && meta.Raft != "" && (len(out) == 0 || out[0] != meta.Raft) {
			out = append(out, meta.Raft)
		}
	}
	return out
}

// verifiedAt reports whether name was verified at addr, and asks for it to be otherwise.
func (b *peerBook) verifiedAt(name, addr string) bool {
	if b.verifiedAddr(name) == addr {
		return true
	}
	b.wantKey(name)
	return false
}

// heldMsg is a sealed message waiting for its sender's key.
type heldMsg struct {
	ch     byte
	sealed []byte
}

// Bounds of the messages held for unknown keys: names come from the
// network, so a keyed stranger inventing names only evicts its own.
const (
	maxHeldPerNode = 8
	maxHeldNodes   = 64
	maxHeldBytes   = 16 << 20
)

// hold keeps a message from name until name's key is fetched (a copy:
// memberlist reuses its buffers).
func (b *peerBook) hold(name string, ch byte, sealed []byte) {
	if len(sealed) > maxHeldBytes/4 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending == nil {
		b.pending = map[string][]heldMsg{}
	}
	q, ok := b.pending[name]
	if !ok && len(b.pending) >= maxHeldNodes {
		return
	}
	q = append(q, heldMsg{ch, append([]byte(nil), sealed...)})
	b.pendingBytes += len(sealed)
	for len(q) > maxHeldPerNode || (b.pendingBytes > maxHeldBytes && len(q) > 0) {
		b.pendingBytes -= len(q[0].sealed)
		q = q[1:]
	}
	if len(q) == 0 {
		delete(b.pending, name)
		return
	}
	b.pending[name] = q
	// The fetch open asked for may have run before this message was
	// held, or have been refused as too soon after the last one.
	b.retryLocked(name, fetchInterval)
}
