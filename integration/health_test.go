package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
)

// A backend that goes down: in a shared-storage pool its users are
// rerouted to another member; in a pool without shared storage they get
// NO [UNAVAILABLE], never a login on the wrong server.
func TestBackendDownReroutesOrRefuses(t *testing.T) {
	users := map[string]string{}
	for i := 0; i < 12; i++ {
		users[fmt.Sprintf("u%d@shared.example", i)] = "secret"
		users[fmt.Sprintf("u%d@single.example", i)] = "secret"
	}
	d1 := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.85", Users: users})
	d2 := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.86", Users: users})
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
limits: {auth_failure_delay: 10ms}
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0", health: {interval: 200ms, timeout: 2s, fall: 2, rise: 2}}
backends:
  - {id: d1, host: %s, imap_port: %d}
  - {id: d2, host: %s, imap_port: %d}
pools:
  - {name: shared, backends: [d1, d2], shared_storage: true}
  - {name: single, backends: [d1, d2], shared_storage: false}
routes:
  domains: {shared.example: shared, single.example: single}
`, d1.Addr, d1.IMAPPort, d2.Addr, d2.IMAPPort))

	// Ready, both backends up (a probe starved of CPU on a loaded machine
	// must not take a healthy backend down: hence the 2 s probe timeout).
	waitFor(t, "the node ready and both backends up", 20*time.Second, func() bool {
		return len(p.d.NotReady()) == 0 && !p.d.BackendDown("d1") && !p.d.BackendDown("d2")
	})
	// Find users whose home is d1, by where their first login lands.
	home := func(user string) string {
		before := d1.Logins(user)
		login(t, p, user)
		if d1.WaitLogins(user, before+1, 3*time.Second) > before {
			return "d1"
		}
		return "d2"
	}
	var sharedOnD1, singleOnD1 string
	for i := 0; i < 12 && (sharedOnD1 == "" || singleOnD1 == ""); i++ {
		if u := fmt.Sprintf("u%d@shared.example", i); sharedOnD1 == "" && home(u) == "d1" {
			sharedOnD1 = u
		}
		if u := fmt.Sprintf("u%d@single.example", i); singleOnD1 == "" && home(u) == "d1" {
			singleOnD1 = u
		}
	}
	if sharedOnD1 == "" || singleOnD1 == "" {
		t.Fatal("no user homed on d1 among 12 (rendezvous hashing broken?)")
	}

	d1.Stop()
	waitFor(t, "d1 marked down", 10*time.Second, func() bool {
		return p.d.BackendDown("d1")
	})
	// Shared storage: rerouted to d2.
	before := d2.Logins(sharedOnD1)
	login(t, p, sharedOnD1)
	if d2.WaitLogins(sharedOnD1, before+1, 3*time.Second) <= before {
		t.Fatalf("%s was not rerouted to d2", sharedOnD1)
	}
	// No shared storage: refused, and d2 never saw a login.
	c, err := imapclient.DialInsecure(p.addr("imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Login(singleOnD1, "secret").Wait()
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("single-storage user on a down backend: %v", err)
	}
	if d2.Logins(singleOnD1) != 0 {
		t.Fatalf("%s logged in on the wrong server", singleOnD1)
	}
}

func login(t *testing.T, p *portico, user string) {
	t.Helper()
	c, err := imapclient.DialInsecure(p.addr("imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, "secret").Wait(); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	c.Logout().Wait()
}
