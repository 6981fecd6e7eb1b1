package cluster

import (
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist's Delegate and EventDelegate. It never
// blocks and never calls back into memberlist: metadata is read from an
// atomic pointer, events are recorded under a short lock, gossip channels
// (health views, shared counters) handle their own messages without I/O.
type delegate struct {
	n     *Agent
	queue *memberlist.TransmitLimitedQueue

	mu       sync.Mutex
	channels map[byte]Channel

	// A copy of the member table, taken inside memberlist's callbacks
	// (which run under its lock): memberlist.Members() returns pointers to
	// structs it keeps writing, so reading their fields races.
	memMu   sync.Mutex
	members map[string]memberCopy

	joinMu sync.Mutex
	onJoin []func(name string) // OnMemberJoin

	// Direct probes answered, by member (probeAnswered): a member silent
	// for a while that answers again is back.
	ackMu   sync.Mutex
	lastAck map[string]time.Time
}

type memberCopy struct {
	name, addr string
	state      memberlist.NodeStateType
	meta       []byte
	// to is what Broadcast needs to send to the member directly (name,
	// address, protocol versions), without its metadata.
	to memberlist.Node
}

// record copies m. memberlist does not keep the Node's own State field
// current (its node table shadows it), so the state comes from the event.
func (d *delegate) record(m *memberlist.Node, state memberlist.NodeStateType) {
	c := memberCopy{name: m.Name, addr: m.Address(), state: state, meta: append([]byte(nil), m.Meta...)}
	c.to = *m
	c.to.Addr, c.to.Meta = slices.Clone(m.Addr), nil
	d.memMu.Lock()
	d.members[m.Name] = c
	d.memMu.Unlock()
}

// snapshot returns a copy of the member table.
func (d *delegate) snapshot() []memberCopy {
	d.memMu.Lock()
	defer d.memMu.Unlock()
	out := make([]memberCopy, 0, len(d.members))
	for _, m := range d.members {
		out = append(out, m)
	}
	return out
}

// Channel is a gossip payload multiplexed on the delegate by a one-byte id:
// backend health views and shared throttle counters use it. Every message
// is sealed by its sender (seal.go); a channel sees only messages whose
// signature checked out, with the signer's node name, and must accept
// from them only what the signer may say: data about itself.
type Channel interface {
	// LocalState returns this node's state for push/pull sync.
	LocalState() []byte
	// MergeRemote merges a peer's state or broadcast, sent and signed by
	// node from. It must validate the input (it comes from the network)
	// and must not block.
	MergeRemote(from string, b []byte)
}

func newDelegate(n *Agent) *delegate {
	d := &delegate{n: n, channels: map[byte]Channel{}, members: map[string]memberCopy{}, lastAck: map[string]time.Time{}}
	d.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return n.numMembers() },
		RetransmitMult: 3,
	}
	return d
}

func (n *Agent) numMembers() int {
	if n.ml == nil {
		return 1
	}
	return n.ml.NumMembers()
}

// Register adds a gossip channel with id (1-255; unique).
func (n *Agent) Register(id byte, c Channel) {
	n.del.mu.Lock()
	n.del.channels[id] = c
	n.del.mu.Unlock()
}

// Broadcast sends b on channel id, sealed, to every other member: at once
// to each alive member in a packet of its own, and queued for gossip as
// well (which repairs a lost packet).
//
// The queue alone does not reach every member. memberlist sends a queued
// message a few times in all (3 x ceil(log10(members+1)): 3 up to nine
// members) in whichever packets leave next, piggybacked on probes and
// acks as well as gossip rounds, whatever peer they go to, and receivers
// do not pass user messages on. In a three-node cluster a probe, an ack
// and a gossip round to one peer spent them all, and the other peer went
// without until the next push/pull (15 s, with one random member); from
// five members on, some peer always goes without. memberlist relays only
// its own membership messages; serf relays user events itself. The
// packets sent directly cost n-1 small writes per message, which a proxy
// tier's cluster of a few (or a few dozen) nodes and the channels' rates
// (a few messages a second) afford.
func (n *Agent) Broadcast(id byte, b []byte) {
	sealed := n.seal(id, b)
	if sealed == nil {
		return
	}
	msg := append([]byte{id}, sealed...)
	n.del.queue.QueueBroadcast(simpleBroadcast(msg))
	n.sendEach(msg)
}

// maxDirect bounds a message sent in a packet of its own: memberlist's
// packet size (1,400 bytes) less its framing, CRC and encryption. A
// larger message goes by gossip only (the channels keep theirs far
// smaller).
const maxDirect = 1400 - 64

