package cluster

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"sync/atomic"
	"testing"

	"github.com/portico-mail/portico/cluster/pki"
)

// fuzzAgent is the part of an agent that opens gossip: its name, its
// material, a peer book that knows one other node's key, and a delegate
// with channel 7 recording what it is given. No memberlist, raft or
// loops: nothing is started, so a fuzz run leaks nothing.
func fuzzAgent(t testing.TB) (*Agent, *pki.Material, *signerCheck) {
	ca := newTestCA(t)
	self, peer := ca.material(t, "n1"), ca.material(t, "n2")
	n := &Agent{cfg: Config{NodeName: "n1"}, trust: &trust{}, stop: make(chan struct{})}
	close(n.stop) // retries held messages schedule see a stopped agent
	n.trust.mat.Store(self)
	n.peers = newPeerBook(n)
	n.peers.learn(peer.Self)
	n.del = newDelegate(n)
	rec := &signerCheck{}
	n.Register(7, rec)
	return n, peer, rec
}

// signerCheck is a channel that records a message from anyone but n2.
type signerCheck struct{ bad atomic.Pointer[string] }

func (c *signerCheck) LocalState() []byte { return nil }
func (c *signerCheck) MergeRemote(from string, _ []byte) {
	if from != "n2" {
		c.bad.Store(&from)
	}
}

// FuzzOpenSealed: any bytes offered as a sealed gossip message (a
// broadcast's packet, the push/pull state) either fail to open or open
// into exactly what the signer sealed; a message opens only under the
// signer's own name and channel, and nothing panics or waits.
func FuzzOpenSealed(f *testing.F) {
	n, peer, rec := fuzzAgent(f)
	good, _ := sealWith(peer, "n2", 7, []byte("payload"))
	empty, _ := sealWith(peer, "n2", 7, nil)
	stranger, _ := sealWith(newTestCA(f).material(f, "n3"), "n3", 7, []byte("x"))
	f.Add(good)
	f.Add(empty)
	f.Add(stranger)
	f.Add([]byte{sealVersion, 2, 'n', '2'})
	f.Add([]byte{sealVersion, 0})
	f.Add(append([]byte{sealVersion, 2, 'n', '2', 0, 0, 0, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseSeal(b)
		if err == nil {
			// The fields cover the input: re-encoding them gives it back
			// (the length's varint may have had a longer form).
			re := append([]byte{sealVersion, byte(len(p.name))}, p.name...)
			re = append(re, p.kid[:]...)
			re = binary.AppendUvarint(re, uint64(len(p.payload)))
			re = append(append(re, p.payload...), p.sig...)
			if len(re) > len(b) || !bytes.Equal(re[len(re)-len(p.sig):], b[len(b)-len(p.sig):]) {
				t.Fatalf("parsed fields do not re-encode: %q", b)
			}
		}
		from, payload, err := n.open(7, b)
		if err == nil {
			// Only n2's key is known: whatever opens is n2's signature
			// over these very bytes on channel 7.
			if from != "n2" || !pki.VerifySignature(peer.Self.Key, signedBytes(7, from, payload), p.sig) {
				t.Fatalf("opened as %q without a valid signature", from)
			}
			if _, _, err := n.open(8, b); err == nil {
				t.Fatal("a message sealed for channel 7 opened on channel 8")
			}
		}
		// The delegate's path: a packet, then a push/pull state
		// carrying it. Whatever reaches the channel is signed by n2.
		n.del.NotifyMsg(append([]byte{7}, b...))
		st := append([]byte{7}, binary.AppendUvarint(nil, uint64(len(b)))...)
		n.del.MergeRemoteState(append(st, b...), false)
		n.del.MergeRemoteState(b, false)
		if bad := rec.bad.Load(); bad != nil {
			t.Fatalf("the channel got a message from %q", *bad)
		}
		n.peers.mu.Lock()
		held, bytesHeld := len(n.peers.pending), n.peers.pendingBytes
		n.peers.mu.Unlock()
		if held > maxHeldNodes || bytesHeld > maxHeldBytes {
			t.Fatalf("%d senders and %d bytes held", held, bytesHeld)
		}
	})
}

// FuzzUnverifiedMeta: metadata from the network, parsed without its
// signature for display and for finding where to verify a node, never
// panics and never yields a meta out of thin air.
func FuzzUnverifiedMeta(f *testing.F) {
	m := newTestCA(f).material(f, "n2")
	meta, _ := json.Marshal(Meta{Raft: "127.0.0.1:1", Role: "leader", Seq: 3})
	sealed, _ := sealWith(m, "n2", chanMeta, meta)
	f.Add(sealed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got := unverifiedMeta(b)
		if got != nil {
			if _, err := parseSeal(b); err != nil {
				t.Fatal("meta from an envelope that does not parse")
			}
		}
	})
}
