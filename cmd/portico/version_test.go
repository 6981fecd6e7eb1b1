package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func buildInfo(version string, settings ...string) *debug.BuildInfo {
	bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/portico-mail/portico", Version: version}}
	for i := 0; i+1 < len(settings); i += 2 {
		bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
	}
	return bi
}

func TestBuildVersion(t *testing.T) {
	const rev = "b649f8fc1d73ff3f71a7cd73b46311d9d8e0f965"
	for _, c := range []struct {
		name           string
		bi             *debug.BuildInfo
		ldV, ldC       string
		version, shown string // version, commitString
	}{
		{"no build information", nil, "", "", "dev", "unknown"},
		{"go build without VCS stamping", buildInfo("(devel)"), "", "", "dev", "unknown"},
		{"tagged clean checkout", buildInfo("v1.2.3", "vcs", "git", "vcs.revision", rev, "vcs.modified", "false"), "", "", "v1.2.3", rev},
		{"between tags, modified tree", buildInfo("v0.0.0-20261203062824-b649f8fc1d73+dirty", "vcs.revision", rev, "vcs.modified", "true"), "", "",
			"v0.0.0-20261203062824-b649f8fc1d73+dirty", rev + "-modified"},
		{"go install module@version (no VCS settings)", buildInfo("v1.4.0"), "", "", "v1.4.0", "unknown"},
		{"ldflags override both", buildInfo("v1.2.3", "vcs.revision", rev, "vcs.modified", "true"), "1.2.3-1", "abc123", "1.2.3-1", "abc123"},
		{"ldflags override the version only", buildInfo("(devel)", "vcs.revision", rev, "vcs.modified", "true"), "1.0.0", "", "1.0.0", rev + "-modified"},
		{"empty revision", buildInfo("(devel)", "vcs.revision", ""), "", "", "dev", "unknown"},
	} {
		b := buildVersion(c.bi, c.ldV, c.ldC)
		if b.Version != c.version || b.commitString() != c.shown {
			t.Errorf("%s: version %q commit %q, want %q %q", c.name, b.Version, b.commitString(), c.version, c.shown)
		}
	}
}

// The real stamping: the toolchain records the module version and VCS
// settings when it builds from a git clone, and `portico version` shows
// them. Slow-ish (a build and a clone), so not in -short.
func TestVersionStampedFromGit(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git not installed")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	top, err := exec.Command(gitBin, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skip("not in a git checkout")
	}
	// A fresh clone of HEAD: worktrees and the caller's GOFLAGS may keep
	// the toolchain from stamping; a clone with -buildvcs=true does not.
	dir := t.TempDir()
	clone := filepath.Join(dir, "src")
	if out, err := exec.Command(gitBin, "clone", "-q", "--no-local", strings.TrimSpace(string(top)), clone).CombinedOutput(); err != nil {
		t.Skipf("git clone: %v\n%s", err, out)
	}
	rev, err := exec.Command(gitBin, "-C", clone, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "portico")
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/portico")
	build.Dir = clone
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=true")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(rev))
	line := string(out)
	// The clone is clean: a pseudo-version (or a tag), the full revision,
	// not marked modified.
	if !strings.HasPrefix(line, "portico v") || !strings.Contains(line, "(commit "+want+",") || strings.Contains(line, "modified") {
		t.Fatalf("portico version: %q; want a module version and commit %s", line, want)
	}
	// -ldflags still overrides.
	build = exec.Command(goBin, "build", "-o", bin, "-ldflags", "-X main.version=9.9.9 -X main.commit=feedface", "./cmd/portico")
	build.Dir = clone
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=true")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "portico 9.9.9 (commit feedface,") {
		t.Fatalf("portico version with -ldflags: %q %v", out, err)
	}
}
