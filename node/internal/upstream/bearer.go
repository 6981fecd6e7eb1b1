package upstream

import "github.com/portico-mail/portico/node/session"

// Bearer is the proxy's side of a bearer login (OAUTHBEARER, XOAUTH2) at
// a backend whose AUTH command takes an initial response on its line and
// answers with continuations (POP3 "+", SMTP "334"): the client's message
// is replayed as the client sent it, on the command line when it fits,
// else after the backend's empty challenge; a refusal comes as an error
// challenge (RFC 7628 §3.2.2), answered with the mechanism's dummy
// response so that the backend ends the exchange with its failure
// (§3.2.3), the challenge kept for the client (Challenge).
type Bearer struct {
	mech       string
	pending    string // the message, while it waits for the empty challenge
	challenged bool
	// Challenge is the backend's error challenge, decoded (nil if none).
	Challenge []byte
}

// NewBearer returns the exchange for m and its command: verb, the
// mechanism and the base64 message, or without the message when the line
// (CRLF included) would be longer than maxLine.
func NewBearer(verb string, m *session.Bearer, maxLine int) (*Bearer, string) {
	ir := session.EncodeChallenge(m.Message)
	b := &Bearer{mech: m.Mechanism}
	cmd := verb + " " + m.Mechanism + " " + ir
	if len(cmd)+2 > maxLine {
		cmd, b.pending = verb+" "+m.Mechanism, ir
	}
	return b, cmd
}

// Next answers a continuation whose text (after "+" or "334 ") is text:
// the message if it is still to be sent, else the dummy response to the
// error challenge. ok is false for a third continuation: the backend asks
// for more than there is, and the caller cancels ("*") and fails.
func (b *Bearer) Next(text string) (line string, ok bool) {
	switch {
	case b.pending != "":
		line, b.pending = b.pending, ""
		return line, true
	case !b.challenged:
		b.challenged = true
		b.Challenge = session.DecodeBearerChallenge([]byte(text))
		return session.EncodeChallenge(session.BearerDummyResponse(b.mech)), true
	}
	return "", false
}
