package daemon

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A fresh cluster's first sync waits for this node's seed: a source
// target naming a backend of the configuration file resolves to that
// backend, and no backend is made up for it as for an unknown host (the
// sync used to race the seed and create a backend "dc1" with host "dc1"
// on a fresh three-node cluster; on one node the seed usually wins the
// race anyway, so this checks the outcome more than it provokes the race).
func TestFirstSyncAfterSeed(t *testing.T) {
	dir := t.TempDir()
	popmap := filepath.Join(dir, "users.popmap")
	if err := os.WriteFile(popmap, []byte("alice: dc1\nbob: dc1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startNode(t, clusterNode+"data_dir: "+filepath.Join(dir, "data")+`
backends: [{id: dc1, host: 127.0.0.1, imap_port: 1}]
sources:
  - name: users
    type: popmap
    popmap: {path: `+popmap+`}
    interval: 1s
    full_interval: 1h
`)
	waitReady(t, d)
	deadline := time.Now().Add(20 * time.Second)
	for {
		tb := d.fsm.Table()
		a, okA := tb.UserRoute("alice")
		b, okB := tb.UserRoute("bob")
		if okA && okB {
			if a.Backend != "dc1" || b.Backend != "dc1" || a.Source != "source:users" {
				t.Fatalf("alice %+v, bob %+v", a, b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the source's users never reached the table")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, be := range d.fsm.Table().Backends() {
		if be.ID != "dc1" {
			t.Fatalf("a backend made up by the sync: %+v", be)
		}
	}
}
