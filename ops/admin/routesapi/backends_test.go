package routesapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
)

// fakeNet is a cluster in one process: every node has its own table, a
// write is applied to each (to a lagging node only when released), and
// CallEach calls each node's registered RPC.
type fakeNet struct {
	mu    sync.Mutex
	index uint64
	nodes []*fakeNode
}

type fakeNode struct {
	net  *fakeNet
	name string
	fsm  *routing.FSM
	rpcs map[string]cluster.RPCFunc
	down bool // CallEach cannot reach it
	// noLeader: this many Apply calls fail with cluster.ErrNoLeader
	// first (an election).
	noLeader int
	state    string // in the gossip ("" is alive)

	mu       sync.Mutex
	lagging  bool        // writes are held back ...
	held     []heldWrite // ... here
	sessions map[string]int
	ended    []endCall
}

type heldWrite struct {
	index uint64
	b     []byte
}

type endCall struct {
	backend string
	spread  time.Duration
	state   routing.BackendState // the backend's state in this node's table when asked
}

func (n *fakeNet) add(name string) *fakeNode {
	nd := &fakeNode{net: n, name: name, fsm: routing.NewFSM(), rpcs: map[string]cluster.RPCFunc{}, sessions: map[string]int{}}
	n.nodes = append(n.nodes, nd)
	return nd
}

func (nd *fakeNode) apply(b []byte, index uint64) error {
	if r := nd.fsm.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}); r != nil {
		return r.(error)
	}
	return nil
}

// release applies the writes a lagging node held back.
func (nd *fakeNode) release() {
	nd.mu.Lock()
	held := nd.held
	nd.held, nd.lagging = nil, false
	nd.mu.Unlock()
	nd.net.mu.Lock()
	defer nd.net.mu.Unlock()
	for _, w := range held {
		_ = nd.apply(w.b, w.index)
	}
}

// Cluster (routesapi.Cluster) as seen from nd.

func (nd *fakeNode) Apply(ctx context.Context, c routing.Command) error {
	nd.mu.Lock()
	if nd.noLeader > 0 {
		nd.noLeader--
		nd.mu.Unlock()
		return cluster.ErrNoLeader
	}
	nd.mu.Unlock()
	b, err := c.Encode()
	if err != nil {
		return err
	}
	n := nd.net
	n.mu.Lock()
	defer n.mu.Unlock()
	n.index++
	var res error
	for _, o := range n.nodes {
		o.mu.Lock()
		if o.lagging {
			o.held = append(o.held, heldWrite{n.index, b})
			o.mu.Unlock()
			continue
		}
		o.mu.Unlock()
		if err := o.apply(b, n.index); o == nd {
			res = err
		}
	}
	return res
}

func (nd *fakeNode) ConsistentRead(ctx context.Context) error { return nil }
func (nd *fakeNode) Members() []cluster.Member {
	var ms []cluster.Member
	for _, o := range nd.net.nodes {
		st := o.state
		if st == "" {
			st = "alive"
		}
		ms = append(ms, cluster.Member{Name: o.name, State: st})
	}
	return ms
}
func (nd *fakeNode) RemovePeer(ctx context.Context, name string) error { return nil }
func (nd *fakeNode) Peers() ([]cluster.Peer, error)                    { return nil, nil }
func (nd *fakeNode) Leader() (string, string)                          { return "n1", "" }
func (nd *fakeNode) Name() string                                      { return nd.name }
func (nd *fakeNode) HandleRPC(path string, f cluster.RPCFunc)          { nd.rpcs[path] = f }

func (nd *fakeNode) CallEach(ctx context.Context, path string, body []byte) []cluster.MemberAnswer {
	var out []cluster.MemberAnswer
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, o := range nd.net.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := cluster.MemberAnswer{Node: o.name}
			if o.down {
				r.Err = errors.New("connection refused")
			} else {
				st, ans := o.rpcs[path](ctx, body)
				r.Status = st
				r.Body, _ = json.Marshal(ans)
			}
			mu.Lock()
			out = append(out, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node }) // as CallEach does
	return out
}

// Node (routesapi.Node).

func (nd *fakeNode) BackendSessions(id string) int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.sessions[id]
}

func (nd *fakeNode) EndBackendSessions(id string, spread time.Duration, draining func() bool) {
	var st routing.BackendState
	if b := nd.fsm.Table().Backend(id); b != nil {
		st = b.State
	}
	if !draining() {
		st = "not draining: " + st
	}
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.ended = append(nd.ended, endCall{id, spread, st})
}

func (nd *fakeNode) endCalls() []endCall {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return append([]endCall(nil), nd.ended...)
}

