package config

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Marshal renders a validated configuration as it runs, for `portico
// proxy --print-config`: every default written out rather than the zero
// that stands for it, what does not apply left out (a standalone node's
// data_dir, cluster and vip; unset names, empty lists), and a comment on
// the one value worked out when the node starts. Parsed again (`portico
// serve --config`), it makes the same node.
func (c *Config) Marshal() ([]byte, error) {
	e := *c
	e.Limits = effectiveLimits(c.Limits)
	e.Backends = append([]Backend(nil), c.Backends...)
	for i := range e.Backends {
		if e.Backends[i].Weight == 0 {
			e.Backends[i].Weight = 1 // routing: 0 means 1
		}
	}
	var doc yaml.Node
	if err := doc.Encode(&e); err != nil {
		return nil, err
	}
	top := &doc
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = top.Content[0]
	}
	if c.Standalone {
		dropKeys(top, "data_dir", "cluster", "vip")
		// First: it says how to read the rest.
		for i := 0; i+1 < len(top.Content); i += 2 {
			if top.Content[i].Value == "standalone" {
				kv := []*yaml.Node{top.Content[i], top.Content[i+1]}
				rest := append(append([]*yaml.Node{}, top.Content[:i]...), top.Content[i+2:]...)
				top.Content = append(kv, rest...)
				kv[0].HeadComment = "No cluster: routes from this file only, nothing kept on disk."
				break
			}
		}
	}
	prune(top)
	if e.Limits.MaxConnections == 0 {
		if v := mapValue(mapValue(top, "limits"), "max_connections"); v != nil {
			v.LineComment = fmt.Sprintf("0: sized to the file-descriptor limit when the node starts (%d here, now)", node.DefaultMaxConnections())
		}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// effectiveLimits fills the global limits' defaults (session.DefaultLimits,
// the same for every protocol but for the idle timeout, and
// node.DefaultConfig's per-address limit). max_connections stays 0 when
// unset: its default depends on the file-descriptor limit of the process.
func effectiveLimits(l Limits) Limits {
	imap, pop3, sieve, sub := session.DefaultLimits(routing.IMAP), session.DefaultLimits(routing.POP3), session.DefaultLimits(routing.Sieve), session.DefaultLimits(routing.Submission)
	fillInt := func(p *int, d int) {
		if *p == 0 {
			*p = d
		}
	}
	fillDur := func(p *Duration, d Duration) {
		if *p == 0 {
			*p = d
		}
	}
	fillInt(&l.MaxConnectionsPerIP, node.DefaultConfig().MaxConnectionsPerIP)
	fillInt(&l.MaxLine, imap.MaxLine)
	fillInt(&l.MaxLiteral, imap.MaxLiteral)
	fillDur(&l.PreAuthTimeout, Duration(imap.PreAuthTimeout))
	fillDur(&l.PreAuthLifetime, Duration(imap.PreAuthLifetime))
	fillDur(&l.TLSHandshakeTimeout, Duration(imap.TLSHandshakeTimeout))
	fillInt(&l.MaxErrors, imap.MaxErrors)
	fillInt(&l.MaxAuthFailures, imap.MaxAuthFailures)
	fillDur(&l.AuthFailureDelay, Duration(imap.AuthFailureDelay))
	fillDur(&l.BackendTimeout, Duration(imap.BackendTimeout))
	fillDur(&l.IMAPIdleTimeout, Duration(imap.IdleTimeout))
	fillDur(&l.POP3IdleTimeout, Duration(pop3.IdleTimeout))
	fillDur(&l.SieveIdleTimeout, Duration(sieve.IdleTimeout))
	fillDur(&l.SubmissionIdleTimeout, Duration(sub.IdleTimeout))
	return l
}

// mapValue returns the value of key in a mapping node, or nil.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func dropKeys(m *yaml.Node, keys ...string) {
	drop := map[string]bool{}
	for _, k := range keys {
		drop[k] = true
	}
	var kept []*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		if !drop[m.Content[i].Value] {
			kept = append(kept, m.Content[i], m.Content[i+1])
		}
	}
	m.Content = kept
}

// emptyListMeans are the keys whose empty list is a setting of its own,
// unlike no entry (throttle.trusted_networks: [] is none, unset is the
// loopback networks).
var emptyListMeans = map[string]bool{"trusted_networks": true}

// prune removes, depth first, the mapping entries whose value is null,
// an empty string, an empty list or an empty mapping (what is left of a
// section with nothing set): decoding gives the same for them as for no
// entry, but for emptyListMeans.
func prune(n *yaml.Node) {
	for _, c := range n.Content {
		prune(c)
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	var kept []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		v := n.Content[i+1]
		empty := v.Tag == "!!null" ||
			v.Kind == yaml.ScalarNode && v.Tag == "!!str" && v.Value == "" ||
			v.Kind == yaml.MappingNode && len(v.Content) == 0 ||
			v.Kind == yaml.SequenceNode && len(v.Content) == 0 && !emptyListMeans[n.Content[i].Value]
		if !empty {
			kept = append(kept, n.Content[i], v)
		}
	}
	n.Content = kept
}
