package routing

import (
	"strings"
	"unicode/utf8"
)

// ValidSource reports whether s can name an import source (the tag that
// an import writes on its user rules): 1-128 bytes of UTF-8 without
// control characters, typically the imported file's name.
func ValidSource(s string) bool {
	if s == "" || len(s) > 128 || !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// WithImport returns the table with the user rules of one import source
// written and some of its rules pruned, all or nothing (CmdImport):
//
//   - every rule in puts is written with Source set to source (whatever
//     the rule said), so a later import of the same source can prune it;
//     source "" writes untagged rules (like the API's), which allows a
//     rename (Target.Login) on a rule written outside an import;
//   - every user in prune is removed only if the table's rule for it is
//     still tagged with source: a rule that the API, the configuration
//     file or another import wrote since (which re-tags it) is kept.
//     The decision is taken when the command is applied, on the table it
//     is applied to, so a write that raced with the import wins.
//
// Pruning needs a source; a user both put and pruned is invalid.
func (t *Table) WithImport(source string, puts []UserRoute, prune []string) (*Table, error) {
	if source != "" && !ValidSource(source) {
		return nil, invalid("bad import source %q", source)
	}
	if source == "" && len(prune) > 0 {
		return nil, invalid("import: pruning needs a source")
	}
	ups, err := t.userPuts(puts, &source)
	if err != nil {
		return nil, err
	}
	var dels []string
	if len(prune) > 0 {
		put := make(map[string]bool, len(ups))
		for _, p := range ups {
			put[p.key] = true
		}
		for _, u := range prune {
			key := NormalizeUser(u)
			if put[key] {
				return nil, invalid("import: user %s both written and pruned", key)
			}
			// Not written by this command: its rule is t's.
			if tg, ok := t.users.get(key); ok && tg.Source == source {
				dels = append(dels, key)
			}
		}
	}
	// The puts and the prunes in one update: a shard that both touch
	// is copied once.
	n := *t
	n.users = t.users.update(ups, dels)
	return &n, nil
}
