package pop3

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// FuzzCommand: line reading and command parsing never panic, never return
// more than the limit, and a parsed keyword is upper-case ASCII.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{"USER alice\r\nPASS secret\r\n", "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", "CAPA\n", "STLS\r\nUSER x\r\n",
		"\x00\xff\r\n", strings.Repeat("A", 300) + "\r\n", "QUIT", "\r\n\r\n", "AUTH\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		var scratch []byte
		for i := 0; i < 100; i++ {
			l, err := readLine(br, 128, &scratch)
			if err == ErrLineTooLong {
				continue
			}
			if err != nil {
				return
			}
			if len(l) > 128 {
				t.Fatalf("line of %d bytes", len(l))
			}
			cmd, ok := parseCommand(l)
			if ok && (cmd.Name != strings.ToUpper(cmd.Name) || cmd.Name == "") {
				t.Fatalf("bad keyword %q", cmd.Name)
			}
		}
	})
}

// FuzzBackendCAPA: the proxy's reading of a backend's greeting and CAPA
// reply is bounded and never panics.
func FuzzBackendCAPA(f *testing.F) {
	f.Add([]byte("+OK ready\r\n+OK\r\nSASL PLAIN\r\nSTLS\r\nXCLIENT\r\n.\r\n"))
	f.Add([]byte("-ERR no\r\n"))
	f.Add([]byte("+OK\r\n+OK\r\n" + strings.Repeat("X\r\n", 100)))
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 32)
		b := &backend{}
		var scratch []byte
		line := func() (string, error) {
			l, err := readLine(br, backendMaxLine, &scratch)
			return string(l), err
		}
		if _, err := line(); err != nil {
			return
		}
		r, err := line()
		if err != nil || !strings.HasPrefix(r, "+OK") {
			return
		}
		b.caps = map[string]string{}
		for n := 0; n <= backendMaxCapas; n++ {
			l, err := line()
			if err != nil || l == "." {
				return
			}
			k, v, _ := strings.Cut(l, " ")
			b.caps[strings.ToUpper(k)] = v
			_ = hasWord(v, "PLAIN")
		}
	})
}
