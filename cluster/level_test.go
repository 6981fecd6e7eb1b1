package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

func TestNeedLevel(t *testing.T) {
	next := routing.BaseCommandLevel + 1
	for _, c := range []struct {
		levels map[string]int
		t      routing.CommandType
		want   string // "" = allowed
	}{
		{map[string]int{}, next, ""},
		{map[string]int{"n2": int(next), "n3": int(next) + 3}, next, ""},
		{map[string]int{"n2": int(next), "n3": int(next) - 1}, next, "upgrade n3 (level 9) first"},
		{map[string]int{"n2": -1, "n3": int(next) - 1}, next, "upgrade n2 (level unknown), n3 (level 9) first"},
	} {
		err := needLevel(c.t, c.levels)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.levels, err)
		case c.want != "" && (!errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: got %v, want %q", c.levels, err, c.want)
		}
	}
}

// The leader checks the levels its peers gossiped (verified): a command
// type above what they apply is refused with 409 before it reaches the
// log; the base types are never held back.
func TestLeaderRefusesCommandsPeersDoNotKnow(t *testing.T) {
	nodes := startCluster(t, 3)
	l := waitLeader(t, nodes)
	waitFor(t, 10*time.Second, "every peer's level known", func() bool {
		for _, n := range nodes {
			if n != l && l.knownLevel(n.Name()) != int(routing.CommandLevel) {
				return false
			}
		}
		return true
	})
	if err := l.checkLevel(routing.BaseCommandLevel); err != nil {
		t.Fatalf("base level: %v", err)
	}
	err := l.checkLevel(routing.CommandLevel + 1)
	if !errors.Is(err, ErrUnsupported) || StatusOf(err) != 409 {
		t.Fatalf("a type no node knows: %v (HTTP %d)", err, StatusOf(err))
	}
	// And through the write path (a follower's write forwarded to the
	// leader): such a command is refused before raft, by the decoder.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := followerOf(nodes).ApplyRaw(ctx, []byte{byte(routing.CommandLevel + 1), 1, '{', '}'}); !errors.Is(err, routing.ErrUnknownCommand) {
		t.Fatalf("unknown type through ApplyRaw: %v", err)
	}
}
