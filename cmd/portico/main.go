// Command portico is a high-availability IMAP/POP3 proxy.
//
//	portico serve --config FILE         run a node
//	portico check-config --config FILE  validate a configuration file
//	portico proxy --from URL... --to URL...  run without a config file
//	portico version
package main

import (
	"fmt"
	"os"
)

// Set by the build (-ldflags "-X main.version=... -X main.commit=...").
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `Portico, a high-availability IMAP/POP3 proxy.

Usage:
  portico serve --config FILE          run a node from a configuration file
  portico check-config --config FILE   validate a configuration file and exit
  portico proxy --from URL... --to URL... [--cert FILE --key FILE] [--allow-plaintext]
                                       run a proxy for one backend without a file
  portico version                      print the version

Run "portico COMMAND --help" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = cmdServe(args)
	case "check-config":
		err = cmdCheckConfig(args)
	case "proxy":
		err = cmdProxy(args)
	case "version", "--version", "-v":
		fmt.Printf("portico %s (commit %s)\n", version, commit)
	case "help", "--help", "-h":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "portico: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "portico: %v\n", err)
		os.Exit(1)
	}
}
