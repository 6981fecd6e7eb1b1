package routing

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// RegexRule is one line of a Perdition regex popmap (popmap.re): a user
// whose name matches Pattern (POSIX extended syntax, leftmost-longest, no
// implicit anchors) is routed by Replace, "[newname@]server" with $1..$9
// replaced by the match's groups, server a backend id, the host or
// host:port of one backend, or pool:NAME. Rules are tried in order, the
// first match wins, after the exact user rules and before the domain
// rules. Source names the import that wrote the rule.
//
// The map stays a list of rules evaluated at each login rather than
// expanded into user rules when imported: a pattern names users nobody
// has listed yet (Perdition's regex map routes any name that matches),
// and a replacement can build the server or the backend login from the
// name ("(.*)@(.*): $1_$2@mail.$2").
type RegexRule struct {
	Pattern string `json:"pattern"`
	Replace string `json:"replace"`
	Source  string `json:"source,omitempty"`
}

// Bounds of a regex map (each rule costs a match at logins of users
// without an exact rule).
const (
	maxRegexRules = 10000
	maxRegexLen   = 1024
)

type regexRule struct {
	RegexRule
	re *regexp.Regexp
}

func compileRule(r RegexRule) (regexRule, error) {
	if r.Pattern == "" || len(r.Pattern) > maxRegexLen || len(r.Replace) > maxRegexLen || r.Replace == "" ||
		strings.ContainsAny(r.Replace, " \t\r\n\x00") {
		return regexRule{}, invalid("regex rule %q: want a pattern and a replacement of 1-%d bytes, the replacement without white space", r.Pattern, maxRegexLen)
	}
	if r.Source != "" && !ValidSource(r.Source) {
		return regexRule{}, invalid("regex rule %q: bad source %q", r.Pattern, r.Source)
	}
	re, err := regexp.CompilePOSIX(r.Pattern)
	if err != nil {
		return regexRule{}, invalid("regex rule %q: %v", r.Pattern, err)
	}
	return regexRule{RegexRule: r, re: re}, nil
}

// WithRegexMap returns the table with the regex rules of source replaced
// by rules, in their order (CmdSetRegexMap): a source's rules take the
// place of its first old rule, or go after every other rule if it had
// none. No rules removes the source's map.
func (t *Table) WithRegexMap(source string, rules []RegexRule) (*Table, error) {
	if !ValidSource(source) {
		return nil, invalid("regex map: bad source %q", source)
	}
	compiled := make([]regexRule, 0, len(rules))
	for _, r := range rules {
		r.Source = source
		c, err := compileRule(r)
		if err != nil {
			return nil, err
		}
		compiled = append(compiled, c)
	}
	var next []regexRule
	placed := false
	for _, r := range t.regex {
		if r.Source != source {
			next = append(next, r)
			continue
		}
		if !placed {
			next = append(next, compiled...)
			placed = true
		}
	}
	if !placed {
		next = append(next, compiled...)
	}
	if len(next) > maxRegexRules {
		return nil, invalid("regex map: %d rules, at most %d", len(next), maxRegexRules)
	}
	n := *t
	n.regex = next
	return &n, nil
}

// RegexMap returns the regex rules in the order they are tried.
func (t *Table) RegexMap() []RegexRule {
	out := make([]RegexRule, len(t.regex))
	for i, r := range t.regex {
		out[i] = r.RegexRule
	}
	return out
}

// matchRegex returns the substituted replacement of the first rule that
// matches user.
func (t *Table) matchRegex(user string) (RegexRule, string, bool) {
	for _, r := range t.regex {
		m := r.re.FindStringSubmatchIndex(user)
		if m == nil {
			continue
		}
		return r.RegexRule, expandDollar(r.Replace, user, m), true
	}
	return RegexRule{}, "", false
}

// expandDollar replaces $1..$9 in repl with the groups of a match of s
// (an unmatched group is empty); any other '$' is kept.
func expandDollar(repl, s string, m []int) string {
	var b strings.Builder
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c == '$' && i+1 < len(repl) && repl[i+1] >= '1' && repl[i+1] <= '9' {
			g := int(repl[i+1] - '0')
			if 2*g+1 < len(m) && m[2*g] >= 0 {
				b.WriteString(s[m[2*g]:m[2*g+1]])
			}
			i++
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// ParseServer reads "[newname@]server" as a popmap value names a rule's
// target: server is a backend id, the host or host:port of exactly one
// backend, or pool:NAME. The rename is split at the last '@' (a name may
// hold one, a host cannot).
func (t *Table) ParseServer(s string) (Target, error) {
	var tg Target
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		tg.Login, s = s[:at], s[at+1:]
		if tg.Login == "" {
			return tg, fmt.Errorf("empty name before '@' in %q", s)
		}
	}
	var err error
	tg.Backend, tg.Pool, err = t.ResolveServer(s)
	return tg, err
}

// ErrUnknownServer: ResolveServer found no backend with that id, host or
// host:port (a directory source may create one, as Perdition connects to
// any host its popmap names).
var ErrUnknownServer = errors.New("unknown server")

// ResolveServer maps a popmap server to a backend id (an id, or the host
// or host:port of exactly one backend) or, for "pool:NAME", a pool.
func (t *Table) ResolveServer(s string) (backend, pool string, err error) {
	if p, ok := strings.CutPrefix(s, "pool:"); ok {
		if t.pools[p] == nil {
			return "", "", fmt.Errorf("unknown pool %q", p)
		}
		return "", p, nil
	}
	if t.backends[s] != nil {
		return s, "", nil
	}
	var match []string
	for _, b := range t.backends {
		if b.Host == s || b.Addr(IMAP) == s || b.Addr(POP3) == s {
			match = append(match, b.ID)
		}
	}
	sort.Strings(match)
	switch len(match) {
	case 1:
		return match[0], "", nil
	case 0:
		return "", "", fmt.Errorf("%w %q (not a backend id, host or host:port)", ErrUnknownServer, s)
	}
	return "", "", fmt.Errorf("server %q matches several backends (%s); use a backend id", s, strings.Join(match, ", "))
}
