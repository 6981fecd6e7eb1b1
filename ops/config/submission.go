package config

import (
	"fmt"
	"strings"
)

// submissionListener checks listener i's submission section: only on a
// submission listener; a host name that can go in a greeting; extensions
// that can go in an EHLO reply (SIZE, STARTTLS and AUTH are the proxy's
// own); xclient_login only where an auth_http server checks the
// passwords, since the backend is then told who logged in instead of
// checking it itself.
func (v *validator) submissionListener(i int) {
	l := &v.c.Listeners[i]
	p := fmt.Sprintf("listeners[%d].submission", i)
	s := l.Submission
	if s == nil {
		return
	}
	if l.Protocol != "submission" {
		v.errf(p, "only a listener with protocol submission takes a submission section")
		return
	}
	if s.Hostname != "" && (len(s.Hostname) > 255 || strings.IndexFunc(s.Hostname, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0) {
		v.errf(p+".hostname", "%q is not a host name", s.Hostname)
	}
	if s.MaxMessageSize < 0 {
		v.errf(p+".max_message_size", "must not be negative")
	}
	for j, e := range s.Extensions {
		k, _, _ := strings.Cut(e, " ")
		switch {
		case e == "" || len(e) > 200 || strings.IndexFunc(e, func(r rune) bool { return r < ' ' || r >= 0x7f }) >= 0:
			v.errf(fmt.Sprintf("%s.extensions[%d]", p, j), "%q is not an EHLO keyword with parameters", e)
		case oneOf(strings.ToUpper(k), "SIZE", "STARTTLS", "AUTH"):
			v.errf(fmt.Sprintf("%s.extensions[%d]", p, j), "%s is the proxy's own (SIZE: max_message_size; STARTTLS: tls; AUTH: the listener's mechanisms)", strings.ToUpper(k))
		}
	}
	if s.XCLIENTLogin {
		if a := v.c.ListenerAuth(i); a == nil || !a.IsHTTP() {
			v.errf(p+".xclient_login", "needs auth mode http: with passthrough only the backend checks the password, so it must be sent AUTH")
		}
	}
}

// submissionWarnings: submission backends that would see the proxy's
// address for every client (forward: none), which defeats a submission
// server's per-client limits and logs; only when a submission listener
// exists.
func (c *Config) submissionWarnings() []string {
	served := false
	for _, l := range c.Listeners {
		served = served || l.Protocol == "submission"
	}
	if !served {
		return nil
	}
	var out []string
	for i, b := range c.Backends {
		if b.SubmissionPort == 0 || (b.Forward != "" && b.Forward != "none") {
			continue
		}
		path := fmt.Sprintf("backends[%d].forward", i)
		if line := c.line(fmt.Sprintf("backends[%d]", i)); line > 0 {
			path = fmt.Sprintf("%s (line %d)", path, line)
		}
		out = append(out, fmt.Sprintf("%s: backend %s takes submission with forward: none: it sees the proxy's address for every client (its per-client limits and logs); use forward: id (XCLIENT, Postfix's smtpd_authorized_xclient_hosts) or proxy", path, b.ID))
	}
	return out
}
