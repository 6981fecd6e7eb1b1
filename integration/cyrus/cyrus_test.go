package cyrus

import (
	"strings"
	"testing"
)

// The harness's own check: an instance serves IMAP and POP3, users have
// their mailbox, Deliver puts a message in it.
func TestStart(t *testing.T) {
	s := Start(t, Options{Addr: "127.0.0.146"})
	if err := s.Deliver("alice", "Subject: hello\n\nbody\n"); err != nil {
		t.Fatal(err)
	}
	ss, err := s.Dial("alice")
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	lines, err := ss.Run("SELECT INBOX")
	if err != nil || !strings.Contains(strings.Join(lines, ""), "* 1 EXISTS") {
		t.Fatalf("SELECT: %q %v", lines, err)
	}
	lines, err = ss.Run("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
	if err != nil || !strings.Contains(strings.Join(lines, ""), "Subject: hello") {
		t.Fatalf("FETCH: %q %v", lines, err)
	}
}
