// Command portico is a high-availability IMAP/POP3 proxy.
//
//	portico serve --config FILE         run a node
//	portico check-config --config FILE  validate a configuration file
//	portico proxy --from URL... --to URL...  run without a config file
//	portico version
//
// Further subcommands (admin API clients) register themselves in the
// commands table from their own files.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/portico-mail/portico/ops/daemon"
)

// command is a subcommand.
type command struct {
	summary string // one line for the usage text
	run     func(args []string) error
}

// commands maps subcommand names to their implementation; files add to it
// in init functions.
var commands = map[string]command{
	"serve":        {"serve --config FILE            run a node from a configuration file", cmdServe},
	"check-config": {"check-config --config FILE     validate a configuration file and exit", cmdCheckConfig},
	"proxy":        {"proxy --from URL... --to URL... [--cert F --key F] [--allow-plaintext]\n                                 run a proxy for one backend without a file", cmdProxy},
	"version":      {"version                        print the version", func([]string) error { fmt.Println(currentBuild()); return nil }},
}

func usage() string {
	var b strings.Builder
	b.WriteString("Portico, a high-availability IMAP/POP3 proxy.\n\nUsage:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  portico %s\n", commands[n].summary)
	}
	b.WriteString("\nCommands that use a node's admin API take --admin host:port or https://host:port,\n" +
		"--token or --token-file, --ca FILE (to verify https), --json, and --config FILE to take\n" +
		"all of these from the node's configuration file (env PORTICO_ADMIN, PORTICO_TOKEN,\n" +
		"PORTICO_CA, PORTICO_CONFIG). A token is not sent over plain http to another host\n" +
		"without --insecure-http.\n")
	b.WriteString("\nRun \"portico COMMAND --help\" for a command's flags.\n")
	return b.String()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage())
		os.Exit(2)
	}
	b := currentBuild()
	daemon.Version, daemon.Commit = b.Version, b.commitString()
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "help", "--help", "-h":
		fmt.Print(usage())
		return
	case "--version", "-v":
		name = "version"
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "portico: unknown command %q\n\n%s", name, usage())
		os.Exit(2)
	}
	if err := cmd.run(args); err != nil {
		fmt.Fprintf(os.Stderr, "portico: %v\n", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
