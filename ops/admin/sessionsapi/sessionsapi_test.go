package sessionsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
)

// fakeProxy keeps a list of sessions and records kicks.
type fakeProxy struct {
	mu       sync.Mutex
	sessions []node.SessionInfo
	kicks    []node.SessionFilter
	texts    []string
}

func (p *fakeProxy) Sessions(f node.SessionFilter) []node.SessionInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []node.SessionInfo
	for _, s := range p.sessions {
		if (f.User == "" || strings.EqualFold(f.User, s.User)) && (f.Backend == "" || f.Backend == s.Backend) && (f.ID == "" || f.ID == s.ID) {
			out = append(out, s)
		}
	}
	return out
}

func (p *fakeProxy) Kick(_ context.Context, f node.SessionFilter, text string, _ time.Duration) int {
	n := len(p.Sessions(f))
	p.mu.Lock()
	p.kicks, p.texts = append(p.kicks, f), append(p.texts, text)
	p.mu.Unlock()
	return n
}

func start(t *testing.T, c Config) string {
	t.Helper()
	a, err := admin.New(admin.Config{Address: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	Register(a, c)
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	return "http://" + a.Addr().String()
}

func call(t *testing.T, method, url, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader([]byte(body)))
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// On a node without a cluster: the node's own sessions, kicks that need
// a selector and bounded options, and moves refused (routes come from the
// file).
func TestStandalone(t *testing.T) {
	p := &fakeProxy{sessions: []node.SessionInfo{
		{ID: "s2", User: "bob", Backend: "b1", Started: time.Unix(200, 0), Client: netip.MustParseAddrPort("192.0.2.1:1000")},
		{ID: "s1", User: "alice", Backend: "b1", Started: time.Unix(100, 0)},
	}}
	base := start(t, Config{Proxy: p, NodeName: "n1"})

	var ans ListAnswer
	if code := call(t, "GET", base+"/v1/sessions", "", &ans); code != 200 || len(ans.Sessions) != 2 || ans.Sessions[0].ID != "s1" || ans.Sessions[0].Node != "n1" {
		t.Fatalf("list: %d %+v", code, ans)
	}
	if code := call(t, "GET", base+"/v1/sessions?user=BOB", "", &ans); code != 200 || len(ans.Sessions) != 1 || ans.Sessions[0].ID != "s2" {
		t.Fatalf("list bob: %d %+v", code, ans)
	}
	if code := call(t, "GET", base+"/v1/sessions?node=n9", "", &ans); code != 200 || len(ans.Sessions) != 0 {
		t.Fatalf("list on another node: %d %+v", code, ans)
	}

	for _, bad := range []string{
		`{}`,
		`{"reason": "x"}`,
		`{"user": "   "}`,
		`{"user": "a", "spread": "1h"}`,
		`{"user": "a", "spread": "-1s"}`,
		`{"user": "a", "spread": "soon"}`,
		`{"user": "a", "reason": "line\r\nA2 LOGOUT"}`,
		`{"user": "a", "reason": "` + strings.Repeat("x", 201) + `"}`,
		`{"user": 5}`,
		`not json`,
	} {
		if code := call(t, "POST", base+"/v1/sessions/kick", bad, nil); code != 400 {
			t.Errorf("kick %s: %d, want 400", bad, code)
		}
	}
	if len(p.kicks) != 0 {
		t.Fatalf("a refused kick kicked: %+v", p.kicks)
	}
	var k KickAnswer
	if code := call(t, "POST", base+"/v1/sessions/kick", `{"backend": "b1"}`, &k); code != 200 || k.Kicked != 2 || k.ByNode["n1"] != 2 {
		t.Fatalf("kick b1: %d %+v", code, k)
	}
	if p.texts[0] != defaultReason {
		t.Errorf("default reason %q", p.texts[0])
	}
	// The internal "forget" flag cannot be set from outside.
	if code := call(t, "POST", base+"/v1/sessions/kick", `{"user": "alice", "forget": true, "reason": "bye"}`, &k); code != 200 || k.Kicked != 1 || p.texts[1] != "bye" {
		t.Fatalf("kick alice: %d %+v %v", code, k, p.texts)
	}
	if code := call(t, "POST", base+"/v1/users/alice/move", `{"to": "b2"}`, nil); code != http.StatusConflict {
		t.Fatalf("move without a cluster: %d", code)
	}
}

// fakeCluster serves CallEach from a set of named nodes' handlers, one
// of which may be unreachable.
type fakeCluster struct {
	name     string
	handlers map[string]map[string]cluster.RPCFunc // node -> path -> handler
	down     string
	applied  []routing.Command
	reads    int
}

func (c *fakeCluster) Name() string { return c.name }
func (c *fakeCluster) HandleRPC(path string, f cluster.RPCFunc) {
	if c.handlers[c.name] == nil {
		c.handlers[c.name] = map[string]cluster.RPCFunc{}
	}
	c.handlers[c.name][path] = f
}
func (c *fakeCluster) CallEach(ctx context.Context, path string, body []byte) []cluster.MemberAnswer {
	var out []cluster.MemberAnswer
	for _, n := range []string{"n1", "n2", "n3"} {
		if n == c.down {
			out = append(out, cluster.MemberAnswer{Node: n, Err: io.ErrUnexpectedEOF})
			continue
		}
		status, ans := c.handlers[n][path](ctx, body)
		b, _ := json.Marshal(ans)
		out = append(out, cluster.MemberAnswer{Node: n, Status: status, Body: b})
	}
	return out
}
func (c *fakeCluster) Apply(_ context.Context, cmd routing.Command) error {
	c.applied = append(c.applied, cmd)
	return nil
}
func (c *fakeCluster) ConsistentRead(context.Context) error { c.reads++; return nil }

// In a cluster: the union of every node's sessions, the nodes that did
// not answer named, kicks summed by node, and a move that writes the
// route before every node catches up and kicks the user.
func TestCluster(t *testing.T) {
	handlers := map[string]map[string]cluster.RPCFunc{}
	proxies := map[string]*fakeProxy{}
	var forgot []string
	fsm := routing.NewFSM()
	enc, err := routing.Command{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: "b2", Host: "10.0.0.2", IMAPPort: 143}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if res := fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: enc}); res != nil {
		if err, ok := res.(error); ok && err != nil {
			t.Fatal(err)
		}
	}
	var base string
	var c1 *fakeCluster
	for i, n := range []string{"n1", "n2", "n3"} {
		p := &fakeProxy{sessions: []node.SessionInfo{{ID: n + "-a", User: "alice", Backend: "b1", Started: time.Unix(int64(100-i), 0)}}}
		proxies[n] = p
		c := &fakeCluster{name: n, handlers: handlers}
		u := start(t, Config{Proxy: p, NodeName: n, Cluster: c, FSM: fsm, Forget: func(u string) { forgot = append(forgot, n+":"+u) }})
		if n == "n1" {
			base, c1 = u, c
		}
	}
	var ans ListAnswer
	if code := call(t, "GET", base+"/v1/sessions?user=alice", "", &ans); code != 200 || len(ans.Sessions) != 3 || ans.Sessions[0].Node != "n3" {
		t.Fatalf("cluster list: %d %+v", code, ans)
	}
	c1.down = "n2"
	if code := call(t, "GET", base+"/v1/sessions", "", &ans); code != 200 || len(ans.Sessions) != 2 || len(ans.Unreached) != 1 || ans.Unreached[0].Node != "n2" {
		t.Fatalf("list with n2 down: %d %+v", code, ans)
	}
	c1.down = ""
	var k KickAnswer
	if code := call(t, "POST", base+"/v1/sessions/kick", `{"user": "alice", "node": "n3"}`, &k); code != 200 || k.Kicked != 1 || k.ByNode["n3"] != 1 || len(proxies["n1"].kicks) != 0 {
		t.Fatalf("kick on n3 only: %d %+v", code, k)
	}

	if code := call(t, "POST", base+"/v1/users/alice/move", `{"to": "nowhere"}`, nil); code != 404 || len(c1.applied) != 0 {
		t.Fatalf("move to an unknown backend: %d, %d writes", code, len(c1.applied))
	}
	var m MoveAnswer
	if code := call(t, "POST", base+"/v1/users/Alice/move", `{"to": "b2"}`, &m); code != 200 || m.Kicked != 3 || m.Target.Backend != "b2" || m.User != "alice" {
		t.Fatalf("move: %d %+v", code, m)
	}
	if len(c1.applied) != 1 || c1.applied[0].Type != routing.CmdPutUsers || c1.applied[0].Users[0].Target.Backend != "b2" {
		t.Fatalf("the move's write: %+v", c1.applied)
	}
	if len(forgot) != 3 {
		t.Fatalf("affinity forgotten on %v, want every node", forgot)
	}
	for n, p := range proxies {
		if last := p.texts[len(p.texts)-1]; last != movedReason {
			t.Errorf("%s told %q", n, last)
		}
	}
}
