package auth

import (
	"errors"
	"testing"
)

// FuzzParseResponse: any bytes are parsed without panicking; a complete
// answer parses the same from exactly its own bytes, and every strict
// prefix of it is incomplete (so reading in pieces changes nothing).
func FuzzParseResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.1\r\nAuth-Port: 143\r\n\r\n",
		"HTTP/1.1 500 x\r\nAuth-Status: Invalid login\r\nAuth-Wait: 3\r\nContent-Length: 0\r\n\r\n",
		"Auth-Status: WAIT\nAuth-Wait: 99999999999999\n\n",
		"HTTP/1.0 200\rX",
		"Auth-Status\r\n\r\n",
		"\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := parseResponse(b)
		if err != nil {
			if r != nil || n != 0 {
				t.Fatal("result with an error")
			}
			if !errors.Is(err, errIncomplete) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("n=%d of %d", n, len(b))
		}
		r2, n2, err := parseResponse(b[:n])
		if err != nil || n2 != n || *r2 != *r {
			t.Fatalf("reparse: %+v %d %v vs %+v %d", r2, n2, err, r, n)
		}
		for i := 0; i < n; i++ {
			if _, _, err := parseResponse(b[:i]); !errors.Is(err, errIncomplete) {
				t.Fatalf("prefix %d of %q: %v", i, b[:n], err)
			}
		}
		if r.WaitSecs < -1 || r.WaitSecs > maxAtoi {
			t.Fatalf("wait %d", r.WaitSecs)
		}
	})
}
