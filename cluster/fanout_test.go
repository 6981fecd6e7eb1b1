package cluster

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// CallEach reaches every member, itself included, over the cluster RPC,
// and says which members it could not ask.
func TestCallEach(t *testing.T) {
	nodes := startClusterWith(t, 3, func(nd *testNode) {
		name := nd.Name()
		nd.HandleRPC("/v1/ext/test/echo", func(ctx context.Context, body []byte) (int, any) {
			if string(body) == "bad" {
				return http.StatusBadRequest, map[string]string{"error": "bad from " + name}
			}
			return http.StatusOK, map[string]string{"node": name, "got": string(body)}
		})
	})
	waitFor(t, 20*time.Second, "every member verified", func() bool {
		for _, m := range nodes[0].Members() {
			if !m.Verified || m.Raft == "" {
				return false
			}
		}
		return len(nodes[0].Members()) == 3
	})
	ans := nodes[0].CallEach(context.Background(), "/v1/ext/test/echo", []byte("hello"))
	if len(ans) != 3 {
		t.Fatalf("%d answers: %+v", len(ans), ans)
	}
	for i, a := range ans {
		if a.Err != nil || a.Status != http.StatusOK {
			t.Fatalf("answer %d: %+v", i, a)
		}
		var body struct{ Node, Got string }
		if err := json.Unmarshal(a.Body, &body); err != nil || body.Node != a.Node || body.Got != "hello" {
			t.Fatalf("answer %d from %s: %s (%v)", i, a.Node, a.Body, err)
		}
		if i > 0 && ans[i-1].Node >= a.Node {
			t.Fatalf("not by name: %+v", ans)
		}
	}
	// A handler's error status reaches the caller, from every node.
	for _, a := range nodes[1].CallEach(context.Background(), "/v1/ext/test/echo", []byte("bad")) {
		if a.Err != nil || a.Status != http.StatusBadRequest || !strings.Contains(string(a.Body), "bad from "+a.Node) {
			t.Fatalf("error answer: %+v %s", a, a.Body)
		}
	}
	// A path nobody serves: 404 from each, not a hang.
	for _, a := range nodes[2].CallEach(context.Background(), "/v1/ext/test/none", nil) {
		if a.Status != http.StatusNotFound && a.Err == nil {
			t.Fatalf("unknown path: %+v", a)
		}
	}
	// A member that has gone is reported, not waited for.
	_ = nodes[2].Shutdown()
	waitFor(t, 20*time.Second, "n3 seen gone", func() bool {
		for _, m := range nodes[0].Members() {
			if m.Name == "n3" && m.State != "alive" {
				return true
			}
		}
		return false
	})
	for _, a := range nodes[0].CallEach(context.Background(), "/v1/ext/test/echo", []byte("x")) {
		if (a.Node == "n3") != (a.Err != nil) {
			t.Fatalf("after n3 left: %+v", a)
		}
	}
}
