package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockDataDir takes an exclusive lock on dir/portico.lock, so that a
// second process on the same data directory fails at once with a clear
// message (instead of blocking on a database lock or corrupting the log).
//
// It also makes the directory accessible to its owner only: it holds the
// replicated state, the TLS session-ticket keys among it (README, "TLS
// session resumption"), and raft and its WAL create their files for
// everyone to read, less the umask (0644 under the usual 022). A
// directory made before (by hand, mode 0755) kept them readable by every
// local user unless the service ran with a stricter umask.
func LockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	p := filepath.Join(dir, "portico.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(p); rerr == nil && len(strings.TrimSpace(string(b))) > 0 {
			holder = " (pid " + strings.TrimSpace(string(b)) + ")"
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another portico process%s; each node needs its own data_dir", dir, holder)
		}
		return nil, fmt.Errorf("data dir %s: lock: %w", dir, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
			unlockDataDir(f)
			return nil, fmt.Errorf("data dir %s is open to other users (mode %o) and cannot be made private: %w", dir, fi.Mode().Perm(), err)
		}
	}
	return f, nil
}

func unlockDataDir(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}
