package submission

import (
	"strings"
	"testing"
)

// step is one exchange: what the client sends, then what the backend
// answers.
type step struct{ client, server string }

// run feeds a session to a framer and returns the boundary results of
// each server step (the last ServerData result) and the refusal, if any.
func run(f *Framer, steps []step) ([]int, error) {
	var bounds []int
	for _, s := range steps {
		if s.client != "" {
			f.ClientData([]byte(s.client))
			if err := f.ClientRefused(); err != nil {
				return bounds, err
			}
		}
		if s.server != "" {
			bounds = append(bounds, f.ServerData([]byte(s.server)))
		}
	}
	return bounds, nil
}

// A whole message (DATA and BDAT): a boundary only before MAIL and after
// the reply that ends the message; never inside the body, whose lines are
// content (an "XCLIENT" line in a body passes).
func TestFramerTransactions(t *testing.T) {
	f := NewFramer(true).(*Framer)
	if !f.AtBoundary() {
		t.Fatal("not at a boundary at the start")
	}
	bounds, err := run(f, []step{
		{"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n", "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"},
		{"Subject: x\r\n\r\nXCLIENT ADDR=1.2.3.4\r\nSTARTTLS\r\n.\r\n", "250 2.0.0 queued\r\n"},
		{"MAIL FROM:<a@x>\r\n", "250 2.1.0 Ok\r\n"},
		{"RCPT TO:<b@x>\r\nBDAT 21\r\nXCLIENT LOGIN=bob\r\n\r\nBDAT 0 LAST\r\n", "250 Ok\r\n250 2.0.0 20 bytes\r\n"},
		{"", "250 2.0.0 queued\r\n"},
		{"NOOP\r\n", "250-multi\r\n250 line\r\n"},
		{"MAIL FROM:<a@x>\r\n", "250 Ok\r\n"},
		{"RSET\r\n", "250 Ok\r\n"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []int{-1, len("250 2.0.0 queued\r\n"), -1, -1, len("250 2.0.0 queued\r\n"), len("250-multi\r\n250 line\r\n"), -1, len("250 Ok\r\n")}
	if len(bounds) != len(want) {
		t.Fatalf("bounds %v", bounds)
	}
	for i := range want {
		if bounds[i] != want[i] {
			t.Fatalf("step %d: boundary %d, want %d (all %v)", i, bounds[i], want[i], bounds)
		}
	}
	if !f.AtBoundary() {
		t.Fatal("not at a boundary after RSET")
	}
	// A failed MAIL opens nothing; a reply in pieces is not a boundary
	// until its last line ends.
	f.ClientData([]byte("MAIL FROM:<bad>\r\n"))
	if k := f.ServerData([]byte("553 5.1.8 no\r\n")); k != len("553 5.1.8 no\r\n") {
		t.Fatalf("after a refused MAIL: %d", k)
	}
	f.ClientData([]byte("EHLO c\r\n"))
	if k := f.ServerData([]byte("250-a\r\n250-b")); k != -1 {
		t.Fatalf("inside a reply: %d", k)
	}
	if k := f.ServerData([]byte("\r\n250 c\r\n")); k != len("\r\n250 c\r\n") {
		t.Fatalf("end of the reply: %d", k)
	}
	// A reply nobody waits for (421 before closing) keeps the boundary.
	if k := f.ServerData([]byte("421 4.4.2 timeout\r\n")); k != len("421 4.4.2 timeout\r\n") {
		t.Fatalf("unsolicited: %d", k)
	}
	if got := string(f.Bye("moving you")); got != "421 4.3.2 moving you\r\n" {
		t.Fatalf("bye %q", got)
	}
}

// What a client must never get through to a backend that trusts the
// proxy, each refused before it passes.
func TestFramerGuard(t *testing.T) {
	for _, tc := range []struct {
		name     string
		chunking bool
		steps    []step
		want     string // "" if not refused
	}{
		{"xclient", true, []step{{"XCLIENT ADDR=1.2.3.4 LOGIN=bob\r\n", ""}}, "XCLIENT"},
		{"xclient lower case", true, []step{{"xclient login=bob\r\n", ""}}, "XCLIENT"},
		{"xclient after white space", true, []step{{strings.Repeat(" ", 300) + "\t\vXCLIENT\tLOGIN=bob\r\n", ""}}, "XCLIENT"},
		{"xclient split", true, []step{{"XCLI", ""}, {"ENT LOGIN=bob\r\n", ""}}, "XCLIENT"},
		{"xforward", true, []step{{"XFORWARD ADDR=1.2.3.4\r\n", ""}}, "XFORWARD"},
		{"starttls", true, []step{{"STARTTLS\r\n", ""}}, "STARTTLS"},
		{"xclient after a message", true, []step{
			{"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n354 go\r\n"},
			{"x\r\n.\r\nXCLIENT LOGIN=bob\r\n", ""},
		}, "XCLIENT"},
		{"xclient after a chunk", true, []step{{"BDAT 3\r\nabcXCLIENT LOGIN=bob\r\n", ""}}, "XCLIENT"},
		{"bdat without chunking", false, []step{{"BDAT 3 LAST\r\nabc", ""}}, "CHUNKING"},
		{"bdat bad size", true, []step{{"BDAT 3x LAST\r\n", ""}}, "malformed BDAT"},
		{"bdat huge size", true, []step{{"BDAT 99999999999999999999 LAST\r\n", ""}}, "malformed BDAT"},
		{"bdat bad word", true, []step{{"BDAT 3 FIRST\r\n", ""}}, "malformed BDAT"},
		{"bdat long line", true, []step{{"BDAT 3" + strings.Repeat(" ", 300) + "LAST\r\n", ""}}, "malformed BDAT"},
		// DATA, then the body and a command before the 354 was seen: the
		// framer could take the XCLIENT line as body content.
		{"pipelined after data", true, []step{
			{"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\nbody\r\n.\r\n", "250 ok\r\n250 ok\r\n"},
		}, "after DATA"},
		{"split after data", true, []step{
			{"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n"},
			{"body\r\n.\r\nXCLIENT LOGIN=bob\r\n", "354 go\r\n"},
		}, "after DATA"},
		{"too many in flight", true, []step{{strings.Repeat("RCPT TO:<b>\r\n", maxPipelined+1), ""}}, "awaiting"},
		{"allowed", true, []step{
			{"AUTH PLAIN AGEAYg==\r\nHELP XCLIENT\r\nMAIL FROM:<XCLIENT@x>\r\n", "503 no\r\n214 help\r\n250 ok\r\n"},
			{"RCPT TO:<b>\r\nDATA\r\n", "250 ok\r\n354 go\r\n"},
			{"XCLIENT LOGIN=x\r\n..\r\n.\r\n", "250 queued\r\n"},
			{"QUIT\r\n", "221 bye\r\n"},
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(NewFramer(tc.chunking).(*Framer), tc.steps)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("refusal %v, want one about %q", err, tc.want)
			}
		})
	}
}

// The body ends at a line "." whatever the chunking, LF-only lines
// included; ".." and ". " do not end it.
func TestFramerBodyEnd(t *testing.T) {
	body := "a\r\n..\r\n. \r\n.x\r\nb\n.\n"
	for n := 1; n <= len(body); n++ {
		f := NewFramer(true).(*Framer)
		if _, err := run(f, []step{{"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n354 go\r\n"}}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(body); i += n {
			f.ClientData([]byte(body[i:min(i+n, len(body))]))
		}
		if f.body || len(f.expect) != 1 || f.expect[0] != kindDataEnd {
			t.Fatalf("chunk %d: body %v expect %v", n, f.body, f.expect)
		}
		if k := f.ServerData([]byte("250 ok\r\n")); k != 8 {
			t.Fatalf("chunk %d: boundary %d", n, k)
		}
	}
}

// BenchmarkFramerData: the framer's cost per byte of a DATA body (the
// bulk of a submission session), which the relay pays on top of copying.
func BenchmarkFramerData(b *testing.B) {
	line := "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
	chunk := []byte(strings.Repeat(line, 16<<10/len(line)))
	f := NewFramer(true).(*Framer)
	if _, err := run(f, []step{{"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n354 go\r\n"}}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(chunk)))
	for i := 0; i < b.N; i++ {
		f.ClientData(chunk)
	}
	if !f.body {
		b.Fatal("left the body")
	}
}
