package filesrc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing/source"
)

func full(t *testing.T, f source.Fetcher) ([]source.Entry, string) {
	t.Helper()
	var out []source.Entry
	wm, err := f.Full(context.Background(), func(e source.Entry) error { out = append(out, e); return nil })
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	return out, wm
}

// write replaces the file and moves its modification time on, as an
// editor a second later would.
func write(t *testing.T, path, s string, at time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func TestFileSource(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "popmap")
	f, err := Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Full(ctx, func(source.Entry) error { return nil }); err == nil {
		t.Fatal("a missing file read as an empty directory")
	}
	if _, err := f.Lookup(ctx, "a"); err == nil || errors.Is(err, source.ErrNotFound) {
		t.Fatalf("lookup in a missing file: %v (want an error that is not 'not found')", err)
	}
	t0 := time.Now().Add(-time.Hour)
	write(t, path, "# users\nAlice: a.smith@b1\nbob: pool:p\nbob: b2\n", t0)
	es, wm := full(t, f)
	if len(es) != 2 || es[0] != (source.Entry{User: "Alice", Target: "b1", Login: "a.smith"}) || es[1] != (source.Entry{User: "bob", Target: "b2"}) {
		t.Fatalf("entries %+v", es)
	}
	if next, err := f.Changes(ctx, wm, nil); err != nil || next != wm {
		t.Fatalf("unchanged file: %q %v", next, err)
	}
	if e, err := f.Lookup(ctx, "ALICE"); err != nil || e.Target != "b1" {
		t.Fatalf("lookup: %+v %v", e, err)
	}
	if _, err := f.Lookup(ctx, "carol"); !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("lookup of an absent user: %v", err)
	}
	// The same content written again: same hash, no change.
	write(t, path, "# users\nAlice: a.smith@b1\nbob: pool:p\nbob: b2\n", t0.Add(time.Second))
	if next, err := f.Changes(ctx, wm, nil); err != nil || next != wm {
		t.Fatalf("rewritten, same content: %q %v", next, err)
	}
	write(t, path, "alice: b1\ncarol: b2\n", t0.Add(2*time.Second))
	if _, err := f.Changes(ctx, wm, nil); !errors.Is(err, source.ErrNoChanges) {
		t.Fatalf("changed file: %v, want ErrNoChanges", err)
	}
	if e, err := f.Lookup(ctx, "carol"); err != nil || e.Target != "b2" {
		t.Fatalf("lookup after the change: %+v %v", e, err)
	}
	es, wm2 := full(t, f)
	if len(es) != 2 || wm2 == wm {
		t.Fatalf("after the change: %+v %q", es, wm2)
	}
	// A file that does not parse is an error, not an empty directory.
	write(t, path, "alice b1\n", t0.Add(3*time.Second))
	if _, err := f.Full(ctx, func(source.Entry) error { return nil }); err == nil {
		t.Fatal("a broken file read")
	}
	if _, err := f.Changes(ctx, wm2, nil); err == nil {
		t.Fatal("Changes of a broken file said nothing changed")
	}
	if err := (&Config{}).Check(); err == nil {
		t.Fatal("a config without a path passed")
	}
}
