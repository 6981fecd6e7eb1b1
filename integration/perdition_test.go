package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// perdition finds Perdition (Debian package perdition): $PERDITION, else
// perdition in PATH or /usr/sbin, with its regex map library beside it.
func perdition(t *testing.T) (bin, regexLib string) {
	t.Helper()
	bin = os.Getenv("PERDITION")
	if bin == "" {
		if p, err := exec.LookPath("perdition"); err == nil {
			bin = p
		} else {
			bin = "/usr/sbin/perdition"
		}
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("perdition not installed (apt-get install perdition, or PERDITION=path): %v", err)
	}
	for _, dir := range []string{filepath.Join(filepath.Dir(bin), "../lib/x86_64-linux-gnu"), "/usr/lib/x86_64-linux-gnu", "/usr/lib"} {
		if p := filepath.Join(dir, "libperditiondb_posix_regex.so.0"); fileExists(p) {
			return bin, p
		}
	}
	t.Skip("perdition's regex map library (libperditiondb_posix_regex.so.0) not found")
	return "", ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// perditionLogin logs user in through Perdition run in inetd mode on one
// connection (its standard input and output), with the regex map.
func perditionLogin(t *testing.T, bin, lib, popmapRE, user, pass string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c.(*net.TCPConn)
	}()
	cl, err := imapclient.DialInsecure(ln.Addr().String(), nil)
	if err != nil {
		return err
	}
	defer cl.Close()
	srv := <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	f, err := srv.File()
	srv.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stderr bytes.Buffer
	// Perdition logs to a file (to "-" it would write into the IMAP
	// stream), after it switched to user nobody.
	logFile := filepath.Join(filepath.Dir(popmapRE), "perdition.log")
	if lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY, 0o666); err == nil {
		lf.Close()
		_ = os.Chmod(logFile, 0o666)
	}
	cmd := exec.Command(bin, "--inetd_mode", "--protocol", "IMAP4", "--config_file", "",
		"--map_library", lib, "--map_library_opt", popmapRE, "--username_from_database",
		"--log_facility", logFile, "--debug")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Dir(lib))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(logFile)
			t.Logf("perdition (%s): %s\n%s", user, stderr.String(), log)
		}
	}()
	if err := cl.Login(user, pass).Wait(); err != nil {
		return err
	}
	return cl.Logout().Wait()
}

// Popmap parity: one regex map (renames, $n groups, first match wins) read
// by Perdition itself and imported into Portico sends each user to the
// same Dovecot under the same backend login.
func TestPopmapREParityWithPerdition(t *testing.T) {
	bin, lib := perdition(t)
	users := map[string]string{}
	for _, u := range []string{"alice", "bob_example.org", "carol", "dave", "zed"} {
		users[u] = "secret"
	}
	dc1 := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: users})
	dc2 := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: users})
	at := func(dc *dovecot.Server) string { return fmt.Sprintf("%s:%d", dc.Addr, dc.IMAPPort) }
	// Perdition reads the map as user nobody.
	dir, err := os.MkdirTemp("", "perdition-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755)
	re := filepath.Join(dir, "popmap.re")
	os.WriteFile(re, []byte(fmt.Sprintf(`# a Perdition regex popmap
^([a-b].*)@example\.com$: $1@%[1]s
^(.*)@(example\.org)$:    $1_$2@%[2]s   # two groups
^staff\.(.*)              $1@%[2]s
^(c.*)@example\.com:      %[2]s
^zed:                     %[1]s
`, at(dc1), at(dc2))), 0o644)

	nodes := newCluster(t, 1, dc1, "")
	nd := nodes[0]
	nd.start()
	waitSeeded(t, nodes)
	if out, err := nd.cli("backend", "set", "dc2", "--host", dc2.Addr, "--imap-port", fmt.Sprint(dc2.IMAPPort)); err != nil {
		t.Fatalf("backend set: %v\n%s", err, out)
	}
	if out, err := nd.cli("import", re); err != nil || !strings.Contains(out, "5 added") {
		t.Fatalf("import: %v\n%s", err, out)
	}

	// Each client login, and where it must land: which Dovecot, as whom.
	type landing struct {
		dc   *dovecot.Server
		user string
	}
	cases := []struct {
		login string
		want  landing
	}{
		{"alice@example.com", landing{dc1, "alice"}},
		{"bob@example.org", landing{dc2, "bob_example.org"}},
		{"staff.dave", landing{dc2, "dave"}},
		{"carol@example.com", landing{dc2, "carol@example.com"}}, // no rename: Dovecot refuses, but it is asked
		{"zed", landing{dc1, "zed"}},
	}
	seen := func() (a, b int) { return len(dc1.LoginRecords()), len(dc2.LoginRecords()) }
	for _, c := range cases {
		for _, via := range []string{"perdition", "portico"} {
			a0, b0 := seen()
			var err error
			if via == "perdition" {
				err = perditionLogin(t, bin, lib, re, c.login, "secret")
			} else {
				err = loginVia(t, nd.imap, c.login, "secret")
			}
			if c.want.user == c.login && strings.Contains(c.login, "@") {
				if err == nil {
					t.Errorf("%s via %s: logged in as a user Dovecot does not know", c.login, via)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s via %s: %v", c.login, via, err)
				continue
			}
			c.want.dc.WaitLogins(c.want.user, 1, 5*time.Second)
			a1, b1 := seen()
			other, n0, n1 := dc2, a0, a1
			if c.want.dc == dc2 {
				other, n0, n1 = dc1, b0, b1
			}
			recs := c.want.dc.LoginRecords()
			if n1 != n0+1 || recs[len(recs)-1].User != c.want.user || len(other.LoginRecords()) != map[bool]int{true: a0, false: b0}[other == dc1] {
				t.Errorf("%s via %s: want a login of %s on %s; dc1 %d->%d, dc2 %d->%d", c.login, via, c.want.user, c.want.dc.Addr, a0, a1, b0, b1)
			}
		}
	}
}
