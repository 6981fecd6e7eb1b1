package syncer

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-mail/portico/routing/source"
)

// skipper is a fetcher that counts skipped entries.
type skipper struct {
	source.Fetcher
	n map[string]uint64
}

func (s skipper) SkippedByReason() map[string]uint64 { return s.n }

// The skipped-entries counter is read from each fetcher that counts them,
// at every scrape; a fetcher that does not is simply absent.
func TestSkippedEntriesMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	counts := map[string]uint64{"no target attribute": 3}
	m.Skips("dir", skipper{n: counts})
	m.Skips("plain", plainFetcher{})
	want := `
# HELP portico_source_skipped_entries_total ` + HelpSkipped + `
# TYPE portico_source_skipped_entries_total counter
portico_source_skipped_entries_total{reason="no target attribute",source="dir"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "portico_source_skipped_entries_total"); err != nil {
		t.Fatal(err)
	}
	counts["several target attribute values"] = 1
	want += `portico_source_skipped_entries_total{reason="several target attribute values",source="dir"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "portico_source_skipped_entries_total"); err != nil {
		t.Fatal(err)
	}
}

type plainFetcher struct{}

func (plainFetcher) Full(context.Context, func(source.Entry) error) (string, error) { return "", nil }
func (plainFetcher) Changes(context.Context, string, func(source.Change) error) (string, error) {
	return "", source.ErrNoChanges
}
func (plainFetcher) Lookup(context.Context, string) (source.Entry, error) {
	return source.Entry{}, source.ErrNotFound
}
func (plainFetcher) Close() error { return nil }
