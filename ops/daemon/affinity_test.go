package daemon

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// The affinity stage: sessions bind it, the replicated table's lookups
// (and the lookup API) consult it in shared_storage pools, ClearAffinity
// forgets a user, a reload changes its settings.
func TestAffinityWiring(t *testing.T) {
	const file = `
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}, {id: b2, host: 127.0.0.1, imap_port: 2}]
pools: [{name: p, backends: [b1, b2], shared_storage: true}]
routes: {default_pool: p}
affinity: {expire: 1m}
`
	dir := t.TempDir()
	d := startNode(t, clusterNode+"data_dir: "+dir+file)
	waitReady(t, d)
	if d.env.Affinity != d.affinity || d.fsm.Affinity() != d.affinity {
		t.Fatal("the affinity is not the sessions' and the routing table's")
	}
	// A user whose hash's choice is b1, bound to b2 by a session.
	tbl := d.fsm.Table()
	var user string
	for i := 0; user == ""; i++ {
		u := fmt.Sprint("u", i)
		if r, err := tbl.Lookup(routing.Request{User: u, Protocol: routing.IMAP}, nil); err == nil && r.Backend.ID == "b1" {
			user = u
		}
	}
	lookup := func() (string, bool) {
		t.Helper()
		r, err := tbl.LookupWith(routing.Request{User: user, Protocol: routing.IMAP}, nil, d.fsm.Affinity())
		if err != nil {
			t.Fatal(err)
		}
		return r.Backend.ID, r.Steered
	}
	end := d.affinity.Bind(user, "b2", false)
	if be, steered := lookup(); be != "b2" || !steered {
		t.Fatalf("bound to b2: %s %v", be, steered)
	}
	code, b := get(t, d, "/v1/routes/lookup?user="+user, "s3cret")
	var api struct {
		Backend string `json:"backend"`
		Steered bool   `json:"steered"`
	}
	// The API also applies health: b2 may be down (nothing listens); then
	// it shows b1, not steered.
	if code != 200 || json.Unmarshal(b, &api) != nil || api.Steered != (api.Backend == "b2") {
		t.Fatalf("lookup API: %d %s", code, b)
	}
	d.ClearAffinity(user)
	if be, steered := lookup(); be != "b1" || steered {
		t.Fatalf("after ClearAffinity: %s %v", be, steered)
	}
	end()
	if be, _ := lookup(); be != "b1" {
		t.Fatalf("the cleared session's end bound it again: %s", be)
	}
	next, err := config.Parse([]byte(clusterNode + "data_dir: " + dir + file))
	if err != nil {
		t.Fatal(err)
	}
	next.Affinity.Expire = config.Duration(2 * time.Minute)
	if err := d.Reload(next); err != nil {
		t.Fatal(err)
	}
	if got := d.affinity.Config().Expire; got != 2*time.Minute {
		t.Fatalf("expire after reload: %v", got)
	}
}
