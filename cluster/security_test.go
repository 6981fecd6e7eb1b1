package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
)

// An attacker who reaches the raft port with hashicorp/raft's own client
// (no certificate) can neither append, vote, install a snapshot nor force
// an election: the handshake refuses it before any RPC is read.
func TestRaftRefusesUnauthenticatedClients(t *testing.T) {
	nodes := startCluster(t, 1)
	n := nodes[0]
	target := n.transport.LocalAddr()
	term := n.raft.CurrentTerm()
	last := n.raft.LastIndex()
	refusedBefore := n.trust.refused.Load()

	client, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("evil"), Addr: []byte(client.LocalAddr())}
	evil, _ := routing.Command{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: "evil", Host: "203.0.113.66", IMAPPort: 143}}.Encode()

	var ae raft.AppendEntriesResponse
	if err := client.AppendEntries("n1", target, &raft.AppendEntriesRequest{
		RPCHeader: hdr, Term: term + 1, PrevLogEntry: 0, PrevLogTerm: 0, LeaderCommitIndex: last + 1,
		Entries: []*raft.Log{{Index: last + 1, Term: term + 1, Type: raft.LogCommand, Data: evil}},
	}, &ae); err == nil {
		t.Errorf("AppendEntries without a certificate succeeded: %+v", ae)
	}
	var rv raft.RequestVoteResponse
	if err := client.RequestVote("n1", target, &raft.RequestVoteRequest{RPCHeader: hdr, Term: term + 5, LastLogIndex: last + 10, LastLogTerm: term + 5}, &rv); err == nil {
		t.Errorf("RequestVote without a certificate succeeded: %+v", rv)
	}
	var is raft.InstallSnapshotResponse
	if err := client.InstallSnapshot("n1", target, &raft.InstallSnapshotRequest{RPCHeader: hdr, SnapshotVersion: raft.SnapshotVersionMax, Term: term + 1,
		LastLogIndex: last + 100, LastLogTerm: term + 1, Size: 2}, &is, strings.NewReader("{}")); err == nil {
		t.Errorf("InstallSnapshot without a certificate succeeded: %+v", is)
	}
	var tn raft.TimeoutNowResponse
	if err := client.TimeoutNow("n1", target, &raft.TimeoutNowRequest{RPCHeader: hdr}, &tn); err == nil {
		t.Errorf("TimeoutNow without a certificate succeeded: %+v", tn)
	}
	if !n.IsLeader() || n.raft.CurrentTerm() != term || n.fsm.Table().Backend("evil") != nil {
		t.Fatalf("node changed: leader %v, term %d -> %d", n.IsLeader(), term, n.raft.CurrentTerm())
	}
	if got := n.trust.refused.Load() - refusedBefore; got < 4 {
		t.Errorf("refused handshakes counted: %d, want at least 4", got)
	}
}

// A certificate from another CA, no certificate, no ALPN or a foreign
// ALPN protocol: refused in the handshake, in both directions.
func TestClusterPortRefusesStrangers(t *testing.T) {
	nodes := startCluster(t, 1)
	n := nodes[0]
	addr := string(n.transport.LocalAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	other := &trust{}
	other.mat.Store(newTestCA(t).material(t, "n1")) // same name, other CA
	for _, alpn := range []string{alpnRaft, alpnRPC} {
		if c, err := other.dial(ctx, addr, alpn, ""); err == nil {
			// TLS 1.3: the server's verdict on the client certificate
			// arrives with the first read.
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("%s: a certificate of another CA was accepted", alpn)
			}
			c.Close()
		}
	}
	// No client certificate.
	plain := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnRaft}, MinVersion: tls.VersionTLS13}
	if c, err := tls.Dial("tcp", addr, plain); err == nil {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("a client without a certificate was accepted")
		}
		c.Close()
	}
	// A cluster certificate but no or a foreign ALPN protocol.
	own := n.trust
	for _, protos := range [][]string{nil, {"h2"}, {"imap"}} {
		cfg := own.clientConfig(alpnRPC, "")
		cfg.NextProtos = protos
		cfg.VerifyConnection = nil
		if c, err := tls.Dial("tcp", addr, cfg); err == nil {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("ALPN %v accepted", protos)
			}
			c.Close()
		}
	}
	// And this node does not talk to a server of another CA.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, other, testLogger(t))
	defer m.Close()
	if c, err := n.trust.dial(ctx, ln.Addr().String(), alpnRPC, ""); err == nil {
		c.Close()
		t.Error("dialled a server with a certificate of another CA")
	}
	// Plain bytes (a raft RPC in cleartext) are never read as one.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0, 1, 2, 3, 4, 5, 6, 7})
	c.SetReadDeadline(time.Now().Add(6 * time.Second))
	if _, err := bufio.NewReader(c).ReadByte(); err == nil {
		// A TLS alert is fine; an answer to the bytes is not possible.
		t.Log("server answered cleartext with a TLS record (alert)")
	}
	c.Close()
	if !n.IsLeader() {
		t.Fatal("the node lost leadership")
	}
}

