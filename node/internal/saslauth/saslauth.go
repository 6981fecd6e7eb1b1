// Package saslauth is the client-facing half of a login that the POP3
// (RFC 5034), ManageSieve (RFC 5804 §2.1) and submission (RFC 4954) front
// ends share: the SASL exchange of challenges and responses (RFC 4422
// §3), the client's dummy response to a failed bearer login's error
// challenge (RFC 7628 §3.2.3), and the answer to a failed attempt.
//
// What differs between the protocols stays with them: how a challenge is
// written and a response read (a "+ " line, a quoted string, a "334"
// reply), and the words of every reply. They come in as functions and
// values (Refusals, Replies), so each protocol's replies are its own to
// the byte.
package saslauth

import (
	"errors"

	"github.com/portico-mail/portico/node/session"
)

// Refusals are a protocol's refused commands (*session.ProtocolError, not
// fatal) for an exchange that fails.
type Refusals struct {
	Cancelled    error // the client answered "*"
	BadBase64    error // a response is not base64
	BearerNoUser error // a bearer message names no user (session.ErrBearerNoUser)
	BadAuthData  error // the mechanism refused a response
}

// Map turns an error of session.DecodeResponse or of a session.SASL into
// the protocol's refusal. A cancelled exchange is refused too, so that it
// counts toward max_errors: otherwise AUTH and "*" could be repeated for
// as long as the session lives.
func (r *Refusals) Map(err error) error {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
		return r.Cancelled
	case errors.Is(err, session.ErrSASLBadBase64):
		return r.BadBase64
	case errors.Is(err, session.ErrBearerNoUser):
		return r.BearerNoUser
	default:
		return r.BadAuthData
	}
}

// Respond sends a challenge to the client and returns its response as
// read (base64, "*" or "=", not decoded). Its errors are returned as they
// are: read errors, and refused commands (*session.ProtocolError) for a
// response the protocol's grammar refuses.
type Respond func(challenge []byte) ([]byte, error)

// Prompt writes a challenge line (CRLF included) through write, flushes it
// and prepares the read of the response (session.StateSASL): the part of
// a Respond that every protocol shares.
func Prompt(d *session.Dialogue, write func(string), line string) error {
	write(line)
	if err := d.Flush(); err != nil {
		return err
	}
	return d.Await(session.StateSASL)
}

// Exchange runs mech: the initial response ir if hasIR, then, for each
// challenge, the client's response from respond, until the mechanism has
// the credentials. A response that does not decode, or that the mechanism
// refuses, is the protocol's refusal (ref); respond's errors are returned
// as they are.
func Exchange(mech session.SASL, ir []byte, hasIR bool, respond Respond, ref *Refusals) (session.Credentials, error) {
	var resp []byte
	if hasIR {
		var err error
		if resp, err = session.DecodeResponse(ir); err != nil {
			return session.Credentials{}, ref.Map(err)
		}
	}
	present := hasIR
	for {
		challenge, done, err := mech.Next(resp, present)
		if err != nil {
			return session.Credentials{}, ref.Map(err)
		}
		if done {
			return mech.Creds(), nil
		}
		line, err := respond(challenge)
		if err != nil {
			return session.Credentials{}, err
		}
		if resp, err = session.DecodeResponse(line); err != nil {
			return session.Credentials{}, ref.Map(err)
		}
		present = true
	}
}

// Dummy sends a failed bearer login's error challenge and reads the
// client's response (RFC 7628 §3.2.3: a dummy, whose content does not
// matter; the exchange with the backend is over). A response that is not
// one ("*", not base64, refused by the protocol's grammar without ending
// the session) is answered with its refusal in place of the login's reply:
// refusal is that reply. Errors are read errors and fatal refusals, the
// Dialogue's.
func Dummy(challenge []byte, respond Respond, ref *Refusals) (refusal string, err error) {
	line, err := respond(challenge)
	var pe *session.ProtocolError
	switch {
	case errors.As(err, &pe) && !pe.Fatal:
		return pe.Reply, nil
	case err != nil:
		return "", err
	}
	if _, err := session.DecodeResponse(line); err != nil {
		if errors.As(ref.Map(err), &pe) {
			return pe.Reply, nil
		}
	}
	return "", nil
}

// Replies are a protocol's answers to a login attempt that failed. They
// are answers, not refused commands: a failed login does not count toward
// max_errors (max_auth_failures bounds it).
type Replies struct {
	// AuthFailed: refused before the backend (no route...) or a wrong
	// password without a reply of the backend's, the same reply so that
	// user names cannot be probed.
	AuthFailed string
	// Unavailable: no backend could be used (down, timeout, protocol
	// error); the session stays open.
	Unavailable string
	// Throttled: blocked by the failed-login throttle.
	Throttled string
	// TooManyAuth follows the reply after MaxAuthFailures; the session
	// ends.
	TooManyAuth string
	// InternalError is nginx's answer when its auth_http server fails;
	// the session ends.
	InternalError string
	// Refusal formats a refusal that carries its own text
	// (session.Refusal.Reply, an auth_http server's Auth-Status).
	Refusal func(*session.Refusal) string
}

// Fail answers a login attempt that did not succeed (out.Result is not
// session.ResultOK), writing through write:
//
//   - a failed bearer login first gets the error challenge and reads the
//     client's dummy response (Dummy, through respond);
//   - the backend refused: its reply (out.Reply), passed through;
//   - the authentication source failed: InternalError, and the session
//     ends;
//   - throttled: Throttled; a refusal with its own text: Refusal; a
//     refusal or bad credentials without a reply: AuthFailed; anything
//     else: Unavailable.
//
// After a refusal that closes, or MaxAuthFailures (then followed by
// TooManyAuth), Fail returns the session.Ending; otherwise nil, or the
// error of reading the dummy response. A shutdown that came during the
// attempt is seen before the next read (session.Dialogue.Await), which
// says goodbye.
func Fail(out session.Outcome, rep *Replies, write func(string), respond Respond, ref *Refusals) error {
	refusal := ""
	if out.Challenge != nil {
		var err error
		if refusal, err = Dummy(out.Challenge, respond, ref); err != nil {
			return err
		}
	}
	switch {
	case refusal != "":
		// The dummy response was refused: its reply replaces the login's.
		write(refusal)
	case out.Reply != nil:
		write(string(out.Reply))
	case out.Refusal != nil && out.Refusal.Kind == session.RefuseInternal:
		// As nginx: the authentication source failed; end the session.
		write(rep.InternalError)
		return session.Ending(session.EndAuthError, nil)
	case out.Result == session.ResultLimit:
		write(rep.Throttled)
	case out.Refusal != nil && out.Refusal.Reply != "":
		write(rep.Refusal(out.Refusal))
	case out.Result == session.ResultBadCreds:
		write(rep.AuthFailed)
	default:
		write(rep.Unavailable)
	}
	if out.Refusal != nil && out.Refusal.Close {
		return session.Ending(session.EndAuthRefused, nil)
	}
	if out.Close {
		write(rep.TooManyAuth)
		return session.Ending(session.EndTooManyAuthFailures, nil)
	}
	return nil
}
