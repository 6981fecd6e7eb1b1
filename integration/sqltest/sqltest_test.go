package sqltest

import (
	"os"
	"testing"
)

var pg, mdb *Server
var pgErr, mdbErr error

func TestMain(m *testing.M) {
	pg, mdb, pgErr, mdbErr = StartBoth()
	code := m.Run()
	if pg != nil {
		pg.Close()
	}
	if mdb != nil {
		mdb.Close()
	}
	os.Exit(code)
}

// TestServers creates a database on each server, writes and reads it as
// its owner over TCP, refuses a wrong password, and survives a restart.
func TestServers(t *testing.T) {
	for _, c := range []struct {
		name string
		srv  **Server
		err  error
	}{{"postgres", &pg, pgErr}, {"mariadb", &mdb, mdbErr}} {
		t.Run(c.name, func(t *testing.T) {
			Require(t, c.err)
			s := *c.srv
			d, err := s.NewDatabase("smoke")
			if err != nil {
				t.Fatal(err)
			}
			defer d.DB.Close()
			if _, err := d.DB.Exec("CREATE TABLE t (a INT)"); err != nil {
				t.Fatal(err)
			}
			if _, err := d.DB.Exec("INSERT INTO t VALUES (42)"); err != nil {
				t.Fatal(err)
			}
			var a int
			if err := d.DB.QueryRow("SELECT a FROM t").Scan(&a); err != nil || a != 42 {
				t.Fatalf("read back: %d, %v", a, err)
			}
			bad, err := OpenDSN(s.Driver, s.DSN(d.Name, "wrong", d.Name))
			if err != nil {
				t.Fatal(err)
			}
			defer bad.Close()
			if err := bad.Ping(); err == nil {
				t.Fatal("a wrong password logged in")
			}
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := d.DB.Ping(); err == nil {
				t.Fatal("ping succeeded with the server stopped")
			}
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			if err := d.DB.QueryRow("SELECT a FROM t").Scan(&a); err != nil || a != 42 {
				t.Fatalf("after restart: %d, %v", a, err)
			}
		})
	}
}