// serveAPI runs nd's admin API on 127.0.0.1:0 and returns its base URL.
func serveAPI(t *testing.T, nd *fakeNode) string {
	t.Helper()
	a, err := admin.New(admin.Config{Address: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	Register(a, Config{Cluster: nd, FSM: nd.fsm, Node: nd})
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	return "http://" + a.Addr().String()
}

func call(t *testing.T, base, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func getBackend(t *testing.T, base, id string) routing.Backend {
	t.Helper()
	code, body := call(t, base, "GET", "/v1/backends/"+id, "")
	var b routing.Backend
	if code != 200 || json.Unmarshal([]byte(body), &b) != nil {
		t.Fatalf("GET %s: %d %s", id, code, body)
	}
	return b
}

// PATCH changes only the fields it names; errors say what is wrong, with
// the status of its kind.
func TestPatchBackendAPI(t *testing.T) {
	net := &fakeNet{}
	base := serveAPI(t, net.add("n1"))
	full := `{"host": "10.0.0.1", "imap_port": 143, "pop3_port": 110, "tls": "starttls", "tls_server_name": "imap.example", "forward": "id", "weight": 3}`
	if code, body := call(t, base, "PUT", "/v1/backends/imap1", full); code != 200 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	want := getBackend(t, base, "imap1")

	for _, c := range []struct {
		body   string
		change func(*routing.Backend)
	}{
		{`{"state": "draining"}`, func(b *routing.Backend) { b.State = routing.StateDraining }},
		{`{"host": "10.0.0.9"}`, func(b *routing.Backend) { b.Host = "10.0.0.9" }},
		{`{"weight": 7, "id": "imap1"}`, func(b *routing.Backend) { b.Weight = 7 }},
		{`{"tls_server_name": null, "pop3_port": 0}`, func(b *routing.Backend) { b.TLSServerName, b.POP3Port = "", 0 }},
		{`{}`, func(*routing.Backend) {}},
	} {
		code, body := call(t, base, "PATCH", "/v1/backends/imap1", c.body)
		if code != 200 {
			t.Fatalf("PATCH %s: %d %s", c.body, code, body)
		}
		c.change(&want)
		if got := getBackend(t, base, "imap1"); got != want {
			t.Fatalf("after PATCH %s:\n%+v\nwant\n%+v", c.body, got, want)
		}
	}

	for _, c := range []struct {
		path, body string
		code       int
		msg        string
	}{
		{"imap1", `{"weight": -1}`, 400, "weight -1 out of range"},
		{"imap1", `{"state": "off"}`, 400, `state \"off\" is not active, draining or disabled`},
		{"imap1", `{"hots": "x"}`, 400, `unknown field \"hots\"`},
		{"imap1", `{"imap_port": "143"}`, 400, `field \"imap_port\": want an integer`},
		{"imap1", `{"id": "imap2"}`, 400, "id in the body differs from the path"},
		{"imap1", `not json`, 400, "a backend patch is a JSON object"},
		{"nope", `{"weight": 2}`, 404, `no backend \"nope\"`},
	} {
		code, body := call(t, base, "PATCH", "/v1/backends/"+c.path, c.body)
		if code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("PATCH %s %s: %d %s, want %d with %q", c.path, c.body, code, body, c.code, c.msg)
		}
	}
	if got := getBackend(t, base, "imap1"); got != want {
		t.Fatalf("a refused PATCH changed the backend: %+v", got)
	}
}

// A drain sets the state everywhere, then every node ends its sessions
// on the backend (a lagging node only once it has applied the state);
// the answer and GET .../sessions add up the nodes' sessions and say
// which node could not be asked.
func TestDrainBackendAPI(t *testing.T) {
	net := &fakeNet{}
	n1, n2, n3, n4 := net.add("n1"), net.add("n2"), net.add("n3"), net.add("n4")
	base := serveAPI(t, n1)
	serveAPI(t, n2)
	serveAPI(t, n3)
	serveAPI(t, n4)
	// n4 is dead: never asked, and not missed.
	n4.down, n4.state = true, "dead"
	n4.sessions["imap1"] = 100
	if code, body := call(t, base, "PUT", "/v1/backends/imap1", `{"host": "10.0.0.1", "imap_port": 143}`); code != 200 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	n1.sessions["imap1"], n2.sessions["imap1"], n3.sessions["imap1"], n2.sessions["other"] = 2, 3, 4, 9

	code, body := call(t, base, "GET", "/v1/backends/imap1/sessions", "")
	var res BackendSessions
	if code != 200 || json.Unmarshal([]byte(body), &res) != nil || res.Sessions != 9 || !res.Complete || len(res.Nodes) != 4 ||
		!res.Nodes[3].Skipped || res.State != routing.StateActive {
		t.Fatalf("sessions: %d %s", code, body)
	}
	if len(n1.endCalls())+len(n2.endCalls())+len(n3.endCalls()) != 0 {
		t.Fatal("counting sessions ended some")
	}

	// n2 lags behind the leader: it ends its sessions only once it has
	// applied the drain's state change. n3 cannot be reached.
	n2.mu.Lock()
	n2.lagging = true
	n2.mu.Unlock()
	n3.down = true
	go func() {
		time.Sleep(200 * time.Millisecond)
		n2.release()
	}()
	code, body = call(t, base, "POST", "/v1/backends/imap1/drain", `{"spread": "2s"}`)
	res = BackendSessions{}
	if code != 202 || json.Unmarshal([]byte(body), &res) != nil {
		t.Fatalf("drain: %d %s", code, body)
	}
	if res.State != routing.StateDraining || res.Sessions != 5 || res.Complete || len(res.Nodes) != 4 ||
		res.Nodes[2].Node != "n3" || !strings.Contains(res.Nodes[2].Error, "connection refused") || res.Nodes[2].Skipped {
		t.Fatalf("drain answer: %s", body)
	}
	for _, nd := range []*fakeNode{n1, n2} {
		calls := nd.endCalls()
		if len(calls) != 1 || calls[0] != (endCall{"imap1", 2 * time.Second, routing.StateDraining}) {
			t.Fatalf("%s: ending %+v, want one of imap1 over 2s, seen draining", nd.name, calls)
		}
	}
	if b := n2.fsm.Table().Backend("imap1"); b.State != routing.StateDraining {
		t.Fatalf("n2's table: %+v", b)
	}

	// Without a spread each node uses its own (-1); errors.
	n3.down = false
	if code, body := call(t, base, "POST", "/v1/backends/imap1/drain", ""); code != 202 {
		t.Fatalf("drain without a body: %d %s", code, body)
	}
	if calls := n3.endCalls(); len(calls) != 1 || calls[0].spread != -1 {
		t.Fatalf("n3: %+v", calls)
	}
	if len(n4.endCalls()) != 0 {
		t.Fatal("a dead member was asked")
	}
	for _, c := range []struct {
		path, body string
		code       int
		msg        string
	}{
		{"imap1", `{"spread": "-1s"}`, 400, "want a duration from 0s to 1h0m0s"},
		{"imap1", `{"spread": "soon"}`, 400, "want a duration"},
		{"imap1", `{"spred": "1s"}`, 400, "unknown field"},
		{"nope", `{}`, 404, `no backend \"nope\"`},
	} {
		code, body := call(t, base, "POST", "/v1/backends/"+c.path+"/drain", c.body)
		if code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("drain %s %s: %d %s, want %d with %q", c.path, c.body, code, body, c.code, c.msg)
		}
	}
	if code, body := call(t, base, "GET", "/v1/backends/nope/sessions", ""); code != 404 {
		t.Errorf("sessions of an unknown backend: %d %s", code, body)
	}

	// The function a node is given says whether the backend is still
	// draining: enabled again, it is not.
	if code, body := call(t, base, "PATCH", "/v1/backends/imap1", `{"state": "active"}`); code != 200 {
		t.Fatalf("enable: %d %s", code, body)
	}
	n1.rpcs[backendSessionsRPC](context.Background(), mustJSON(backendSessionsRequest{Backend: "imap1", End: true}))
	if calls := n1.endCalls(); calls[len(calls)-1].state != "not draining: active" {
		t.Fatalf("after enable, the node was told the backend drains: %+v", calls[len(calls)-1])
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// A bulk import outlives an election: a batch that met no leader is
// tried again (up to three times), and every user lands.
func TestImportRetriesAcrossElection(t *testing.T) {
	var n fakeNet
	nd := n.add("n1")
	base := serveAPI(t, nd)
	if code, body := call(t, base, "PUT", "/v1/backends/b1", `{"host": "10.0.0.1", "imap_port": 143}`); code != 200 {
		t.Fatalf("backend: %d %s", code, body)
	}
	var popmap strings.Builder
	for i := 0; i < 2*importBatch+10; i++ {
		fmt.Fprintf(&popmap, "user%d: b1\n", i)
	}
	req, _ := json.Marshal(map[string]string{"format": "popmap", "data": popmap.String()})
	nd.mu.Lock()
	nd.noLeader = 3
	nd.mu.Unlock()
	if code, body := call(t, base, "POST", "/v1/import", string(req)); code != 200 {
		t.Fatalf("import across an election: %d %s", code, body)
	}
	if _, _, users, _ := nd.fsm.Table().Len(); users != 2*importBatch+10 {
		t.Fatalf("%d users imported", users)
	}
	// An election that outlasts the retries is reported, as 503.
	nd.mu.Lock()
	nd.noLeader = 4
	nd.mu.Unlock()
	if code, body := call(t, base, "POST", "/v1/import", string(req)); code != 503 || !strings.Contains(body, "after 0 of") {
		t.Fatalf("import without a leader: %d %s", code, body)
	}
}
