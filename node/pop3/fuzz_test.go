package pop3

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// FuzzCommand checks the client line reader against a simple model of
// line splitting, and the parser's invariants:
//   - a line of at most max bytes (LF included) is returned without its
//     LF and one CR before it; a longer one is ErrLineTooLong and skipped
//     through its LF; an unterminated tail is io.ErrUnexpectedEOF;
//   - memory stays bounded by max whatever the input;
//   - a parsed keyword is 1-40 upper-case [A-Z0-9-] bytes and the line is
//     exactly keyword [SP argument].
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"USER alice\r\nPASS secret with spaces\r\n",
		"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
		"capa\n", "STLS\r\nUSER x\r\n", "\x00\xff\r\n", "QUIT",
		strings.Repeat("A", 300) + "\r\nCAPA\r\n", "\r\n\r\n", "AUTH\r\n",
		"NOOP \r\n", "USER  two spaces\r\n", "a\rb\r\r\n", "\r", "\n",
		strings.Repeat("x", 127) + "\n", strings.Repeat("x", 128) + "\n",
		strings.Repeat("x", 126) + "\r\n" + strings.Repeat("y", 127) + "\r\n",
	} {
		f.Add([]byte(s))
	}
	const max = 128
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		var scratch []byte
		pos := 0
		for {
			l, err := readLine(br, max, &scratch, true)
			if cap(scratch) > 2*max+64 {
				t.Fatalf("scratch grew to %d", cap(scratch))
			}
			// The model.
			rest := in[pos:]
			if len(rest) == 0 {
				if err != io.EOF {
					t.Fatalf("at end: %q %v, want EOF", l, err)
				}
				return
			}
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				if err != io.ErrUnexpectedEOF {
					t.Fatalf("unterminated %q: got %q %v", rest, l, err)
				}
				return
			}
			seg := rest[:i+1]
			pos += i + 1
			if len(seg) > max {
				if err != ErrLineTooLong {
					t.Fatalf("%d-byte line: got %v", len(seg), err)
				}
				continue
			}
			want := bytes.TrimSuffix(seg[:i], []byte("\r"))
			if err != nil || !bytes.Equal(l, want) {
				t.Fatalf("line %q: got %q %v", seg, l, err)
			}
			cmd, ok := parseCommand(l)
			if !ok {
				continue
			}
			if n := len(cmd.Name); n == 0 || n > maxKeyword {
				t.Fatalf("keyword length %d", n)
			}
			for _, c := range []byte(cmd.Name) {
				if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
					t.Fatalf("keyword %q", cmd.Name)
				}
			}
			back := string(l[:len(cmd.Name)])
			if len(l) > len(cmd.Name) {
				back += " " + cmd.Arg
			}
			if !strings.EqualFold(back, string(l)) || strings.ToUpper(string(l[:len(cmd.Name)])) != cmd.Name {
				t.Fatalf("%q parsed as %+v", l, cmd)
			}
		}
	})
}

// FuzzBackend runs the proxy's side of the backend dialogue (greeting,
// CAPA, XCLIENT, AUTH PLAIN or USER/PASS) against arbitrary backend output
// and credentials:
//   - it never panics and reads a bounded amount;
//   - success returns one "+OK" line with a single CRLF and no NUL;
//   - a rejection's reply is one "-ERR" line; any other error is labelled
//     with its phase;
//   - what the proxy sends is only whole CRLF-terminated lines of known
//     commands, so credentials can never inject a command.
func FuzzBackend(f *testing.F) {
	dovecot := "+OK [XCLIENT] Dovecot (Debian) ready.\r\n+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n" +
		"AUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n+OK Updated\r\n"
	seeds := []struct{ in, user, pass string }{
		{dovecot + "+OK Logged in.\r\n", "alice", "secret"},
		{dovecot + "-ERR [AUTH] Authentication failed.\r\n", "alice", "bad"},
		{dovecot + "-ERR [SYS/TEMP] Temporary authentication failure. [host:2024-01-01 00:00:00]\r\n", "alice", "x"},
		{dovecot + "-ERR [IN-USE] Mailbox locked\r\n", "alice", "x"},
		{dovecot + "+ \r\n", "alice", "x"},
		{"+OK ready\r\n-ERR no CAPA\r\n+OK\r\n+OK welcome\r\n", "alice", "pass word"},
		{"+OK ready\r\n+OK\r\nUSER\r\n.\r\n+OK\r\n-ERR wrong\r\n", "alice", "a\r\nQUIT"},
		{"+OK ready\r\n+OK\r\n" + strings.Repeat("X-CAP\r\n", 70) + ".\r\n", "u", "p"},
		{"* OK IMAP4rev1\r\n", "u", "p"},
		{"+OK " + strings.Repeat("g", 5000) + "\r\n", "u", "p"},
		{"+OK\r\n+OK\r\nSASL PLAIN\r\n..DOT\r\n.\r\n+OK\x00\r\x00\r\n", "u\x00", "p"},
		{"+OK\n+OK\n.\n+OK\n+OK\n", "", ""},
	}
	for _, s := range seeds {
		f.Add([]byte(s.in), s.user, s.pass)
	}
	allowed := []string{"CAPA", "XCLIENT ADDR=", "AUTH PLAIN ", "USER ", "PASS "}
	f.Fuzz(func(t *testing.T, in []byte, user, pass string) {
		var sent bytes.Buffer
		src := &countingReader{r: bytes.NewReader(in)}
		b := &backend{
			r: bufio.NewReaderSize(src, 64), w: bufio.NewWriter(&sent),
			remote: netip.MustParseAddrPort("[2001:db8::1]:4242"), sessionID: "SID1",
		}
		bk := &routing.Backend{ID: "b", TLS: routing.TLSNone, Forward: routing.ForwardID}
		reply, err := b.run(context.Background(), bk, session.Credentials{User: user, Password: pass})

		if limit := int64(backendMaxLine*(backendMaxCapas+8) + 64); src.n > limit {
			t.Fatalf("read %d bytes", src.n)
		}
		var rej *session.BackendRejected
		switch {
		case err == nil:
			s := string(reply)
			if !isOK(strings.TrimSuffix(s, "\r\n")) || strings.Count(s, "\n") != 1 || strings.Count(s, "\r") != 1 ||
				!strings.HasSuffix(s, "\r\n") || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("success reply %q", s)
			}
		case errors.As(err, &rej):
			if rej.Reply != nil {
				s := string(rej.Reply)
				if !strings.HasPrefix(s, "-ERR") || strings.Count(s, "\n") != 1 || strings.Count(s, "\r") != 1 || !strings.HasSuffix(s, "\r\n") {
					t.Fatalf("rejection reply %q", s)
				}
			}
		default:
			msg := err.Error()
			ok := false
			for _, p := range []string{phaseGreeting, phaseCAPA, phaseSTLS, phaseXCLIENT, phaseAuth} {
				ok = ok || strings.HasPrefix(msg, p+": ")
			}
			if !ok {
				t.Fatalf("unlabelled error %q", msg)
			}
		}
		out := sent.String()
		if out != "" && !strings.HasSuffix(out, "\r\n") {
			t.Fatalf("unterminated output %q", out)
		}
		for _, l := range strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n") {
			if l == "" && out == "" {
				break
			}
			if strings.ContainsAny(l, "\r\n") {
				t.Fatalf("bare CR/LF in sent line %q", l)
			}
			known := false
			for _, p := range allowed {
				known = known || strings.HasPrefix(l, p)
			}
			if !known {
				t.Fatalf("sent unexpected line %q (all: %q)", l, out)
			}
		}
	})
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
