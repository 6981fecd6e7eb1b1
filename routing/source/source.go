// Package source defines what a directory source (LDAP, SQL, a popmap
// file) gives the routing table: the user -> target entries it holds, in
// full, as changes since a point it names, or one user at a time.
//
// A source is read only by the raft leader (the syncer mirrors it into the
// replicated table, tagging what it writes with the source's name) and, on
// a login that misses the table, by the node that takes the login (an
// optional on-miss lookup). Logins otherwise never wait on a source.
package source

import (
	"context"
	"errors"
)

// Entry is one user's route as a source states it.
type Entry struct {
	// User is the login name as the source spells it; the table keys it
	// by its canonical form (routing.NormalizeUser).
	User string
	// Target is where the user lives: a backend id, "pool:NAME", or a
	// host or host:port (routing.Table.ResolveServer's forms).
	Target string
	// Login renames the user for the backend login ("" keeps the
	// client's name): Perdition's "user: newname@host".
	Login string
}

// Change is one entry of an incremental sync: Deleted set means the user
// is gone from the source (Target and Login are then empty).
type Change struct {
	Entry
	Deleted bool
}

// ErrNoChanges is returned by Changes when the source cannot tell what
// changed since a point (it has no change feed, or the point is too old):
// the caller falls back to a full sync.
var ErrNoChanges = errors.New("source: no change feed for this point")

// ErrNotFound is returned by Lookup when the source answered and holds no
// such user (a negative answer, cached as such), as opposed to any other
// error (the source could not answer: an infrastructure problem).
var ErrNotFound = errors.New("source: no such user")

// Fetcher reads one source. Its methods may be called concurrently; each
// honours ctx (a cancelled context ends a query in flight) and returns an
// error that names the source's address but never a password.
type Fetcher interface {
	// Full calls put for every entry the source holds, in any order, and
	// returns a watermark that a later Changes call starts from ("" if
	// the source has no change feed). An error (from the source or from
	// put) ends the walk: the caller discards a partial result.
	Full(ctx context.Context, put func(Entry) error) (watermark string, err error)
	// Changes calls put for each entry added, changed or deleted since
	// watermark and returns the next watermark, or ErrNoChanges.
	Changes(ctx context.Context, watermark string, put func(Change) error) (next string, err error)
	// Lookup asks the source for one user (the on-miss path): its entry,
	// ErrNotFound, or another error if the source could not answer.
	Lookup(ctx context.Context, user string) (Entry, error)
	// Close releases the source's connections.
	Close() error
}

// SkipCounter is implemented by a Fetcher that skips entries it cannot use
// (a missing or multi-valued attribute, a NULL column): SkippedByReason
// returns how many it skipped since it was opened, by reason (one of a small
// fixed set of short phrases), for the portico_source_skipped_entries_total metric.
type SkipCounter interface {
	SkippedByReason() map[string]uint64
}
