package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/daemon"
)

func render(t *testing.T, st *daemon.Status) string {
	t.Helper()
	var b bytes.Buffer
	if err := printStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// line reports whether out has a line matching the pattern.
func line(out, pattern string) bool {
	return regexp.MustCompile(`(?m)^` + pattern + `\s*$`).MatchString(out)
}

func TestPrintStatusStandalone(t *testing.T) {
	out := render(t, &daemon.Status{
		Node: "px", Version: "1.0", Commit: "abc", Role: "standalone", Ready: true,
		Sessions:  map[string]daemon.SessionCount{"imap": {Preauth: 2, Relayed: 5}},
		Listeners: []daemon.ListenerStatus{{Name: "imaps", Protocol: "imap", Address: "0.0.0.0:993", SessionCount: daemon.SessionCount{Preauth: 2, Relayed: 5}}},
		Backends:  []daemon.BackendStatus{{ID: "b1", Host: "10.0.0.5", IMAPPort: 143, State: "active", Health: "-", Sessions: 5}},
	})
	for _, want := range []string{
		`role:\s+standalone`, `leader:\s+-`, `VIP owner:\s+-`, `ready:\s+yes`,
		`imap\s+5\s+2`, `imaps\s+imap\s+0\.0\.0\.0:993\s+5\s+2`,
		`standalone`, `b1\s+10\.0\.0\.5 \(imap 143\)\s+active\s+-\s+5`,
	} {
		if !line(out, want) {
			t.Errorf("no line %q in:\n%s", want, out)
		}
	}
}

func TestPrintStatusCluster(t *testing.T) {
	out := render(t, &daemon.Status{
		Node: "n2", Version: "1.0", Commit: "abc", Role: "follower", NotReady: []string{"draining"}, Draining: true,
		Sessions: map[string]daemon.SessionCount{},
		Backends: []daemon.BackendStatus{{ID: "b1", Host: "10.0.0.5", IMAPPort: 143, POP3Port: 110, State: "active", Health: "down"}},
		Cluster: &daemon.ClusterStatus{Leader: "n1", Members: []cluster.Member{
			{Name: "n1", State: "alive", Role: "leader", Version: "1.0", Sessions: 12},
			{Name: "n2", State: "suspect", Role: "follower", Version: "0.9", Draining: true},
		}},
		VIP: &daemon.VIPSection{Addresses: []string{"198.18.0.100"}, Owner: "n1"},
	})
	for _, want := range []string{
		`role:\s+follower`, `leader:\s+n1`, `VIP owner:\s+n1 \(198\.18\.0\.100\)`, `ready:\s+no: draining`,
		`n1\s+alive\s+leader\s+1\.0\s+12\s+false`, `n2\s+suspect\s+follower\s+0\.9\s+0\s+true`,
		`b1\s+10\.0\.0\.5 \(imap 143, pop3 110\)\s+active\s+down\s+0`,
	} {
		if !line(out, want) {
			t.Errorf("no line %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "standalone") {
		t.Errorf("a cluster member shown as standalone:\n%s", out)
	}
	out = render(t, &daemon.Status{Node: "n2", Role: "follower", Sessions: map[string]daemon.SessionCount{},
		VIP: &daemon.VIPSection{Mode: "spread", Addresses: []string{"198.18.0.102/24@eth0", "198.18.0.101/24@eth0"},
			Owners: map[string]string{"198.18.0.102": "n2", "198.18.0.101": "n3"}}})
	if want := `VIP owner:\s+198\.18\.0\.101 n3, 198\.18\.0\.102 n2$`; !line(out, want) {
		t.Errorf("no line %q in:\n%s", want, out)
	}
}