// recorder is a gossip channel that records who said what.
type recorder struct {
	mu  sync.Mutex
	got map[string][]string // from -> payloads
}

func (r *recorder) LocalState() []byte { return nil }
func (r *recorder) MergeRemote(from string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string][]string{}
	}
	r.got[from] = append(r.got[from], string(b))
}

func (r *recorder) payloads() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for from, ps := range r.got {
		for _, p := range ps {
			out = append(out, from+":"+p)
		}
	}
	sort.Strings(out)
	return out
}

// attacker is a memberlist member that says what it likes.
type attacker struct {
	meta []byte

	mu    sync.Mutex
	peers map[string]memberlist.Node // copies: memberlist keeps writing its own
}

func (a *attacker) NodeMeta(int) []byte               { return a.meta }
func (a *attacker) NotifyMsg([]byte)                  {}
func (a *attacker) GetBroadcasts(int, int) [][]byte   { return nil }
func (a *attacker) LocalState(bool) []byte            { return nil }
func (a *attacker) MergeRemoteState(b []byte, _ bool) {}
func (a *attacker) NotifyJoin(m *memberlist.Node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.peers == nil {
		a.peers = map[string]memberlist.Node{}
	}
	a.peers[m.Name] = *m
}
func (a *attacker) NotifyLeave(*memberlist.Node)  {}
func (a *attacker) NotifyUpdate(*memberlist.Node) {}
func (a *attacker) sendAll(ml *memberlist.Memberlist, self string, msg []byte) {
	a.mu.Lock()
	var to []memberlist.Node
	for name, m := range a.peers {
		if name != self {
			to = append(to, m)
		}
	}
	a.mu.Unlock()
	for i := range to {
		_ = ml.SendReliable(&to[i], msg)
	}
}

func startAttacker(t *testing.T, name string, key []byte, meta []byte, join []string) (*memberlist.Memberlist, *attacker, error) {
	t.Helper()
	a := &attacker{meta: meta}
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.BindAddr, c.BindPort = "127.0.0.1", 0
	c.SecretKey = key
	c.Delegate, c.Events = a, a
	c.LogOutput = io.Discard
	c.ProbeInterval, c.GossipInterval = 200*time.Millisecond, 50*time.Millisecond
	ml, err := memberlist.Create(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ml.Shutdown() })
	_, err = ml.Join(join)
	return ml, a, err
}

func gossipAddrs(nodes []*testNode) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.gossip)
	}
	return out
}

// Without the gossip key nobody joins. With it but without a node
// certificate, a member is never made a raft server and whatever it says
// (metadata, gossip in any name) is ignored. A member with a valid
// certificate is heard, but only for itself: it cannot speak for another
// node on any channel, nor forge another node's health opinion.
func TestGossipForgery(t *testing.T) {
	nodes := startCluster(t, 3)
	key := nodes[0].cfg.EncryptKey
	rec := make([]*recorder, len(nodes))
	for i, n := range nodes {
		rec[i] = &recorder{}
		n.Register(7, rec[i])
	}

	// Keyless: cannot join.
	if _, _, err := startAttacker(t, "keyless", nil, nil, gossipAddrs(nodes)); err == nil {
		t.Error("a member without the gossip key joined")
	}

	// Keyed, no certificate: metadata claiming a raft address, messages
	// sealed with a key of another CA in n1's name and in its own.
	rogue := newTestCA(t)
	fakeN1 := rogue.material(t, "n1")
	meta, _ := json.Marshal(Meta{Raft: "127.0.0.1:9", Level: 99})
	metaSealed, _ := sealWith(rogue.material(t, "keyed"), "keyed", chanMeta, meta)
	ml, at, err := startAttacker(t, "keyed", key, metaSealed, gossipAddrs(nodes))
	if err != nil {
		t.Fatalf("keyed member could not join: %v", err)
	}
	forgedN1, _ := sealWith(fakeN1, "n1", 7, []byte("forged-as-n1"))
	selfSealed, _ := sealWith(rogue.material(t, "keyed"), "keyed", 7, []byte("keyed-self"))
	unsealed := []byte("plain")
	for _, m := range [][]byte{forgedN1, selfSealed, unsealed} {
		at.sendAll(ml, "keyed", append([]byte{7}, m...))
	}

	// Keyed with a valid certificate: heard, but only for itself.
	evilMat := lastCA.material(t, "evil")
	evilTrust := &trust{}
	evilTrust.mat.Store(evilMat)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evilPort := newMux(ln, evilTrust, testLogger(t))
	defer evilPort.Close()
	emeta, _ := json.Marshal(Meta{Raft: ln.Addr().String(), Level: int(routing.CommandLevel)})
	emetaSealed, _ := sealWith(evilMat, "evil", chanMeta, emeta)
	eml, eat, err := startAttacker(t, "evil", key, emetaSealed, gossipAddrs(nodes))
	if err != nil {
		t.Fatal(err)
	}
	evilAsN2, _ := sealWith(evilMat, "n2", 7, []byte("evil-as-n2"))
	evilSelf, _ := sealWith(evilMat, "evil", 7, []byte("evil-self"))

	deadline := time.Now().Add(10 * time.Second)
	heard := false
	for time.Now().Before(deadline) && !heard {
		for _, m := range [][]byte{evilAsN2, evilSelf} {
			eat.sendAll(eml, "evil", append([]byte{7}, m...))
		}
		at.sendAll(ml, "keyed", append([]byte{7}, forgedN1...))
		time.Sleep(100 * time.Millisecond)
		heard = true
		for _, r := range rec {
			if len(r.payloads()) == 0 {
				heard = false
			}
		}
	}
	for i, r := range rec {
		for _, p := range r.payloads() {
			if p != "evil:evil-self" {
				t.Errorf("%s accepted %q", nodes[i].Name(), p)
			}
		}
		if len(r.payloads()) == 0 {
			t.Errorf("%s never heard the certified member speak for itself", nodes[i].Name())
		}
	}
	// The keyed member without a certificate is no raft server, and its
	// metadata is not believed.
	l := waitLeader(t, nodes)
	peers, _ := l.Peers()
	for _, p := range peers {
		if p.ID == "keyed" {
			t.Errorf("a member without a certificate became a raft server: %+v", p)
		}
	}
	for _, m := range l.Members() {
		if m.Name == "keyed" && m.Verified {
			t.Errorf("unverified metadata believed: %+v", m)
		}
		if m.Name == "evil" && !m.Verified {
			t.Errorf("a certified member's metadata not verified: %+v", m)
		}
	}
	if lv := l.knownLevel("keyed"); lv != -1 {
		t.Errorf("level of an unverified member: %d", lv)
	}
}

