package cluster

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A follower catching up asks the leader over the cluster RPC: the answer
// is the leader's table index after a barrier, exact for a table built by
// this version, and the follower's CatchUp and ConsistentRead then hold
// every write committed before.
func TestReadIndexOverRPC(t *testing.T) {
	nodes := startCluster(t, 3)
	l, f := waitLeader(t, nodes), followerOf(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Apply(ctx, putBackend("b1")); err != nil {
		t.Fatal(err)
	}
	ri, err := f.readIndex(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !ri.Exact || ri.Index == 0 || ri.Index != l.fsm.AppliedIndex() || ri.RaftIndex < ri.Index {
		t.Fatalf("read index %+v, leader's table index %d", ri, l.fsm.AppliedIndex())
	}
	if err := f.CatchUp(ctx); err != nil || f.fsm.AppliedIndex() < ri.Index {
		t.Fatalf("CatchUp: %v (applied %d of %d)", err, f.fsm.AppliedIndex(), ri.Index)
	}
}

// The RPC client parses a peer's answer strictly and boundedly, checks
// that the peer is the node it meant, and tells a leader without the
// endpoint (an older version) from one that failed.
func TestRPCAnswers(t *testing.T) {
	nodes := startCluster(t, 1)
	n := nodes[0]
	peerMat := lastCA.material(t, "peer")
	pt := &trust{}
	pt.mat.Store(peerMat)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, pt, testLogger(t))
	var status int
	var body string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(rpcListener{chanListener{m: m, ch: m.rpcCh}}) }()
	defer func() { m.Close(); srv.Close(); <-done }()
	addr := ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	status, body = 200, `{"index":42,"raft_index":45,"exact":true}`
	var ri ReadIndex
	if code, err := n.call(ctx, "peer", addr, rpcReadIndex, nil, &ri); err != nil || code != 200 || ri != (ReadIndex{Index: 42, RaftIndex: 45, Exact: true}) {
		t.Fatalf("%d %+v %v", code, ri, err)
	}
	// The peer is not the node meant.
	if _, err := n.call(ctx, "someone-else", addr, rpcReadIndex, nil, &ri); err == nil {
		t.Fatal("answer from another node accepted")
	}
	for _, b := range []string{"", "garbage", `{"index":"x"}`} {
		status, body = 200, b
		if _, err := n.call(ctx, "peer", addr, rpcReadIndex, nil, &ri); err == nil {
			t.Fatalf("body %.40q accepted", b)
		}
	}
	status, body = 200, `{"index":1,"pad":"`+strings.Repeat("x", maxRPCBody)+`"}`
	if _, err := n.call(ctx, "peer", addr, rpcReadIndex, nil, &ri); err == nil {
		t.Fatal("oversized answer accepted")
	}
	status, body = 404, "404 page not found"
	code, err := n.call(ctx, "peer", addr, rpcReadIndex, nil, nil)
	if err != nil || code != 404 {
		t.Fatalf("404: %d %v", code, err)
	}
	// A forwarded write's refusal keeps its kind.
	status, body = 409, `{"error":"conflict: in pool main","kind":"conflict"}`
	if _, err := n.forwardApply(ctx, "peer", addr, []byte{1, 1, '{', '}'}); ErrorKind(err) != "conflict" {
		t.Fatalf("forwarded refusal: %v", err)
	}
	if _, err := n.forwardApply(ctx, "peer", "127.0.0.1:1", []byte{1, 1}); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("unreachable leader: %v", err)
	}
}
