package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// completeBash runs the generated bash completion for each command line
// (words, the last one being completed) in one bash process and returns
// the candidates for each.
func completeBash(t *testing.T, dir string, lines [][]string) [][]string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	var script bytes.Buffer
	if err := bashCompletion(&script); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "portico.bash")
	if err := os.WriteFile(file, script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var drive strings.Builder
	drive.WriteString("set -u\nsource " + file + "\n")
	for _, words := range lines {
		drive.WriteString("COMP_WORDS=(")
		for _, w := range words {
			drive.WriteString(" '" + w + "'")
		}
		drive.WriteString(")\nCOMP_CWORD=" + strconv.Itoa(len(words)-1) + "\n_portico\n" +
			"printf '%s\\n' \"${COMPREPLY[@]}\"\necho '<end>'\n")
	}
	cmd := exec.Command(bash, "--norc", "--noprofile", "-c", drive.String())
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("bash: %v\n%s", err, stderr.String())
	}
	var res [][]string
	var cur []string
	for _, l := range strings.Split(string(out), "\n") {
		switch l {
		case "<end>":
			sort.Strings(cur)
			res = append(res, cur)
			cur = nil
		case "":
		default:
			cur = append(cur, l)
		}
	}
	if len(res) != len(lines) {
		t.Fatalf("%d answers for %d lines:\n%s", len(res), len(lines), out)
	}
	return res
}

func TestBashCompletion(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "portico.yaml"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "users.popmap"), nil, 0o644)
	os.Mkdir(filepath.Join(dir, "certs"), 0o755)
	cases := []struct {
		words []string
		want  string
	}{
		{[]string{"portico", "co"}, "completion"},
		{[]string{"portico", "backend", ""}, "delete disable drain enable get list set"},
		{[]string{"portico", "tls", "cert", ""}, "create show"},
		{[]string{"portico", "backend", "set", "--t"}, "--tls --tls-ca-file --tls-insecure-skip-verify --tls-server-name --token --token-file"},
		{[]string{"portico", "backend", "set", "--tls", ""}, "implicit none starttls"},
		{[]string{"portico", "backend", "set", "b1", "--forward", "p"}, "proxy"},
		{[]string{"portico", "backend", "set", "--tls", "="}, "implicit none starttls"},
		{[]string{"portico", "backend", "set", "--tls", "=", "st"}, "starttls"},
		{[]string{"portico", "serve", "--config", ""}, "certs portico.yaml users.popmap"},
		{[]string{"portico", "serve", "--config", "p"}, "portico.yaml"},
		{[]string{"portico", "tls", "ca", "create", "--dir", ""}, "certs"},
		{[]string{"portico", "import", "u"}, "users.popmap"},
		{[]string{"portico", "completion", ""}, "bash zsh"},
		{[]string{"portico", "backend", "set", "--host", ""}, ""},
		{[]string{"portico", "status", "--admin", ""}, ""},
	}
	var lines [][]string
	for _, c := range cases {
		lines = append(lines, c.words)
	}
	// Every command's flags, exactly.
	leaves := root.leaves()
	for _, l := range leaves {
		lines = append(lines, append(strings.Fields(l.path()), "--"))
	}
	got := completeBash(t, dir, lines)
	for i, c := range cases {
		if strings.Join(got[i], " ") != c.want {
			t.Errorf("%q: %q, want %q", c.words, strings.Join(got[i], " "), c.want)
		}
	}
	for i, l := range leaves {
		fs, _ := l.flags()
		want := []string{"--help"}
		fs.VisitAll(func(f *flag.Flag) { want = append(want, "--"+f.Name) })
		sort.Strings(want)
		if g := got[len(cases)+i]; strings.Join(g, " ") != strings.Join(want, " ") {
			t.Errorf("%s --<TAB>: %v, want %v", l.path(), g, want)
		}
	}
}

