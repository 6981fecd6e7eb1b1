package cluster

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
)

// ErrUnsupported: a command type that not every server of the cluster
// applies yet (a rolling upgrade is under way). Writing it would stop the
// older nodes, so the leader refuses it until they are upgraded.
var ErrUnsupported = errors.New("not supported by every node of the cluster yet")

// checkLevel refuses a command type newer than routing.BaseCommandLevel
// unless every other raft server (voters and non-voters alike: both apply
// the log) has gossiped, in verified metadata, a level that includes it.
func (n *Agent) checkLevel(t routing.CommandType) error {
	if t <= routing.BaseCommandLevel {
		return nil
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	levels := map[string]int{}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.NodeName) {
			continue
		}
		levels[string(s.ID)] = n.knownLevel(string(s.ID))
	}
	return needLevel(t, levels)
}

// knownLevel returns name's command level from its verified metadata
// (the last verified copy if it is gone now), or -1 if none was verified.
func (n *Agent) knownLevel(name string) int {
	for _, m := range n.del.snapshot() {
		if m.name == name {
			if meta, ok := n.memberMeta(m.name, m.meta); ok {
				return meta.Level
			}
		}
	}
	n.peers.mu.Lock()
	defer n.peers.mu.Unlock()
	if tm := n.peers.metas[name]; tm != nil {
		return tm.meta.Level
	}
	return -1
}

// needLevel is the decision: every server's level must reach t.
func needLevel(t routing.CommandType, levels map[string]int) error {
	var behind []string
	for name, l := range levels {
		switch {
		case l < 0:
			behind = append(behind, name+" (level unknown)")
		case l < int(t):
			behind = append(behind, fmt.Sprintf("%s (level %d)", name, l))
		}
	}
	if len(behind) == 0 {
		return nil
	}
	sort.Strings(behind)
	return fmt.Errorf("%w: %s (command level %d) needs every node at level %d or newer; upgrade %s first", ErrUnsupported, t, t, t, strings.Join(behind, ", "))
}
