package config

import (
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/affinity"
)

func TestAffinitySection(t *testing.T) {
	c, err := Parse([]byte(good + "affinity: {expire: 5m, max_entries: 5000}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Affinity.TableConfig(), (affinity.Config{Expire: 5 * time.Minute, MaxEntries: 5000}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	_, err = Parse([]byte(good + "affinity: {expire: 500ms, max_entries: 10}\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"affinity.expire", "500ms is outside 1s..168h", "affinity.max_entries", "10 is outside 1000..10000000"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if _, err := Parse([]byte(good + "affinity: {expires: 5m}\n")); err == nil || !strings.Contains(err.Error(), "expires") {
		t.Errorf("unknown key: %v", err)
	}
}
