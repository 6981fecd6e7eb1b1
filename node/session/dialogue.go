package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/portico-mail/portico/routing"
)

// State is where a pre-login dialogue is. Each state has its deadline:
//
//	StateTLS                tls_handshake_timeout (netx.Stream.StartTLSServer)
//	StateGreeting           preauth_timeout per write (Flush)
//	StateCommand, StateSASL preauth_timeout per read, never past preauth_lifetime (Await)
//	StateLogin              backend_timeout for the whole backend dialogue (Client.Login)
//
// and a session that ends before login is logged with the state it ended in.
type State uint8

const (
	StateNew      State = iota // accepted, nothing exchanged yet
	StateTLS                   // TLS handshake: implicit TLS, STARTTLS or STLS
	StateGreeting              // sending the greeting
	StateCommand               // waiting for a command
	StateSASL                  // waiting for a SASL response (AUTHENTICATE, AUTH)
	StateLogin                 // logging in at the backend
)

func (s State) String() string {
	switch s {
	case StateNew:
		return "new"
	case StateTLS:
		return "tls"
	case StateGreeting:
		return "greeting"
	case StateCommand:
		return "command"
	case StateSASL:
		return "sasl"
	case StateLogin:
		return "login"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// End is how a session ended before login (Handler.Serve returns it), for
// the log and the metrics.
type End struct {
	Reason string // an End* constant
	State  State  // where the dialogue was
	// Err is what went wrong (a read, write or handshake error), for the
	// log; nil when Reason says it all (LOGOUT, a client that hung up
	// between commands, too many errors).
	Err error
	// ProtocolErrors counts the commands that counted toward
	// Limits.MaxErrors.
	ProtocolErrors int
	// TLSFailure classifies a failed TLS handshake (TLSFail*), else "".
	TLSFailure string
}

// Protocol is a front end's half of a Dialogue (node/imap, node/pop3):
// what the protocol says, and how it reads and runs one command. It only
// writes into the client's Stream; the Dialogue flushes.
type Protocol interface {
	// Greet writes the greeting.
	Greet()
	// Next reads one command and runs it; the Dialogue has armed the read
	// deadline and checked for a shutdown just before. It returns:
	//
	//   - a Handoff after a successful login, its reply written;
	//   - nil, nil: the dialogue goes on;
	//   - a *ProtocolError: the Dialogue writes its reply and counts it;
	//   - an error from Ending: the session is over (the protocol wrote
	//     what it had to say);
	//   - any other error: a client read failed or the session is being
	//     ended; the Dialogue decides why and has Bye say goodbye.
	//
	// A read inside a command (a SASL response) is prepared with Await.
	Next() (*Handoff, error)
	// Bye writes the goodbye for an end the Dialogue decided:
	// EndShutdown, EndTimeout, EndPreauthLifetime or EndTooManyErrors.
	Bye(reason string)
}

// ProtocolError is a command refused for the client's fault (an invalid or
// unknown command, a refused one: nginx's "invalid command"). The Dialogue
// writes Reply (the protocol's BAD, NO or -ERR line, CRLF included) and
// counts it toward Limits.MaxErrors. With Fatal the stream cannot be
// resynchronised: the session then ends (EndProtocolError), so Reply says
// goodbye too.
type ProtocolError struct {
	Reply string
	Fatal bool
}

func (e *ProtocolError) Error() string {
	line, _, _ := strings.Cut(e.Reply, "\r\n")
	return "refused: " + line
}

// ending is the error of Ending.
type ending struct {
	reason string
	err    error
}

func (e *ending) Error() string {
	if e.err == nil {
		return "session ended: " + e.reason
	}
	return e.err.Error()
}

func (e *ending) Unwrap() error { return e.err }

// Ending is what a command returns to end the session for reason (an End*
// constant) once the replies it wrote are sent; err is what went wrong,
// for the log, or nil.
func Ending(reason string, err error) error { return &ending{reason: reason, err: err} }

// Dialogue is the protocol-independent half of one client's pre-login
// session (go-imap's imapserver.Conn, nginx's ngx_mail_session_t): the
// state, the deadlines of every read and write (Await, Flush), the TLS
// upgrade, the count of protocol errors, and one place that decides why
// the session ended. Run drives a Protocol with it.
type Dialogue struct {
	c          *Client
	ctx        context.Context
	lim        Limits
	p          Protocol
	state      State
	errors     int
	tlsFailure string
}

// NewDialogue prepares c's pre-login dialogue. ctx ends it (shutdown,
// drain): the client is interrupted at once (Client.Interrupt) and told
// goodbye.
func NewDialogue(ctx context.Context, c *Client) *Dialogue {
	return &Dialogue{c: c, ctx: ctx, lim: c.limits()}
}

// Limits are the listener's limits, with the defaults of those a zero
// cannot switch off (see Limits.withDefaults).
func (d *Dialogue) Limits() Limits { return d.lim }

// Run runs the dialogue: implicit TLS if the listener wants it, the
// greeting, then one command after another until a login or the end. It
// returns the Handoff after a login (the client's deadlines cleared), else
// nil and how the session ended.
func (d *Dialogue) Run(p Protocol) (*Handoff, End) {
	d.p = p
	// Reads and writes blocked when the context ends return at once (a
	// write within ByeWriteGrace), whoever ends it.
	stop := context.AfterFunc(d.ctx, d.c.Interrupt)
	defer stop()
	if d.c.Listener.TLS == routing.TLSImplicit && !d.c.IsTLS() {
		if err := d.StartTLS("implicit TLS"); err != nil {
			return nil, d.end(err)
		}
	}
	d.state = StateGreeting
	p.Greet()
	err := d.Flush()
	for err == nil {
		if err = d.Await(StateCommand); err != nil {
			break
		}
		var ho *Handoff
		if ho, err = p.Next(); ho != nil {
			return d.handOff(ho)
		}
		if err = d.count(err); err == nil {
			err = d.Flush()
		}
	}
	return nil, d.end(err)
}

// count writes a ProtocolError's reply and counts it, and ends the session
// once Limits.MaxErrors is reached. It returns what ends the session, or
// nil.
func (d *Dialogue) count(err error) error {
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		return err
	}
	d.errors++
	_, _ = d.c.Stream.WriteString(pe.Reply)
	if pe.Fatal {
		return Ending(EndProtocolError, pe)
	}
	if max := d.lim.MaxErrors; max > 0 && d.errors >= max {
		d.p.Bye(EndTooManyErrors)
		return Ending(EndTooManyErrors, nil)
	}
	return nil
}

// handOff sends the login's reply and hands the client over: no
// pre-login deadline or interrupt may touch it any more.
func (d *Dialogue) handOff(ho *Handoff) (*Handoff, End) {
	if err := d.Flush(); err != nil {
		_ = ho.Backend.Close()
		return nil, d.end(err)
	}
	d.c.HandOff()
	ho.ProtocolErrors = d.errors
	return ho, End{}
}

// Await prepares a client read in state st (StateCommand, StateSASL): the
// read deadline (preauth_timeout, never past preauth_lifetime) and the
// write deadline for the replies until the next read are armed, then the
// context is checked. In that order: an interrupt (shutdown, drain) that
// came in between sets the deadlines to now after cancelling, and would be
// undone by arming after the check.
func (d *Dialogue) Await(st State) error {
	d.state = st
	d.c.ArmReadDeadline()
	return d.ctx.Err()
}

// Flush sends the buffered replies under the pre-login write deadline, so
// a client that does not read them cannot hold the session, or a shutdown,
// beyond it. (Replies that overflow the buffer between flushes are
// written under the deadline Await armed.) A failure ends the session: the
// error is an Ending.
func (d *Dialogue) Flush() error {
	if d.c.Stream.W.Buffered() == 0 {
		return nil
	}
	d.c.ArmWriteDeadline()
	if err := d.c.Stream.Flush(); err != nil {
		return Ending(d.reasonFor(err), err)
	}
	return nil
}

// StartTLS upgrades the client connection (what: "implicit TLS", or the
// command, its reply flushed). Bytes the client pipelined after the command
// feed the handshake and are never run as commands. A failure ends the
// session (the stream is unusable): the error is an Ending, with the
// failure classified (End.TLSFailure) unless the session was being ended.
func (d *Dialogue) StartTLS(what string) error {
	d.state = StateTLS
	err := d.c.Stream.StartTLSServer(d.ctx, d.c.Listener.TLSConfig, d.lim.TLSHandshakeTimeout)
	if err == nil {
		if f := d.c.Listener.OnTLS; f != nil {
			f(d.c.Stream.TLS().ConnectionState().DidResume)
		}
		return nil
	}
	err = fmt.Errorf("%s handshake: %w", what, err)
	if d.ctx.Err() != nil {
		return Ending(EndShutdown, err)
	}
	d.tlsFailure = tlsFailure(err)
	return Ending(EndTLSHandshake, err)
}

// Login runs one login attempt (Client.Login) in StateLogin.
func (d *Dialogue) Login(creds Credentials, login BackendLogin) Outcome {
	d.state = StateLogin
	return d.c.Login(d.ctx, creds, login)
}

// end turns what ended the session into its End: an Ending as it is (its
// replies flushed); any other error is a failed read, or the session being
// ended, and the Protocol says goodbye if it should.
func (d *Dialogue) end(err error) End {
	e := End{State: d.state, ProtocolErrors: d.errors, TLSFailure: d.tlsFailure}
	var en *ending
	if errors.As(err, &en) {
		e.Reason, e.Err = en.reason, en.err
		if ferr := d.Flush(); ferr != nil && e.Err == nil {
			e.Err = errors.Unwrap(ferr)
		}
		return e
	}
	e.Reason, e.Err = d.reasonFor(err), err
	switch e.Reason {
	case EndShutdown, EndTimeout, EndPreauthLifetime:
		d.p.Bye(e.Reason)
		_ = d.Flush()
	case EndClientClosed:
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			e.Err = nil // an orderly hang-up
		}
	}
	return e
}

// reasonFor says why a failed read or write ended the session.
func (d *Dialogue) reasonFor(err error) string {
	switch {
	case d.ctx.Err() != nil:
		return EndShutdown
	case errors.Is(err, os.ErrDeadlineExceeded) && d.c.LifetimeOver():
		return EndPreauthLifetime
	case errors.Is(err, os.ErrDeadlineExceeded):
		return EndTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return EndClientClosed
	}
	return EndError
}
