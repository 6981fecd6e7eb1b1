package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Overrides only: the binary knows its own version and commit from the
// build information the Go toolchain records (see buildVersion). A
// packager whose build has no VCS information (a source tarball) sets them:
//
//	go build -ldflags "-X main.version=1.2.3 -X main.commit=abc123" ./cmd/portico
var (
	version string
	commit  string
)

// build identifies the running binary.
type build struct {
	Version  string // module version: a tag (v1.2.3), a pseudo-version, or "dev"
	Commit   string // VCS revision, or "unknown"
	Modified bool   // built from a work tree with uncommitted changes
}

// commitString is the commit as shown everywhere (portico version,
// portico status, the portico_build_info metric): the revision, marked
// when the work tree had local changes.
func (b build) commitString() string {
	if b.Modified {
		return b.Commit + "-modified"
	}
	return b.Commit
}

// buildVersion works out the version and commit from the toolchain's
// build information (bi; nil when there is none): the main module's
// version, which go build stamps from the repository's tags (v1.2.3, or a
// pseudo-version such as v0.0.0-20250101120000-abcdef123456 between tags,
// with +dirty for a modified tree), and the vcs.revision and vcs.modified
// settings. -ldflags values, when set, override them.
func buildVersion(bi *debug.BuildInfo, ldVersion, ldCommit string) build {
	b := build{Version: "dev", Commit: "unknown"}
	if bi != nil {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			b.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if s.Value != "" {
					b.Commit = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if ldVersion != "" {
		b.Version = ldVersion
	}
	if ldCommit != "" {
		// The override names the commit; whether the tree the toolchain
		// saw was modified says nothing about it.
		b.Commit, b.Modified = ldCommit, false
	}
	return b
}

// currentBuild is this binary's build.
func currentBuild() build {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return buildVersion(bi, version, commit)
}

// String is the line `portico version` prints.
func (b build) String() string {
	return fmt.Sprintf("portico %s (commit %s, %s)", b.Version, b.commitString(), runtime.Version())
}
