package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// A Perdition popmap with a rename, imported through the real CLI: a login
// through Portico as the original user reaches Dovecot under the new name.
// A dry run of a smaller file prints the difference and writes nothing;
// the import --replace of it prunes the users the file dropped, but not a
// route the API set meanwhile; an export of the source, imported again
// with --replace, changes nothing.
func TestImportPopmapRenameReplace(t *testing.T) {
	// Dovecot knows alice only as alice.smith.
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(),
		Users: map[string]string{"alice.smith": "secret", "bob": "secret", "carol": "secret", "dave": "secret"}})
	nodes := newCluster(t, 1, dc, "")
	nd := nodes[0]
	nd.start()
	waitSeeded(t, nodes)

	dir := t.TempDir()
	popmap := filepath.Join(dir, "users.map")
	os.WriteFile(popmap, []byte(fmt.Sprintf(`# Perdition popmap
alice: alice.smith@%s:%d   # renamed for the backend
bob: dc1
carol: %s

dave: dc1
`, dc.Addr, dc.IMAPPort, dc.Addr)), 0o644)
	out, err := nd.cli("import", popmap)
	if err != nil || !strings.Contains(out, "imported 4 users from source users.map: 4 added") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if err := loginVia(t, nd.imap, "alice", "secret"); err != nil {
		t.Fatalf("alice through portico: %v", err)
	}
	if n := dc.WaitLogins("alice.smith", 1, 5*time.Second); n != 1 || dc.Logins("alice") != 0 {
		t.Fatalf("dovecot logins: alice.smith %d, alice %d\n%s", n, dc.Logins("alice"), dc.Log())
	}

	// The API re-pins bob: the route is the API's now.
	if out, err := nd.cli("route", "set", "bob", "--backend", "dc1"); err != nil {
		t.Fatalf("route set: %v\n%s", err, out)
	}
	os.WriteFile(popmap, []byte("alice: alice.smith@dc1\n"), 0o644)
	out, err = nd.cli("import", popmap, "--replace", "--dry-run")
	if err != nil || !strings.Contains(out, "- carol: dc1 [users.map]") || !strings.Contains(out, "- dave: dc1 [users.map]") ||
		strings.Contains(out, "bob") || !strings.Contains(out, "1 unchanged") || !strings.Contains(out, "2 removed") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if !hasUser(nd, "carol") {
		t.Fatal("the dry run removed carol")
	}
	out, err = nd.cli("import", popmap, "--replace")
	if err != nil || !strings.Contains(out, "2 removed") {
		t.Fatalf("import --replace: %v\n%s", err, out)
	}
	if hasUser(nd, "carol") || hasUser(nd, "dave") || !hasUser(nd, "bob") || !hasUser(nd, "alice") {
		t.Fatalf("after replace: carol %v dave %v bob %v alice %v", hasUser(nd, "carol"), hasUser(nd, "dave"), hasUser(nd, "bob"), hasUser(nd, "alice"))
	}
	if err := loginVia(t, nd.imap, "bob", "secret"); err != nil {
		t.Fatalf("bob (API route) after replace: %v", err)
	}
	if err := loginVia(t, nd.imap, "carol", "secret"); err == nil {
		t.Fatal("carol logged in without a route")
	}

	// Perdition's regex map: users without a route of their own match it,
	// the first match wins, $1 builds the backend login.
	re := filepath.Join(dir, "popmap.re")
	os.WriteFile(re, []byte(fmt.Sprintf("# regex map\n^(.*)\\.old$: $1@%s\n^nobody: dc1\n", dc.Addr)), 0o644)
	if out, err := nd.cli("import", re); err != nil || !strings.Contains(out, "from source popmap.re: 2 added") {
		t.Fatalf("import popmap.re: %v\n%s", err, out)
	}
	if err := loginVia(t, nd.imap, "dave.old", "secret"); err != nil {
		t.Fatalf("dave.old through the regex map: %v", err)
	}
	if n := dc.WaitLogins("dave", 1, 5*time.Second); n != 1 {
		t.Fatalf("dovecot logins of dave: %d\n%s", n, dc.Log())
	}
	if out, err := nd.cli("route", "lookup", "dave.old"); err != nil || !strings.Contains(out, "via regex rule") || !strings.Contains(out, "logs in as dave") {
		t.Fatalf("lookup: %v\n%s", err, out)
	}

	// Export then import --replace of the same source: nothing changes.
	exported, err := nd.cli("export", "--source", "users.map", "--format", "csv")
	if err != nil || !strings.Contains(exported, "alice,dc1,alice.smith,users.map") || strings.Contains(exported, "bob") {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	csvFile := filepath.Join(dir, "export.csv")
	os.WriteFile(csvFile, []byte(exported), 0o644)
	out, err = nd.cli("import", csvFile, "--format", "csv", "--source", "users.map", "--replace")
	if err != nil || !strings.Contains(out, "0 added, 0 changed, 0 removed, 1 unchanged") {
		t.Fatalf("re-import of the export: %v\n%s", err, out)
	}
}
