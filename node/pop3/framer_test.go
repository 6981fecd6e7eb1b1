package pop3

import "testing"

func TestFramerMultiLine(t *testing.T) {
	for _, tc := range []struct {
		cmds, resp string
		boundary   bool
	}{
		{"STAT\r\n", "+OK 2 320\r\n", true},
		{"RETR 1\r\n", "+OK 120 octets\r\nSubject: x\r\n\r\n..dot-stuffed\r\n", false},
		{"RETR 1\r\n", "+OK 120 octets\r\nSubject: x\r\n\r\n..dot\r\n.\r\n", true},
		{"RETR 9\r\n", "-ERR no such message\r\n", true},
		{"LIST\r\n", "+OK\r\n1 120\r\n", false},
		{"LIST\r\n", "+OK\r\n1 120\r\n.\r\n", true},
		{"LIST 1\r\n", "+OK 1 120\r\n", true},
		{"UIDL\r\nSTAT\r\n", "+OK\r\n1 abc\r\n.\r\n+OK 1 120\r\n", true},
		{"UIDL\r\nSTAT\r\n", "+OK\r\n1 abc\r\n.\r\n+OK 1 1", false},
		{"CAPA\r\n", "+OK\r\nTOP\r\n.\r\n", true},
		{"TOP 1 0\r\n", "+OK\r\n.\r\n", true},
		{"TOP 1 0\r\n", "+OK\r\n", false},
		{"NOOP\r\n", "+OK\r\n", true},
		{"retr 1\n", "+OK\n.\n", true}, // bare LF from a sloppy server
	} {
		for _, chunk := range []int{1, 2, 5, 1 << 20} {
			f := &Framer{}
			f.ClientData([]byte(tc.cmds))
			s := tc.resp
			for len(s) > 0 {
				n := min(chunk, len(s))
				f.ServerData([]byte(s[:n]))
				s = s[n:]
			}
			if got := f.AtBoundary(); got != tc.boundary {
				t.Errorf("%q then %q (chunks of %d): boundary %v, want %v", tc.cmds, tc.resp, chunk, got, tc.boundary)
			}
		}
	}
}

func TestFramerPipelineOverflow(t *testing.T) {
	f := &Framer{}
	for i := 0; i < maxPipelined+1; i++ {
		f.ClientData([]byte("NOOP\r\n"))
	}
	if f.AtBoundary() {
		t.Fatal("a framer that lost track reports a boundary")
	}
}

func TestFramerLongCommand(t *testing.T) {
	f := &Framer{}
	long := make([]byte, 4096)
	for i := range long {
		long[i] = 'A'
	}
	f.ClientData([]byte("RETR "))
	f.ClientData(long)
	f.ClientData([]byte("\r\n"))
	if len(f.cmd) != 0 || len(f.expect) != 1 || f.expect[0] {
		t.Fatalf("a long line is one single-line command: %v", f.expect)
	}
}

func FuzzFramer(f *testing.F) {
	f.Add([]byte("RETR 1\r\nLIST\r\n"), []byte("+OK\r\n.\r\n-ERR x\r\n"))
	f.Fuzz(func(t *testing.T, cmds, resp []byte) {
		fr := &Framer{}
		fr.ClientData(cmds)
		k := fr.ServerData(resp)
		if k > len(resp) || k < -1 {
			t.Fatalf("boundary %d outside the chunk", k)
		}
		if len(fr.cmd) > maxCmdLine || len(fr.expect) > maxPipelined {
			t.Fatal("unbounded state")
		}
	})
}
