package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
)

// A command is a node of the CLI's command tree: a group of subcommands
// (subs) or a leaf that runs (setup). Everything about a command is
// declared here once: `--help`, the shell completions (completion.go) and
// the man pages (man.go) are generated from the tree.
type command struct {
	name string
	// args is the synopsis of the positional arguments: words, [optional]
	// ones, alternatives a|b, and WORD... for one or more. The count given
	// is checked against it before the command runs.
	args    string
	summary string // one line, lower case, no final period
	about   string // optional paragraphs for --help and the man page
	subs    []*command
	// setup declares the command's flags on fs and returns the function
	// that runs it with the positional arguments.
	setup func(fs *flag.FlagSet) func(args []string) error
	// argFiles: the positional arguments are file names (for completion).
	argFiles bool

	parent *command
}

// root is the portico command; files add their commands with register.
var root = &command{
	name:    "portico",
	summary: "a high-availability IMAP/POP3 proxy",
	about: "Commands that use a node's admin API take --admin host:port or https://host:port, " +
		"--token or --token-file, --ca FILE (to verify https), --json, and --config FILE to take " +
		"all of these from the node's configuration file (environment: PORTICO_ADMIN, PORTICO_TOKEN, " +
		"PORTICO_CA, PORTICO_CONFIG). A token is not sent over plain http to another host " +
		"without --insecure-http.",
}

// register adds a top-level command.
func register(c *command) { root.subs = append(root.subs, c) }

// link sets the parent pointers and sorts the top-level commands by name
// (files register them in any order; groups keep their declared order).
func link() {
	sort.Slice(root.subs, func(i, j int) bool { return root.subs[i].name < root.subs[j].name })
	var walk func(c *command)
	walk = func(c *command) {
		for _, s := range c.subs {
			s.parent = c
			walk(s)
		}
	}
	walk(root)
}

// path is the command line that names c: "portico backend set".
func (c *command) path() string {
	if c.parent == nil {
		return c.name
	}
	return c.parent.path() + " " + c.name
}

func (c *command) sub(name string) *command {
	for _, s := range c.subs {
		if s.name == name {
			return s
		}
	}
	return nil
}

// leaves returns the runnable commands under c, depth first, in order.
func (c *command) leaves() []*command {
	if c.setup != nil {
		return []*command{c}
	}
	var out []*command
	for _, s := range c.subs {
		out = append(out, s.leaves()...)
	}
	return out
}

// flags returns a leaf's flag set, declared but not parsed.
func (c *command) flags() (*flag.FlagSet, func([]string) error) {
	fs := flag.NewFlagSet(c.path(), flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and help are printed by execute
	run := c.setup(fs)
	return fs, run
}

// synopsis is the usage line without "Usage: ".
func (c *command) synopsis() string {
	s := c.path()
	if c.parent == nil {
		return s + " COMMAND [flags] [arguments]"
	}
	if c.setup == nil {
		names := make([]string, len(c.subs))
		for i, x := range c.subs {
			names[i] = x.name
		}
		return s + " " + strings.Join(names, "|") + " ..."
	}
	fs, _ := c.flags()
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		s += " [flags]"
	}
	if c.args != "" {
		s += " " + c.args
	}
	return s
}

// argRange is how many positional arguments the synopsis allows (max -1:
// any number).
func (c *command) argRange() (min, max int) {
	for _, w := range strings.Fields(c.args) {
		optional := strings.HasPrefix(w, "[")
		many := strings.HasSuffix(strings.TrimSuffix(w, "]"), "...")
		if !optional {
			min++
		}
		if many {
			max = -1
		} else if max >= 0 {
			max++
		}
	}
	return min, max
}

// help is the text of `portico ... --help`: the command's synopsis and
// its own flags (a group lists its subcommands).
func (c *command) help() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n\n", c.synopsis())
	if c.parent == nil {
		fmt.Fprintf(&b, "Portico, %s.\n", c.summary)
	} else {
		fmt.Fprintf(&b, "%s.\n", capitalize(c.summary))
	}
	if c.about != "" {
		b.WriteString("\n" + wrap(c.about, 78, "") + "\n")
	}
	if c.setup == nil {
		b.WriteString("\nCommands:\n")
		w := 0
		for _, s := range c.subs {
			w = max(w, len(s.name))
		}
		for _, s := range c.subs {
			fmt.Fprintf(&b, "  %-*s  %s\n", w, s.name, s.summary)
		}
		fmt.Fprintf(&b, "\nRun \"%s COMMAND --help\" for a command's flags.\n", c.path())
		return b.String()
	}
	own, adm := flagDocs(c)
	if len(own) > 0 {
		b.WriteString("\nFlags:\n")
		for _, f := range own {
			b.WriteString(f.text())
		}
	}
	if len(adm) > 0 {
		b.WriteString("\nAdmin API flags (see \"portico --help\"):\n")
		for _, f := range adm {
			b.WriteString(f.text())
		}
	}
	return b.String()
}

// flagDoc is one flag as the help, completions and man pages show it.
type flagDoc struct {
	name, arg, usage, def string
	bool                  bool
	choices               []string
	path                  pathKind
}

func (f flagDoc) text() string {
	s := "  --" + f.name
	if f.arg != "" {
		s += " " + f.arg
	}
	s += "\n"
	u := f.usage
	if f.def != "" {
		u += " (default " + f.def + ")"
	}
	return s + wrap(u, 78, "        ") + "\n"
}