// A forged health view (any node's name, any incarnation) never counts:
// a backend that is up stays up on every node while a certified member
// and a keyed stranger claim, in other nodes' names, that it is down.
func TestHealthViewsOnlyFromTheirNode(t *testing.T) {
	backendDown.Store(false)
	nodes := startCluster(t, 3)
	l := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Apply(ctx, routing.Command{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: "b1", Host: "192.0.2.1", IMAPPort: 143}}); err != nil {
		t.Fatal(err)
	}
	var hs []*Health
	for _, n := range nodes {
		waitFor(t, 5*time.Second, "the backend on every node", func() bool { return n.fsm.Table().Backend("b1") != nil })
		// The nodes' own opinion comes from a probe the test controls, so
		// that only forged views could take the backend down.
		hs = append(hs, n.StartHealth(n.fsm, HealthConfig{Interval: 100 * time.Millisecond, Fall: 1, Rise: 1,
			Probe: func(context.Context, *routing.Backend) error {
				if backendDown.Load() {
					return errors.New("down")
				}
				return nil
			}}))
	}
	defer func() {
		for _, h := range hs {
			h.Stop()
		}
	}()
	key := nodes[0].cfg.EncryptKey
	evilMat := lastCA.material(t, "evil")
	view := func(node string) []byte {
		b, _ := json.Marshal(healthView{Node: node, Inc: 1 << 62, Seq: 1 << 62, Down: []string{"b1"}})
		return b
	}
	var msgs [][]byte
	for _, victim := range []string{"n1", "n2", "n3"} {
		// In the victim's name with evil's key; in evil's name about the
		// victim; and with a key of another CA.
		inner1, _ := sealWith(evilMat, victim, sealHealthView, view(victim))
		inner2, _ := sealWith(evilMat, "evil", sealHealthView, view(victim))
		inner3, _ := sealWith(newTestCA(t).material(t, victim), victim, sealHealthView, view(victim))
		for _, inner := range [][]byte{inner1, inner2, inner3} {
			outer, _ := sealWith(evilMat, "evil", channelHealth, appendSealedList(nil, inner))
			msgs = append(msgs, append([]byte{channelHealth}, outer...))
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evilTrust := &trust{}
	evilTrust.mat.Store(evilMat)
	evilPort := newMux(ln, evilTrust, testLogger(t))
	defer evilPort.Close()
	emeta, _ := json.Marshal(Meta{Raft: ln.Addr().String()})
	emetaSealed, _ := sealWith(evilMat, "evil", chanMeta, emeta)
	eml, eat, err := startAttacker(t, "evil", key, emetaSealed, gossipAddrs(nodes))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		for _, m := range msgs {
			eat.sendAll(eml, "evil", m)
		}
		time.Sleep(100 * time.Millisecond)
		for j, h := range hs {
			if h.IsDown("b1") {
				t.Fatalf("%s: forged views took a healthy backend down", nodes[j].Name())
			}
		}
	}
	// The nodes' own views are still exchanged: when their probes fail,
	// the cluster decides the backend is down.
	backendDown.Store(true)
	waitFor(t, 10*time.Second, "the cluster to see the stopped backend down", func() bool {
		for _, h := range hs {
			if !h.IsDown("b1") {
				return false
			}
		}
		return true
	})
}

// backendDown is what the test's probe reports.
var backendDown atomic.Bool
