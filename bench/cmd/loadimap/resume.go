package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"time"
)

// -tls-resume: every session of the login phase resumes a TLS session
// (RFC 8446 §2.2, a ticket and an X25519 exchange, no certificate) instead
// of a full handshake. The tickets come from one priming connection made
// before the measurement and are shared by all sessions (Go's client does
// not drop a ticket it used, and each resumed session brings a new one).
// Not the reconnect mode's -resume, where each client keeps its own.
var tlsResume = flag.Bool("tls-resume", false, "login phase: resume TLS sessions with tickets from one priming connection (measures resumed logins); default: a full handshake per session")

// primeResumption makes one connection, reads the greeting (which brings
// the ticket) and closes it, so that conf's session cache holds a ticket.
func primeResumption(conf *tls.Config) error {
	conf.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	c, err := net.DialTimeout("tcp", *addr, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(*timeout))
	tc := tls.Client(c, conf)
	if err := tc.Handshake(); err != nil {
		return err
	}
	if _, err := bufio.NewReader(tc).ReadString('\n'); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	return nil
}