// The zsh script parses, and has a function for every command, and every
// flag of every command in that function.
func TestZshCompletion(t *testing.T) {
	var script bytes.Buffer
	if err := zshCompletion(&script); err != nil {
		t.Fatal(err)
	}
	s := script.String()
	if !strings.HasPrefix(s, "#compdef portico\n") {
		t.Error("no #compdef line")
	}
	root.walk(func(c *command) {
		i := strings.Index(s, "\n"+zshName(c)+"() {\n")
		if i < 0 {
			t.Errorf("no function %s", zshName(c))
			return
		}
		body := s[i:]
		body = body[:strings.Index(body, "\n}\n")]
		if c.setup == nil {
			for _, sub := range c.subs {
				if !strings.Contains(body, "\t"+sub.name+") "+zshName(sub)+" ;;") {
					t.Errorf("%s: no dispatch to %s", zshName(c), sub.name)
				}
			}
			return
		}
		fs, _ := c.flags()
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.Contains(body, "'--"+f.Name+"[") && !strings.Contains(body, "'--"+f.Name+"=[") {
				t.Errorf("%s: no --%s", zshName(c), f.Name)
			}
		})
	})
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Log("zsh not installed: syntax not checked")
		return
	}
	file := filepath.Join(t.TempDir(), "_portico")
	if err := os.WriteFile(file, script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(zsh, "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}

	// Typed into an interactive zsh (in a pseudo-terminal, with compinit
	// and the script in $fpath): Tab lists the candidates.
	cases := []struct {
		line string
		want []string // words listed
		not  []string
	}{
		{"portico backend set --t", []string{"--tls", "--tls-ca-file", "--tls-server-name", "--token-file"}, []string{"--host"}},
		{"portico backend set --tls ", []string{"implicit", "none", "starttls"}, nil},
		{"portico completion ", []string{"bash", "zsh"}, nil},
		{"portico tls cert ", []string{"create", "show"}, []string{"ca"}},
		{"portico route lookup alice --protocol ", []string{"imap", "pop3"}, nil},
		{"portico ", []string{"backend", "serve", "proxy", "completion", "man", "vip"}, nil},
	}
	driver := filepath.Join(t.TempDir(), "drive.zsh")
	os.WriteFile(driver, []byte(zshDriver), 0o644)
	args := []string{"-f", driver, filepath.Dir(file)}
	for _, c := range cases {
		args = append(args, c.line)
	}
	cmd := exec.Command(zsh, args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("zsh driver: %v\n%s", err, out)
	}
	answers := strings.Split(string(out), "<end>")
	if len(answers) < len(cases) {
		t.Fatalf("%d answers for %d lines:\n%s", len(answers), len(cases), out)
	}
	for i, c := range cases {
		words := map[string]bool{}
		// The candidates are on the lines under the echoed command line.
		lines := strings.Split(answers[i], "\n")
		for _, l := range lines[min(2, len(lines)):] {
			for _, w := range strings.Fields(l) {
				words[w] = true
			}
		}
		for _, w := range c.want {
			if !words[w] {
				t.Errorf("zsh %q: %s not offered:\n%s", c.line, w, answers[i])
			}
		}
		for _, w := range c.not {
			if words[w] {
				t.Errorf("zsh %q: %s offered:\n%s", c.line, w, answers[i])
			}
		}
	}
}

// zshDriver types each argument (after the first, a directory for
// $fpath) and a Tab into an interactive zsh in a pseudo-terminal, and
// prints what zsh showed, then "<end>".
const zshDriver = `zmodload zsh/zpty || exit 1
fdir=$1; shift
zpty z 'stty rows 100 columns 200; TERM=dumb zsh -f -i'
zpty -w z 'PS1="%% "; fpath=('$fdir' $fpath); autoload -Uz compinit; compinit -u -D; zstyle ":completion:*" list-prompt ""; zstyle ":completion:*" menu no; setopt autolist nolistbeep; print READY'
zpty -r z line '*READY*'
zpty -r z line '*READY*'
for l in "$@"; do
	zpty -w -n z "$l"$'\t'
	out= quiet=0
	for i in {1..100}; do
		sleep 0.05
		got=
		while zpty -r -t z chunk; do got+=$chunk; done
		out+=$got
		if [[ -z $got && -n $out ]]; then
			(( ++quiet >= 4 )) && break
		else
			quiet=0
		fi
	done
	print -r -- "$out" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
	print -- '<end>'
	zpty -w -n z $'\x15'
	sleep 0.05
	while zpty -r -t z chunk; do :; done
done
zpty -d z
`

// The man pages: one per top-level command and portico(1), every flag of
// every command on its page, and groff finds nothing to warn about.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if code, _, errOut := runCLI(t, "man", "--dir", dir); code != 0 {
		t.Fatalf("portico man --dir: %d %s", code, errOut)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	top := read("portico.1")
	for _, c := range root.subs {
		page := read(manName(c) + ".1")
		if !strings.Contains(top, ".BR "+manName(c)+" (1)") {
			t.Errorf("portico(1) does not refer to %s(1)", manName(c))
		}
		for _, l := range c.leaves() {
			if !strings.Contains(top, `\fB`+l.path()+`\fR`) || !strings.Contains(page, `\fB`+l.path()+`\fR`) {
				t.Errorf("%s: not in portico(1) and %s(1)", l.path(), manName(c))
			}
			own, adm := flagDocs(l)
			for _, f := range own {
				if !strings.Contains(page, roffFlag(f.name)) {
					t.Errorf("%s(1): no %s of %s", manName(c), f.name, l.path())
				}
			}
			for _, f := range adm {
				if !strings.Contains(top, roffFlag(f.name)) {
					t.Errorf("portico(1): no admin flag %s", f.name)
				}
			}
		}
	}
	// One page to stdout.
	if code, out, _ := runCLI(t, "man", "vip"); code != 0 || !strings.Contains(out, ".TH PORTICO-VIP 1") {
		t.Errorf("portico man vip: %d %.80q", code, out)
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Log("groff not installed: pages not rendered")
		return
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	for _, f := range files {
		out, err := exec.Command(groff, "-man", "-ww", "-z", f).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff %s: %v\n%s", filepath.Base(f), err, out)
		}
	}
}