// flagDocs returns a leaf's flags: its own, and the admin API client's
// (clientFlags), each sorted by name.
func flagDocs(c *command) (own, adm []flagDoc) {
	fs, _ := c.flags()
	api := isAPIClient(fs)
	fs.VisitAll(func(f *flag.Flag) {
		d := flagDoc{name: f.Name}
		arg, usage := flag.UnquoteUsage(f)
		d.usage = usage
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			d.bool = true
		} else {
			d.arg = strings.ToUpper(arg)
			if d.arg == "STRING" || d.arg == "VALUE" {
				d.arg = "VALUE"
			}
		}
		switch v := f.Value.(type) {
		case *choice:
			d.choices = v.values
			d.arg = strings.Join(v.values, "|")
		case *pathValue:
			d.path = v.kind
			d.arg = strings.ToUpper(string(v.kind))
		}
		if !isZeroDefault(f) {
			d.def = f.DefValue
		}
		if api && clientFlagNames[f.Name] {
			adm = append(adm, d)
		} else {
			own = append(own, d)
		}
	})
	return own, adm
}

// isAPIClient reports whether a command's flags are those of an admin API
// client (clientFlags).
func isAPIClient(fs *flag.FlagSet) bool { return fs.Lookup("insecure-http") != nil }

// isZeroDefault reports whether a flag's default is its type's zero value
// (not worth printing), as the flag package decides it.
func isZeroDefault(f *flag.Flag) bool {
	if f.DefValue == "" || f.DefValue == "[]" {
		return true
	}
	typ := reflect.TypeOf(f.Value)
	var z reflect.Value
	if typ.Kind() == reflect.Pointer {
		z = reflect.New(typ.Elem())
	} else {
		z = reflect.Zero(typ)
	}
	if v, ok := z.Interface().(flag.Value); ok {
		defer func() { _ = recover() }() // a Value whose String needs its fields set
		return f.DefValue == v.String()
	}
	return false
}

// usageError is a wrong number of arguments or a bad flag: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// execute runs the command line args (without the program name) and
// returns the exit status. Help goes to stdout, errors to stderr.
func execute(args []string, stdout, stderr io.Writer) int {
	c := root
	for c.setup == nil {
		if len(args) == 0 {
			fmt.Fprint(stderr, c.help())
			return 2
		}
		a := args[0]
		switch {
		case a == "-h" || a == "--help" || a == "-help":
			fmt.Fprint(stdout, c.help())
			return 0
		case a == "help" && c == root:
			// portico help backend set
			t := root
			for _, w := range args[1:] {
				if t = t.sub(w); t == nil {
					fmt.Fprintf(stderr, "portico: no command %q\n", strings.Join(args[1:], " "))
					return 2
				}
			}
			fmt.Fprint(stdout, t.help())
			return 0
		case (a == "--version" || a == "-v") && c == root:
			a = "version"
		}
		next := c.sub(a)
		if next == nil {
			fmt.Fprintf(stderr, "%s: unknown command %q\n\n%s", c.path(), a, c.help())
			return 2
		}
		c, args = next, args[1:]
	}
	fs, run := c.flags()
	pos, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, c.help())
		return 0
	}
	if err == nil {
		min, max := c.argRange()
		if len(pos) < min || max >= 0 && len(pos) > max {
			err = fmt.Errorf("usage: %s", c.synopsis())
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\nRun \"%s --help\" for its flags.\n", c.path(), err, c.path())
		return 2
	}
	if err := run(pos); err != nil {
		fmt.Fprintf(stderr, "portico: %v\n", err)
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// parseArgs parses flags anywhere among the arguments (so that
// "route set alice --backend imap3" works) and returns the positionals.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// choice is a string flag with a fixed set of values: checked when set,
// offered by the shell completions.
type choice struct {
	p      *string
	values []string
}

func choiceVar(fs *flag.FlagSet, p *string, name, def string, values []string, usage string) {
	*p = def
	fs.Var(&choice{p: p, values: values}, name, usage)
}

func (c *choice) String() string {
	if c == nil || c.p == nil {
		return ""
	}
	return *c.p
}

func (c *choice) Set(v string) error {
	for _, x := range c.values {
		if v == x {
			*c.p = v
			return nil
		}
	}
	return fmt.Errorf("%q is not one of %s", v, strings.Join(c.values, ", "))
}

// pathKind says what a flag's value names, for the shell completions.
type pathKind string

const (
	fileArg pathKind = "file"
	dirArg  pathKind = "dir"
)

// pathValue is a string flag that names a file or a directory.
type pathValue struct {
	p    *string
	kind pathKind
}

func pathVar(fs *flag.FlagSet, p *string, kind pathKind, name, def, usage string) {
	*p = def
	fs.Var(&pathValue{p: p, kind: kind}, name, usage)
}

func (v *pathValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return *v.p
}

func (v *pathValue) Set(s string) error { *v.p = s; return nil }

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// wrap fills text to width, each line starting with indent; newlines in
// text start new lines.
func wrap(text string, width int, indent string) string {
	var out []string
	for _, para := range strings.Split(text, "\n") {
		line := indent
		for _, w := range strings.Fields(para) {
			if len(line) > len(indent) && len(line)+1+len(w) > width {
				out = append(out, line)
				line = indent
			}
			if len(line) > len(indent) {
				line += " "
			}
			line += w
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}
