package submission

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/session"
)

// FuzzCommand feeds arbitrary bytes to the command reader: it must never
// panic, return a verb of letters only, upper-cased and bounded, and stay
// in step (a line over the limit is skipped whole).
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"EHLO client.example\r\n", "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
		"BDAT 10 LAST\r\n", "\x00\r\n", "NOOP\n", strings.Repeat("x", 100) + "\r\nQUIT\r\n", "a b c\r\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		w := newWire(bufio.NewReaderSize(bytes.NewReader(in), 16), 64)
		for i := 0; i < 100; i++ {
			cmd, err := w.readCommand()
			if errors.Is(err, ErrSyntax) || errors.Is(err, ErrLineTooLong) {
				continue
			}
			if err != nil {
				return
			}
			if cmd.Verb == "" || len(cmd.Verb) > maxVerb || cmd.Verb != strings.ToUpper(cmd.Verb) {
				t.Fatalf("verb %q", cmd.Verb)
			}
			for _, c := range []byte(cmd.Verb) {
				if c < 'A' || c > 'Z' {
					t.Fatalf("verb %q", cmd.Verb)
				}
			}
			if len(cmd.Arg) > 64 || strings.ContainsAny(cmd.Arg, "\r\n\x00") {
				t.Fatalf("arg %q", cmd.Arg)
			}
			if name, ok := heloName(cmd.Arg); ok && strings.ContainsAny(name, " \t\x7f") {
				t.Fatalf("helo %q", name)
			}
			if n, _, ok := parseBDAT(cmd.Arg); ok && n < 0 {
				t.Fatalf("BDAT size %d", n)
			}
		}
	})
}

// FuzzAuthExchange drives the AUTH exchange of every mechanism with an
// arbitrary initial response and arbitrary response lines: no panic; it
// ends with credentials (a non-empty user, bounded by what was sent) or a
// refused command, never anything else.
func FuzzAuthExchange(f *testing.F) {
	f.Add("PLAIN", "AGFsaWNlAHNlY3JldA==", true, []byte(""))
	f.Add("PLAIN", "", false, []byte("AGFsaWNlAHNlY3JldA==\n"))
	f.Add("LOGIN", "", false, []byte("YWxpY2U=\nc2VjcmV0\n"))
	f.Add("LOGIN", "YWxpY2U=", true, []byte("*\n"))
	f.Add("LOGIN", "=", true, []byte("\n\n"))
	f.Add("OAUTHBEARER", "bixhPWFsaWNlLAFhdXRoPUJlYXJlciB0b2sBAQ==", true, []byte(""))
	f.Add("XOAUTH2", "", false, []byte("dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2sBAQ==\n"))
	lis := &session.Listener{BearerMechanisms: session.BearerMechanisms}
	f.Fuzz(func(t *testing.T, mech, ir string, hasIR bool, lines []byte) {
		m := lis.NewSASL(mech)
		if m == nil {
			return
		}
		r := bufio.NewReader(bytes.NewReader(lines))
		w := newWire(r, 128)
		rounds := 0
		creds, err := exchange(m, ir, hasIR, func([]byte) ([]byte, error) {
			rounds++
			if rounds > 10 {
				t.Fatalf("more than 10 challenges")
			}
			return w.line()
		})
		if err != nil {
			var pe *session.ProtocolError
			if !errors.As(err, &pe) && !errors.Is(err, bufio.ErrBufferFull) && err.Error() != "EOF" && err.Error() != "unexpected EOF" {
				t.Fatalf("error %v", err)
			}
			return
		}
		if creds.User == "" || creds.Len() > len(ir)+len(lines) {
			t.Fatalf("credentials %q/%d from %d+%d bytes", creds.User, creds.Len(), len(ir), len(lines))
		}
	})
}

// FuzzBackendReply feeds arbitrary backend bytes to the reply reader:
// bounded, no panic, one code per reply.
func FuzzBackendReply(f *testing.F) {
	f.Add([]byte("220 mx ESMTP\r\n"))
	f.Add([]byte("250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"))
	f.Add([]byte("250-a\r\n251 b\r\n"))
	f.Add([]byte("235\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		b := &backend{r: bufio.NewReader(bytes.NewReader(in)), w: bufio.NewWriter(&bytes.Buffer{})}
		for i := 0; i < 10; i++ {
			r, err := b.reply()
			if err != nil {
				return
			}
			if r.code < 200 || r.code > 599 || len(r.lines) > backendMaxLines || len(r.raw) > backendMaxLines*backendMaxLine {
				t.Fatalf("reply %d, %d lines, %d bytes", r.code, len(r.lines), len(r.raw))
			}
		}
	})
}

// FuzzFramer: the client's bytes give the same refusal and state, and
// the backend's the same boundaries, whatever their chunking (the client
// stream is fed first, then the backend's: a boundary found in chunks
// must be one found byte by byte, and the end state the same).
func FuzzFramer(f *testing.F) {
	f.Add([]byte("MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n"), []byte("250 ok\r\n250 ok\r\n354 go\r\n"), uint8(3), true)
	f.Add([]byte("BDAT 5 LAST\r\nXCLIE\r\nXCLIENT\r\n"), []byte("250-a\r\n250 b\r\n"), uint8(1), true)
	f.Add([]byte("DATA\r\n"), []byte("354 go\r\n"), uint8(7), false)
	f.Add([]byte("RSET\r\nNOOP\r\n"), []byte("250 ok\r\n421 bye\r\n250 x\r\n"), uint8(2), true)
	f.Fuzz(func(t *testing.T, client, server []byte, n uint8, chunking bool) {
		feed := func(size int) (string, map[int]bool, bool) {
			fr := NewFramer(chunking).(*Framer)
			for i := 0; i < len(client) && fr.ClientRefused() == nil; i += size {
				fr.ClientData(client[i:min(i+size, len(client))])
			}
			refused := ""
			if err := fr.ClientRefused(); err != nil {
				refused = err.Error()
			}
			bounds := map[int]bool{}
			for i := 0; i < len(server); i += size {
				if k := fr.ServerData(server[i:min(i+size, len(server))]); k >= 0 {
					bounds[i+k] = true
				}
			}
			return refused, bounds, fr.AtBoundary()
		}
		r1, b1, a1 := feed(1)
		size := int(n)%13 + 2
		r2, b2, a2 := feed(size)
		if r1 != r2 || a1 != a2 {
			t.Fatalf("chunk %d: refused %q/%q, at boundary %v/%v", size, r1, r2, a1, a2)
		}
		for k := range b2 {
			if !b1[k] {
				t.Fatalf("chunk %d: boundary %d not found byte by byte (%v)", size, k, b1)
			}
		}
	})
}
