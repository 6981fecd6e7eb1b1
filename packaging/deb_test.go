package packaging

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The Debian package: built by deb/build.sh, checked with dpkg-deb and
// lintian, installed for real with dpkg into a throwaway root (maintainer
// scripts included, run with DPKG_ROOT), installed again as an upgrade,
// and purged. Root only: dpkg --root changes owners.
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: building the package takes a Go build")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: dpkg --root installs files with their owners")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "gzip", "bash", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// Build.
	outDir := t.TempDir()
	lines := strings.Split(strings.TrimSpace(run("deb/build.sh", "-o", outDir)), "\n")
	deb := lines[len(lines)-1]
	arch := strings.TrimSpace(run("dpkg", "--print-architecture"))
	m := regexp.MustCompile(`^portico_([0-9][A-Za-z0-9.+~]*-[A-Za-z0-9.+~]+)_` + arch + `\.deb$`).FindStringSubmatch(filepath.Base(deb))
	if filepath.Dir(deb) != outDir || m == nil {
		t.Fatalf("built %s, want %s/portico_VERSION_%s.deb", deb, outDir, arch)
	}
	version := m[1]

	// dpkg-deb: the control fields, and every file where it belongs.
	fields := run("dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends", "Section", "Maintainer")
	for _, want := range []string{"Package: portico\n", "Version: " + version + "\n", "Architecture: " + arch + "\n", "Depends: adduser\n", "Section: mail\n"} {
		if !strings.Contains(fields, want) {
			t.Errorf("control lacks %q:\n%s", strings.TrimSpace(want), fields)
		}
	}
	contents := run("dpkg-deb", "--contents", deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/portico",
		"-rw-r--r-- root/root .* ./usr/lib/systemd/system/portico.service",
		"-rw-r--r-- root/root .* ./usr/lib/sysusers.d/portico.conf",
		"-rw-r--r-- root/root .* ./usr/lib/sysctl.d/90-portico.conf",
		"-rw-r--r-- root/root .* ./usr/share/doc/portico/copyright",
		"-rw-r--r-- root/root .* ./usr/share/doc/portico/changelog.Debian.gz",
		"-rw-r--r-- root/root .* ./usr/share/doc/portico/examples/portico.yaml",
		"-rw-r--r-- root/root .* ./usr/share/man/man1/portico.1.gz",
		"-rw-r--r-- root/root .* ./usr/share/man/man1/portico-serve.1.gz",
		"-rw-r--r-- root/root .* ./usr/share/bash-completion/completions/portico",
		"-rw-r--r-- root/root .* ./usr/share/zsh/vendor-completions/_portico",
		"-rw-r--r-- root/root .* ./usr/share/lintian/overrides/portico",
	} {
		if !regexp.MustCompile(`(?m)^` + want + `$`).MatchString(contents) {
			t.Errorf("no %q in the package:\n%s", want, contents)
		}
	}
	if strings.Contains(contents, "./etc/") {
		t.Errorf("the package ships files in /etc (the service must not find a configuration it was not given):\n%s", contents)
	}
	control := run("dpkg-deb", "--info", deb)
	for _, s := range []string{"postinst", "prerm", "postrm", "md5sums"} {
		if !strings.Contains(control, " "+s) {
			t.Errorf("no %s in the control archive:\n%s", s, control)
		}
	}

	// lintian: no error, no warning (overrides carry their reasons).
	if lintian, err := exec.LookPath("lintian"); err == nil {
		out, err := exec.Command(lintian, "--fail-on", "error,warning", "--pedantic", deb).CombinedOutput()
		var tags []string
		for _, l := range strings.Split(string(out), "\n") {
			if regexp.MustCompile(`^[EWIP]: `).MatchString(l) {
				tags = append(tags, l)
			}
		}
		if err != nil || len(tags) > 0 {
			t.Errorf("lintian: %v\n%s", err, out)
		}
	} else if os.Getenv("PORTICO_REQUIRE_DOVECOT") == "1" {
		t.Error("lintian not installed (Debian package lintian; scripts/test.sh installs it)")
	} else {
		t.Log("lintian not installed: the package is not linted")
	}

	// Install into a throwaway root holding what a base system has there
	// (the user database), with the maintainer scripts run outside a
	// chroot against DPKG_ROOT.
	root := t.TempDir()
	for _, d := range []string{"etc", "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	dpkg := func(args ...string) string {
		t.Helper()
		// adduser, the fallback of systemd-sysusers, is not in the
		// throwaway root's package database: --force-depends.
		return run("dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-depends", "--log=/dev/null"}, args...)...)
	}
	out := dpkg("-i", deb)
	if !strings.Contains(out, "portico: not started. Write /etc/portico/portico.yaml") {
		t.Errorf("postinst did not say how to start the service:\n%s", out)
	}
	passwd := read(t, filepath.Join(root, "etc/passwd"))
	pw := regexp.MustCompile(`(?m)^portico:x:(\d+):(\d+):[^:]*:/var/lib/portico:(/usr/sbin/nologin|/bin/false)$`).FindStringSubmatch(passwd)
	if pw == nil {
		t.Fatalf("no portico user in /etc/passwd:\n%s", passwd)
	}
	if !regexp.MustCompile(`(?m)^portico:x:` + pw[2] + `:`).MatchString(read(t, filepath.Join(root, "etc/group"))) {
		t.Errorf("no portico group with gid %s", pw[2])
	}
	for _, c := range []struct {
		path     string
		mode     os.FileMode
		uid, gid string
	}{
		{"etc/portico", 0o750, "0", pw[2]},
		{"var/lib/portico", 0o700, pw[1], pw[2]},
	} {
		st := run("stat", "-c", "%a %u %g", filepath.Join(root, c.path))
		if want := strconv.FormatUint(uint64(c.mode), 8) + " " + c.uid + " " + c.gid; strings.TrimSpace(st) != want {
			t.Errorf("/%s: mode, uid, gid %q, want %q", c.path, strings.TrimSpace(st), want)
		}
	}
	// Not started, not enabled: nothing in /etc/systemd, and the unit does
	// not start without a configuration.
	if _, err := os.Stat(filepath.Join(root, "etc/systemd")); err == nil {
		t.Errorf("the package enabled something: %s", run("find", filepath.Join(root, "etc/systemd")))
	}
	if unit := read(t, filepath.Join(root, "usr/lib/systemd/system/portico.service")); !strings.Contains(unit, "\nConditionPathExists=/etc/portico/portico.yaml\n") {
		t.Error("the installed unit would start without /etc/portico/portico.yaml")
	}

	// What was installed works: the binary, its man pages, completions.
	bin := filepath.Join(root, "usr/bin/portico")
	ver := run(bin, "version")
	if !strings.HasPrefix(ver, "portico ") || !strings.Contains(ver, "(commit ") {
		t.Errorf("portico version: %q", ver)
	}
	if bv := strings.Fields(ver)[1]; bv == "dev" && version != "0.0.0~dev-1" || bv != "dev" && !strings.Contains(version, strings.TrimPrefix(strings.Split(bv, "-")[0], "v")) {
		t.Errorf("binary version %s, package version %s", bv, version)
	}
	run(bin, "check-config", "--help")
	if groff, err := exec.LookPath("groff"); err == nil {
		pages, _ := filepath.Glob(filepath.Join(root, "usr/share/man/man1/*.1.gz"))
		if len(pages) < 10 {
			t.Errorf("%d man pages", len(pages))
		}
		for _, p := range pages {
			cmd := exec.Command(groff, "-man", "-ww", "-z")
			cmd.Stdin = bytes.NewReader(gunzip(t, p))
			if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("groff %s: %v\n%s", filepath.Base(p), err, out)
			}
		}
	}
	if out := run("bash", "-c", "source "+filepath.Join(root, "usr/share/bash-completion/completions/portico")+" && complete -p portico"); !strings.Contains(out, "complete -F _portico portico") {
		t.Errorf("bash completion: %q", out)
	}
	if zsh, err := exec.LookPath("zsh"); err == nil {
		run(zsh, "-n", filepath.Join(root, "usr/share/zsh/vendor-completions/_portico"))
	}

	// Again, as an upgrade: the scripts are idempotent (one user).
	dpkg("-i", deb)
	if n := strings.Count(read(t, filepath.Join(root, "etc/passwd")), "\nportico:"); n != 1 {
		t.Errorf("%d portico users after a reinstall", n)
	}

	// Purge: the files, the data directory and the empty /etc/portico go;
	// the user stays (files elsewhere may be its).
	dpkg("--purge", "portico")
	for _, gone := range []string{"usr/bin/portico", "var/lib/portico", "etc/portico", "usr/lib/systemd/system/portico.service"} {
		if _, err := os.Stat(filepath.Join(root, gone)); err == nil {
			t.Errorf("/%s is left after purge", gone)
		}
	}
	if !strings.Contains(read(t, filepath.Join(root, "etc/passwd")), "\nportico:") {
		t.Error("purge removed the portico user")
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
