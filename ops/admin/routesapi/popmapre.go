package routesapi

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// The regex popmap, Perdition's popmap.re: "<regex>[:] <substitution>" a
// line. Following Perdition's documented syntax:
//
//   - white space ends the regex (escape or quote it to use it there); a
//     single ':' closing the regex is dropped; the substitution is the
//     rest of the line;
//   - '#' starts a comment (unless escaped or quoted); blank lines are
//     skipped; a '\' before a newline joins the lines;
//   - inside '...' every character is literal, inside "..." every
//     character but '"';
//   - a '\' before white space, '#', a quote or a newline makes it
//     literal. Before any other character the pair is kept as it is, so
//     that "^john\.smith$" means to the regex what it says (a literal dot);
//     "\\" is a literal backslash to the regex.
//
// The regex is POSIX extended (routing.RegexRule).

// parsePopmapRE reads a regex popmap.
func parsePopmapRE(b []byte) ([]routing.RegexRule, error) {
	text := strings.ReplaceAll(string(b), "\r\n", "\n")
	var rules []routing.RegexRule
	line, next := 1, 1
	for len(text) > 0 && len(rules) <= maxRegexRulesIn {
		line = next
		// One logical line: up to a newline not preceded by a backslash.
		var logical strings.Builder
		for {
			nl := strings.IndexByte(text, '\n')
			var phys string
			if nl < 0 {
				phys, text = text, ""
			} else {
				phys, text = text[:nl], text[nl+1:]
				next++
			}
			if len(phys) > source.MaxPopmapLine {
				return nil, fmt.Errorf("line %d: longer than %d bytes", next-1, source.MaxPopmapLine)
			}
			if strings.HasSuffix(phys, "\\") && !strings.HasSuffix(phys, "\\\\") && nl >= 0 {
				logical.WriteString(phys[:len(phys)-1])
				continue
			}
			logical.WriteString(phys)
			break
		}
		re, sub, err := splitRERule(logical.String())
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", line, err)
		}
		if re == "" && sub == "" {
			continue
		}
		if re == "" || sub == "" {
			return nil, fmt.Errorf("line %d: want \"<regex>[:] <substitution>\"", line)
		}
		rules = append(rules, routing.RegexRule{Pattern: re, Replace: sub})
	}
	if len(rules) > maxRegexRulesIn {
		return nil, fmt.Errorf("more than %d rules", maxRegexRulesIn)
	}
	return rules, nil
}

// maxRegexRulesIn bounds a regex popmap (the table holds at most 10,000
// rules in all).
const maxRegexRulesIn = 10000

// splitRERule tokenises one logical line into the regex and the
// substitution (both empty for a blank or comment line).
func splitRERule(s string) (re, sub string, err error) {
	var out [2]strings.Builder
	field := 0
	plainColon := false // the regex's last character is an unquoted, unescaped ':'
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '#':
			i = len(s)
		case c == '\\' && i+1 < len(s):
			n := s[i+1]
			if !strings.ContainsRune(" \t#'\"", rune(n)) {
				out[field].WriteByte('\\')
			}
			out[field].WriteByte(n)
			i++
			plainColon = false
		case c == '\'' || c == '"':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return "", "", fmt.Errorf("unterminated %c quote", c)
			}
			out[field].WriteString(s[i+1 : i+1+end])
			i += end + 1
			plainColon = false
		case c == ' ' || c == '\t':
			if field == 0 && out[0].Len() > 0 {
				field = 1
			} else if field == 1 && out[1].Len() > 0 {
				out[1].WriteByte(c)
			}
		default:
			out[field].WriteByte(c)
			if field == 0 {
				plainColon = c == ':'
			}
		}
	}
	re, sub = out[0].String(), strings.TrimSpace(out[1].String())
	if plainColon {
		re = re[:len(re)-1]
	}
	return re, sub, nil
}

// writePopmapRE writes rules as a regex popmap that parsePopmapRE reads
// back as the same rules: a pattern with white space, '#', a quote, a
// backslash or a ':' is written in single quotes, or in double quotes if
// it holds a single quote (one holding both cannot be written).
func writePopmapRE(w io.Writer, rules []routing.RegexRule) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("# <regex>[:] <substitution> (portico export)\n")
	for _, r := range rules {
		p := r.Pattern
		if strings.ContainsAny(p, " \t#\"'\\:\n\r") {
			switch {
			case strings.ContainsAny(p, "\n\r"):
				return fmt.Errorf("regex %q cannot be written to a popmap.re", p)
			case !strings.Contains(p, "'"):
				p = "'" + p + "'"
			case !strings.Contains(p, "\""):
				p = "\"" + p + "\""
			default:
				return fmt.Errorf("regex %q (with both quotes) cannot be written to a popmap.re", p)
			}
		}
		if strings.ContainsAny(r.Replace, " \t#\"'\\\n\r") {
			return fmt.Errorf("substitution %q cannot be written to a popmap.re", r.Replace)
		}
		fmt.Fprintf(bw, "%s: %s\n", p, r.Replace)
	}
	return bw.Flush()
}
