package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

// The data directory holds the session-ticket keys (raft's log and
// snapshots): one made open to other users (mode 0755, by hand) is made
// private when a node takes it, and a new one is private from the start.
func TestLockDataDirMakesItPrivate(t *testing.T) {
	base := t.TempDir()
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	for _, dir := range []string{open, filepath.Join(base, "new")} {
		f, err := LockDataDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o700 {
			t.Errorf("%s: mode %o, want 700", dir, m)
		}
		unlockDataDir(f)
	}
}
