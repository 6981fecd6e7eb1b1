// Command demobackend runs a throwaway Dovecot (IMAP + POP3) as a demo
// backend for Portico, until it receives SIGINT or SIGTERM. It must run as
// root with Dovecot installed (see scripts/quickstart.sh).
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/portico-mail/portico/integration/dovecot"
)

func main() {
	addr := flag.String("addr", "127.0.0.1", "IP address to listen on")
	imapPort := flag.Int("imap-port", 10143, "IMAP port (0 = any free port)")
	pop3Port := flag.Int("pop3-port", 10110, "POP3 port (0 = any free port)")
	user := flag.String("user", "demo@example.com", "demo user name")
	password := flag.String("password", "demo", "demo user password")
	tls := flag.Bool("tls", false, "enable STARTTLS with a self-signed certificate")
	readyFile := flag.String("ready-file", "", "write the listener addresses to this file once ready")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("demobackend: ")

	// Handle signals before starting so that an early Ctrl-C still stops
	// Dovecot.
	// SIGINT is left alone when it was ignored at start (a background job of
	// a script, as in quickstart.sh, which stops us with SIGTERM after the
	// proxy in front of us is gone).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	if !signal.Ignored(syscall.SIGINT) {
		signal.Notify(sigs, syscall.SIGINT)
	}

	s, err := dovecot.StartProcess(dovecot.Options{
		Addr:     *addr,
		IMAPPort: *imapPort,
		POP3Port: *pop3Port,
		Users:    map[string]string{*user: *password},
		TLS:      *tls,
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("Dovecot ready: IMAP %s, POP3 %s, user %s / %s (dir %s)", s.IMAPAddr, s.POP3Addr, *user, *password, s.Dir)
	if *readyFile != "" {
		content := fmt.Sprintf("IMAP=%s\nPOP3=%s\n", s.IMAPAddr, s.POP3Addr)
		if err := os.WriteFile(*readyFile, []byte(content), 0o644); err != nil {
			s.Stop()
			log.Fatal(err)
		}
	}
	sig := <-sigs
	log.Printf("%v: stopping Dovecot", sig)
	s.Stop()
}
