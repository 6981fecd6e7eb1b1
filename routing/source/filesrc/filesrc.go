// Package filesrc is the popmap-file directory source: a Perdition popmap
// ("user: [newname@]server" a line, source.ParsePopmap) that the raft
// leader mirrors into the replicated table, and that a node may ask on a
// login the table misses.
//
// A file has no change feed. Its watermark is the SHA-256 of its content:
// Changes answers "nothing changed" while the file hashes to the
// watermark (checking the size and modification time first, so an
// unchanged file is not read at every interval), and ErrNoChanges once it
// does not, which makes the syncer read it in full and write the
// difference. A file that cannot be read or parsed is an error, never an
// empty directory: a half-written file fails to parse or is refused by
// the syncer's safety valve.
package filesrc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// Config is a popmap source's block (`popmap:` under a source).
type Config struct {
	// Path is the popmap file; relative to the configuration file's
	// directory.
	Path string `yaml:"path"`
}

// Check validates the block.
func (c *Config) Check() error {
	if c.Path == "" {
		return errors.New("path: required (the popmap file)")
	}
	return nil
}

// Paths lists the block's file names, for the configuration to make
// relative names relative to its own directory.
func (c *Config) Paths() []*string { return []*string{&c.Path} }

// maxFile bounds the file read (a popmap of a few million users).
const maxFile = 1 << 30

// File reads one popmap file.
type File struct {
	path string
	log  *slog.Logger

	mu   sync.Mutex
	seen stamp                   // the file as last read
	hash string                  // its content's hash
	byID map[string]source.Entry // its entries by canonical user, for Lookup
}

// stamp is what is compared before reading a file again.
type stamp struct {
	size  int64
	mtime time.Time
}

// Open returns the source of cfg. The file need not exist yet: reading
// it fails until it does.
func Open(cfg Config, log *slog.Logger) (source.Fetcher, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &File{path: cfg.Path, log: log}, nil
}

// read reads and parses the file when its stamp changed since the last
// read (or always, with force), and returns its hash and entries.
func (f *File) read(force bool) (string, map[string]source.Entry, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return "", nil, fmt.Errorf("popmap %s: %w", f.path, err)
	}
	st := stamp{size: fi.Size(), mtime: fi.ModTime()}
	f.mu.Lock()
	if !force && f.byID != nil && st.size == f.seen.size && st.mtime.Equal(f.seen.mtime) {
		h, m := f.hash, f.byID
		f.mu.Unlock()
		return h, m, nil
	}
	f.mu.Unlock()
	if st.size > maxFile {
		return "", nil, fmt.Errorf("popmap %s: %d bytes, at most %d", f.path, st.size, maxFile)
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", nil, fmt.Errorf("popmap %s: %w", f.path, err)
	}
	sum := sha256.Sum256(b)
	hash := "sha256:" + hex.EncodeToString(sum[:])
	f.mu.Lock()
	if f.byID != nil && hash == f.hash {
		f.seen = st
		m := f.byID
		f.mu.Unlock()
		return hash, m, nil
	}
	f.mu.Unlock()
	byID := map[string]source.Entry{}
	err = source.ParsePopmap(bytes.NewReader(b), func(_ int, e source.Entry) error {
		byID[routing.NormalizeUser(e.User)] = e // a user named twice: the last line wins
		return nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("popmap %s: %w", f.path, err)
	}
	f.mu.Lock()
	f.seen, f.hash, f.byID = st, hash, byID
	f.mu.Unlock()
	return hash, byID, nil
}

// Full implements source.Fetcher: every entry of the file, and its hash.
func (f *File) Full(ctx context.Context, put func(source.Entry) error) (string, error) {
	hash, byID, err := f.read(true)
	if err != nil {
		return "", err
	}
	for _, e := range byID {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := put(e); err != nil {
			return "", err
		}
	}
	return hash, nil
}

// Changes implements source.Fetcher: nothing when the file still hashes
// to watermark, else ErrNoChanges (the syncer reads it in full).
func (f *File) Changes(ctx context.Context, watermark string, put func(source.Change) error) (string, error) {
	hash, _, err := f.read(false)
	if err != nil {
		return "", err
	}
	if hash != watermark {
		return "", source.ErrNoChanges
	}
	return watermark, nil
}

// Lookup implements source.Fetcher: the file's entry for user.
func (f *File) Lookup(ctx context.Context, user string) (source.Entry, error) {
	_, byID, err := f.read(false)
	if err != nil {
		return source.Entry{}, err
	}
	if e, ok := byID[routing.NormalizeUser(user)]; ok {
		return e, nil
	}
	return source.Entry{}, source.ErrNotFound
}

// Close implements source.Fetcher.
func (f *File) Close() error { return nil }
