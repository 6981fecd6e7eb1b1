// Command portico is a high-availability IMAP/POP3 proxy.
//
//	portico serve --config FILE         run a node
//	portico check-config --config FILE  validate a configuration file
//	portico proxy --from URL... --to URL...  run without a config file
//	portico version
//
// The commands form a tree (cli.go) that each file adds to; `portico
// --help`, `portico COMMAND --help`, the shell completions (`portico
// completion bash|zsh`) and the man pages (`portico man`) are generated
// from it.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/portico-mail/portico/ops/daemon"
)

func init() {
	register(&command{name: "version", summary: "print the version and commit of this binary",
		about: "The version and commit come from the build information the Go toolchain records " +
			"(the module version, from the repository's tags, and the VCS revision); " +
			"-ldflags \"-X main.version=... -X main.commit=...\" overrides them. " +
			"The same values are in portico status and the portico_build_info metric.",
		setup: func(*flag.FlagSet) func([]string) error {
			return func([]string) error { fmt.Println(currentBuild()); return nil }
		}})
}

func main() {
	link()
	b := currentBuild()
	daemon.Version, daemon.Commit = b.Version, b.commitString()
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}
