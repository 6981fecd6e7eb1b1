package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
	"github.com/portico-mail/portico/ops/upgrade"
	"github.com/portico-mail/portico/routing"
)

func init() {
	register(&command{name: "serve", summary: "run a node from a configuration file", setup: setupServe,
		about: "Runs until SIGTERM or SIGINT (drain, then exit 0). SIGHUP re-reads the file; " +
			"SIGUSR2 starts an in-place upgrade to the binary now at the same path."})
	register(&command{name: "check-config", summary: "validate a configuration file and exit", setup: setupCheckConfig,
		about: "Checks the file as serve would (certificates, routing table) without serving; " +
			"problems are reported with their line. Settings that decide where users land and must be the same " +
			"on every node (routes.hash_key, routes.master_user_separator) are noted."})
	register(&command{name: "proxy", summary: "run a proxy for one backend without a configuration file", setup: setupProxy,
		about: "Listeners and backends are URLs with the schemes curl uses: --from imap://ADDR, imaps://, " +
			"pop3://, pop3s://, sieve:// (ManageSieve), submission:// (587), submissions:// (465); --to imap://HOST:PORT and so on. Each --from protocol goes to the --to of the same protocol."})
}

func setupServe(fs *flag.FlagSet) func([]string) error {
	var path, pprofAddr string
	pathVar(fs, &path, fileArg, "config", "", "configuration file (YAML): required")
	fs.StringVar(&pprofAddr, "pprof", "", "serve Go profiling endpoints (/debug/pprof/) on this `address`, e.g. 127.0.0.1:6060")
	return func([]string) error {
		if path == "" {
			return usageError{"serve: --config FILE is required"}
		}
		// Started by an in-place upgrade: the old process waits for this one.
		h, err := upgrade.Inherited()
		if err != nil {
			return err
		}
		fail := func(err error) error {
			if h != nil {
				h.Fail(err)
			}
			return err
		}
		cfg, err := config.Load(path)
		if err != nil {
			return fail(err)
		}
		if _, _, err := startPprof(pprofAddr, pprofLog(cfg.Log)); err != nil {
			return fail(err)
		}
		if h != nil {
			if err := h.Hello(cfg.Upgrade.Timeout.D()); err != nil {
				return err
			}
		}
		return run(cfg, path, h)
	}
}