// sendEach sends msg to every other alive member in one packet each
// (memberlist's best-effort send, which neither piggybacks nor touches
// the gossip queue). It never waits: a UDP write per member. It must not
// be called from inside a memberlist callback.
func (n *Agent) sendEach(msg []byte) {
	if n.ml == nil || len(msg) > maxDirect {
		return
	}
	for _, m := range n.directTargets() {
		if err := n.ml.SendBestEffort(&m.to, msg); err != nil {
			n.directFailed.Add(1)
			n.log.Debug("sending gossip to a member failed", "member", m.name, "error", err)
		}
	}
}

// directTargets are the members sendEach sends to: every other alive
// member that has shown a certificate of the cluster in a TLS handshake
// (its key is known, so its sealed gossip is heard). A member
// that only holds the gossip key (anyone it leaked to) can join under
// as many names as it likes, each at an address it chooses, another
// host's included: sending each broadcast to all of them would make
// every node a reflector, n-1 packets per message per invented member.
// Such members still get the gossip queue's copies, as before direct
// sends (whatever they carry is for members only, never secret from the
// key's holders).
func (n *Agent) directTargets() []memberCopy {
	var out []memberCopy
	for _, m := range n.del.snapshot() {
		if m.name == n.cfg.NodeName || m.state != memberlist.StateAlive || len(m.to.Addr) == 0 {
			continue
		}
		if !n.peers.hasKey(m.name) {
			n.peers.wantKey(m.name) // verified soon if it can be
			continue
		}
		out = append(out, m)
	}
	return out
}

type simpleBroadcast []byte

func (b simpleBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b simpleBroadcast) Message() []byte                       { return b }
func (b simpleBroadcast) Finished()                             {}

func (d *delegate) NodeMeta(limit int) []byte {
	b := d.n.sealedMeta()
	if len(b) > limit {
		d.n.log.Error("node metadata too large to gossip", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 1 {
		return
	}
	d.deliver(b[0], b[1:])
}

// deliver opens a sealed message for channel id and hands it to the
// channel; anything that does not verify is dropped.
func (d *delegate) deliver(id byte, sealed []byte) {
	if id == chanMeta {
		return
	}
	d.mu.Lock()
	c := d.channels[id]
	d.mu.Unlock()
	if c == nil {
		return
	}
	from, payload, err := d.n.open(id, sealed)
	if err != nil {
		var uk *unknownKeyError
		if errors.As(err, &uk) {
			// Its sender's key is being fetched: deliver it then (the
			// state exchanged when a node joins arrives before it knows
			// anyone's key).
			d.n.peers.hold(uk.name, id, sealed)
			return
		}
		d.n.peers.dropped.Add(1)
		return
	}
	c.MergeRemote(from, payload)
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

// push/pull state: a sequence of [id][uvarint len][payload].
func (d *delegate) LocalState(join bool) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []byte
	ids := make([]int, 0, len(d.channels))
	for id := range d.channels {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	for _, id := range ids {
		st := d.n.seal(byte(id), d.channels[byte(id)].LocalState())
		out = append(out, byte(id))
		out = appendUvarint(out, uint64(len(st)))
		out = append(out, st...)
	}
	return out
}

func (d *delegate) MergeRemoteState(b []byte, join bool) {
	for len(b) > 0 {
		id := b[0]
		l, n := uvarint(b[1:])
		if n <= 0 || uint64(len(b)-1-n) < l {
			return // malformed: ignore the rest
		}
		payload := b[1+n : 1+n+int(l)]
		b = b[1+n+int(l):]
		d.deliver(id, payload)
	}
}

func (d *delegate) NotifyJoin(m *memberlist.Node) {
	d.record(m, memberlist.StateAlive)
	d.n.mu.Lock()
	delete(d.n.deadSince, m.Name)
	d.n.mu.Unlock()
	d.n.log.Info("member joined", "member", m.Name, "address", m.Address())
	d.n.peers.wantKey(m.Name) // verify it early: its gossip is sealed
	d.n.poke()
	d.peerBack(m.Name)
}

// NotifyLeave covers both a member declared dead and one that left
// gracefully (the event does not say which). Either way it stays a raft
// server until it has been gone for dead_node_reap, so a node restarted
// for an upgrade comes back as the same voter.
func (d *delegate) NotifyLeave(m *memberlist.Node) {
	d.record(m, memberlist.StateDead)
	if m.Name == d.n.cfg.NodeName {
		return
	}
	d.n.mu.Lock()
	if _, ok := d.n.deadSince[m.Name]; !ok {
		d.n.deadSince[m.Name] = time.Now()
	}
	d.n.mu.Unlock()
	d.n.log.Warn("member gone (dead or left)", "member", m.Name)
	d.n.poke()
}

func (d *delegate) NotifyUpdate(m *memberlist.Node) { d.record(m, memberlist.StateAlive) }

func memberState(s int) string {
	switch memberlist.NodeStateType(s) {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

func sortMembers(m []Member) { sort.Slice(m, func(i, j int) bool { return m[i].Name < m[j].Name }) }

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func uvarint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, -1
}