func setupCheckConfig(fs *flag.FlagSet) func([]string) error {
	var path string
	pathVar(fs, &path, fileArg, "config", "", "configuration file (YAML): required")
	return func([]string) error {
		if path == "" {
			return usageError{"check-config: --config FILE is required"}
		}
		cfg, err := config.Load(path)
		if err != nil {
			return err
		}
		// Certificates and the routing table are checked the way serve would.
		if pairs := cfg.CertPairs(); len(pairs) > 0 {
			if err := (&node.CertStore{}).Load(pairs); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		if _, err := routing.NewTable(cfg.RoutingSpec()); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, w := range cfg.Warnings() {
			fmt.Fprintf(os.Stderr, "%s: warning: %s\n", path, w)
		}
		// Settings that decide where users land: every node must agree.
		for _, n := range cfg.SameOnEveryNode() {
			fmt.Printf("%s: note: %s\n", path, n)
		}
		fmt.Printf("%s: OK (%d listeners, %d backends, %d pools)\n", path, len(cfg.Listeners), len(cfg.Backends), len(cfg.Pools))
		return nil
	}
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func setupProxy(fs *flag.FlagSet) func([]string) error {
	var f config.ProxyFlags
	fs.Var((*stringList)(&f.From), "from", "listen `URL`: imap://ADDR, imaps://ADDR, pop3://ADDR, pop3s://ADDR, sieve://ADDR, submission://ADDR, submissions://ADDR (repeatable)")
	fs.Var((*stringList)(&f.To), "to", "backend `URL`: imap://HOST:PORT, pop3://HOST:PORT, imaps://, pop3s://, sieve://, submission://, submissions:// (repeatable)")
	pathVar(fs, &f.Cert, fileArg, "cert", "", "TLS certificate (PEM) for imaps/pop3s and STARTTLS")
	pathVar(fs, &f.Key, fileArg, "key", "", "TLS private key (PEM)")
	fs.BoolVar(&f.AllowPlaintext, "allow-plaintext", false, "allow login before STARTTLS on imap:// and pop3:// listeners that have a certificate")
	fs.BoolVar(&f.EventLoop, "event-loop", false, "serve logins on the event loops (listeners' event_loop)")
	choiceVar(fs, &f.Forward, "forward", "id", []string{"none", "id", "proxy"}, "pass the client address to the backend: none, id (IMAP ID / POP3 XCLIENT), proxy (PROXY v2)")
	fs.BoolVar(&f.Insecure, "backend-insecure", false, "do not verify backend TLS certificates")
	pathVar(fs, &f.CAFile, fileArg, "backend-ca", "", "CA bundle to verify backend TLS certificates")
	fs.IntVar(&f.MaxConnections, "max-connections", 0, "client connections on the node (0: sized to the file-descriptor limit, -1: no limit)")
	fs.IntVar(&f.MaxConnectionsPerIP, "max-connections-per-ip", 0, "client connections per client address, IPv6 per /64 (0: the default, 100; -1: no limit)")
	fs.StringVar(&f.Admin, "admin", "", "serve the admin API (portico status, /metrics, /readyz) on this loopback `address`, or off (default off)")
	var logLevel, pprofAddr string
	choiceVar(fs, &logLevel, "log-level", "info", []string{"debug", "info", "warn", "error"}, "log level")
	printCfg := fs.Bool("print-config", false, "print the configuration this runs, defaults written out, and exit (portico serve --config runs it the same way)")
	fs.StringVar(&pprofAddr, "pprof", "", "serve Go profiling endpoints (/debug/pprof/) on this `address`, e.g. 127.0.0.1:6060")
	return func([]string) error {
		cfg, err := config.FromProxyFlags(f)
		if err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		cfg.Log.Level = logLevel
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		if *printCfg {
			b, err := cfg.Marshal()
			if err != nil {
				return err
			}
			fmt.Print("# Printed by portico proxy --print-config: what portico proxy runs with the same\n" +
				"# flags, defaults written out. Run it with: portico serve --config FILE\n")
			os.Stdout.Write(b)
			return nil
		}
		if _, _, err := startPprof(pprofAddr, pprofLog(cfg.Log)); err != nil {
			return err
		}
		return run(cfg, "", nil)
	}
}

// run serves cfg until SIGTERM/SIGINT. path, if set, is re-read on SIGHUP.
// SIGUSR2 starts an in-place upgrade; h is the handover when this process
// was started by one.
func run(cfg *config.Config, path string, h *upgrade.Handover) error {
	// Before anything starts: a SIGTERM that arrives while the node is
	// starting (a supervisor stopping it at once) is handled once it has
	// started, instead of killing it outright (the signal's default).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	exe, _ := os.Executable()
	d, err := daemon.New(cfg, daemon.Options{ConfigPath: path, Executable: exe, Args: os.Args[1:], Inherit: h})
	if err != nil {
		if h != nil {
			h.Fail(err)
		}
		return err
	}
	if err := d.Start(); err != nil {
		if h != nil {
			h.Fail(err)
		}
		return err
	}
	log := d.Log
	if h != nil {
		h.Ready()
		log.Info("portico started by an in-place upgrade", "version", daemon.Version, "commit", daemon.Commit)
		sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
	} else {
		log.Info("portico started", "version", daemon.Version, "commit", daemon.Commit)
		sdNotify("READY=1")
	}

	for {
		var sig os.Signal
		select {
		case <-d.Retired():
			log.Info("exiting after the in-place upgrade")
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.D())
			_ = d.Shutdown(ctx)
			cancel()
			if d.UpgradeFailed() {
				return errors.New("the in-place upgrade failed after the handoff; exiting so that the node restarts")
			}
			return nil
		case <-d.Halted():
			log.Error("stopping: this node cannot apply the replicated routing log", "error", d.HaltError())
			sdNotify("STOPPING=1")
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.D())
			_ = d.Shutdown(ctx)
			cancel()
			return exitError{code: exitHalted, err: d.HaltError()}
		case sig = <-sigs:
		}
		if sig == syscall.SIGUSR2 {
			go func() {
				if _, err := d.Upgrade(context.Background()); err != nil {
					log.Error("in-place upgrade", "error", err)
				}
			}()
			continue
		}
		if sig == syscall.SIGHUP {
			if path == "" {
				log.Warn("reload requested but there is no configuration file (portico proxy)")
				continue
			}
			_, _ = d.ReloadFile() // logs the outcome
			continue
		}
		log.Info("shutting down", "signal", sig.String(), "grace", cfg.ShutdownGrace.D())
		sdNotify("STOPPING=1")
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.D())
		err := d.Shutdown(ctx)
		cancel()
		return err
	}
}

// exitHalted is the exit status of a node that stopped because it cannot
// apply the replicated log (EX_SOFTWARE): restarting the same binary
// cannot help, so the systemd unit does not (RestartPreventExitStatus).
const exitHalted = 70

// exitError carries an exit status to main.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }
