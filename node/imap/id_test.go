package imap

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/routing"
)

// The proxy's own ID fields in these tests.
var (
	idRemote = netip.MustParseAddrPort("198.51.100.7:4242")
	idLocal  = netip.MustParseAddrPort("127.0.0.1:143")
	idSID    = "TEST"
)

// forwardedID parses the ID command the proxy wrote for the backend, the
// way a backend would (as a client command), and checks what no client
// input may change:
//
//   - it is one well-formed command, "P3 ID (...)", of printable ASCII
//     quoted strings and NILs only (no literal, nothing a backend could
//     misparse), with at most 30 pairs (RFC 2971);
//   - the proxy's five fields come first, each once, with the proxy's
//     values; no other key starts with "x-" in any case;
//   - the client's pairs that follow are a subsequence, in order, of the
//     pairs the client sent (clientPairs), never a shifted recombination.
//
// It returns the client's forwarded pairs.
func forwardedID(t testing.TB, out []byte, remote, local netip.AddrPort, sid string, clientPairs [][2]string) [][2]string {
	t.Helper()
	if !bytes.HasSuffix(out, []byte(")\r\n")) || bytes.Count(out, []byte("\r\n")) != 1 {
		t.Fatalf("not one line: %q", out)
	}
	for _, c := range out[:len(out)-2] {
		if c < 0x20 || c > 0x7e {
			t.Fatalf("byte %#x in the ID line %q", c, out)
		}
	}
	rd := imapwire.NewReader(bufio.NewReader(bytes.NewReader(out)), imapwire.Limits{MaxLine: 1 << 20, MaxLiteral: 1 << 20}, func() error {
		t.Fatalf("literal in the ID line %q", out)
		return nil
	})
	cmd, err := rd.ReadCommand()
	if err != nil {
		t.Fatalf("backend cannot parse %q: %v", out, err)
	}
	if _, err := rd.ReadCommand(); err != io.EOF {
		t.Fatalf("more than one command in %q: %v", out, err)
	}
	if cmd.Tag != tagID || cmd.Name != "ID" || len(cmd.Args) != 1 || cmd.Args[0].Kind != imapwire.List {
		t.Fatalf("not an ID list: %q", out)
	}
	l := cmd.Args[0].List
	if len(l)%2 != 0 || len(l)/2 > maxIDPairs || len(l)/2 < proxyIDPairs {
		t.Fatalf("%d elements in %q", len(l), out)
	}
	want := [][2]string{
		{"x-originating-ip", remote.Addr().String()},
		{"x-originating-port", fmt.Sprint(remote.Port())},
		{"x-connected-ip", local.Addr().String()},
		{"x-connected-port", fmt.Sprint(local.Port())},
		{"x-session-id", sid},
	}
	var fwd [][2]string
	for i := 0; i < len(l); i += 2 {
		k, v := l[i], l[i+1]
		if k.Kind != imapwire.Quoted || (v.Kind != imapwire.Quoted && v.Kind != imapwire.NIL) {
			t.Fatalf("pair %d of %q is %v %v", i/2, out, k.Kind, v.Kind)
		}
		val := v.Value
		if v.Kind == imapwire.NIL {
			val = "\x00NIL"
		}
		if i/2 < proxyIDPairs {
			if w := want[i/2]; k.Value != w[0] || val != w[1] {
				t.Fatalf("proxy field %d is %q %q, want %q %q, in %q", i/2, k.Value, val, w[0], w[1], out)
			}
			continue
		}
		if strings.HasPrefix(strings.ToLower(k.Value), "x-") {
			t.Fatalf("client pair with reserved key %q %q reached the backend: %q", k.Value, val, out)
		}
		fwd = append(fwd, [2]string{k.Value, val})
	}
	// Subsequence of the client's pairs, in order.
	j := 0
	for _, p := range fwd {
		for j < len(clientPairs) && clientPairs[j] != p {
			j++
		}
		if j == len(clientPairs) {
			t.Fatalf("forwarded pair %q %q is not one the client sent (%q); ID line %q", p[0], p[1], clientPairs, out)
		}
		j++
	}
	return fwd
}

// idFlow runs client bytes through the parser and the ID handling as the
// handler does (the last valid ID command wins), then writes the backend's
// ID command and checks it. It returns the forwarded client pairs.
func idFlow(t testing.TB, data []byte) [][2]string {
	rd := imapwire.NewReader(bufio.NewReader(bytes.NewReader(data)), imapwire.Limits{MaxLine: 8192, MaxLiteral: 8192}, func() error { return nil })
	var params []idParam
	var sent [][2]string
	for i := 0; i <= len(data); i++ {
		cmd, err := rd.ReadCommand()
		if err != nil {
			if imapwire.Fatal(err) || err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			continue
		}
		if cmd.Name != "ID" {
			continue
		}
		p, msg := clientIDParams(cmd)
		if msg != "" {
			continue
		}
		params, sent = p, nil
		if l := cmd.Args[0].List; cmd.Args[0].Kind == imapwire.List {
			for i := 0; i+1 < len(l); i += 2 {
				v := l[i+1].Value
				if l[i+1].Kind == imapwire.NIL {
					v = "\x00NIL"
				}
				sent = append(sent, [2]string{l[i].Value, v})
			}
		}
	}
	var out bytes.Buffer
	appendID(&out, idRemote, idLocal, idSID, params)
	return forwardedID(t, out.Bytes(), idRemote, idLocal, idSID, sent)
}

// The attack from issue 10: a key sent as a literal containing CR LF. The
// writer used to drop the unquotable key but keep its value, so the list
// shifted and the client's "x-originating-ip" "10.66.6.6" became a pair.
func TestIDSmugglingLiteralKey(t *testing.T) {
	attack := "a ID ({4+}\r\nx\r\ny \"x-originating-ip\" \"10.66.6.6\" \"zz\" \"x-originating-port\" \"1\")\r\n"
	fwd := idFlow(t, []byte(attack))
	// ("x\r\ny", "x-originating-ip") is dropped whole; ("10.66.6.6",
	// "zz") is a harmless pair; ("x-originating-port", "1") is reserved.
	want := [][2]string{{"10.66.6.6", "zz"}}
	if fmt.Sprint(fwd) != fmt.Sprint(want) {
		t.Fatalf("forwarded %q, want %q", fwd, want)
	}
}

func TestIDForwardingRules(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{`a ID ("name" "Thunderbird" "version" NIL)`, `[[name Thunderbird] [version ` + "\x00" + `NIL]]`},
		{`a ID ("X-Originating-IP" "6.6.6.6" "name" "m")`, `[[name m]]`},
		{`a ID ("x-forward-user" "root" "x-proxy-ttl" "9" "x-session-ext-id" "s" "x-connected-ip" "1.2.3.4" "os" "linux")`, `[[os linux]]`},
		{"a ID (\"name\" {4+}\r\na\r\nb \"os\" \"x\")", `[[os x]]`}, // value with CR LF
		{"a ID ({1+}\r\n\x00 \"v\" \"os\" \"x\")", `[]`},            // NUL: BAD
		{`a ID ("name" "jörg" "os" "x")`, `[[os x]]`},               // 8-bit value
		{`a ID ("" "v" "os" "x")`, `[[os x]]`},                      // empty key
		{`a ID ("name" "" "os" "x")`, `[[os x]]`},                   // empty value
		{"a ID (\"na\tme\" \"v\" \"os\" \"x\")", `[[os x]]`},        // control byte
		{`a ID ("a\"b" "c\\d")`, `[[a"b c\d]]`},                     // escapes survive
		{`a ID NIL`, `[]`},
	} {
		fwd := idFlow(t, []byte(tc.in+"\r\n"))
		if got := fmt.Sprint(fwd); got != tc.want {
			t.Errorf("%q: forwarded %q, want %q", tc.in, got, tc.want)
		}
	}
	// 30 client pairs: 25 are forwarded (30 in all with the proxy's).
	var b strings.Builder
	b.WriteString("a ID (")
	for i := 0; i < maxIDPairs; i++ {
		fmt.Fprintf(&b, "\"k%d\" \"v\" ", i)
	}
	b.WriteString(")\r\n")
	s := strings.Replace(b.String(), " )", ")", 1)
	b.Reset()
	b.WriteString(s)
	if fwd := idFlow(t, []byte(b.String())); len(fwd) != maxClientIDPairs {
		t.Errorf("forwarded %d of 30 pairs, want %d", len(fwd), maxClientIDPairs)
	}
}

// Property: random ID lists mixing reserved keys (in any case), CR, LF,
// NUL, control and 8-bit bytes, quoted strings, synchronizing and
// non-synchronizing literals and NILs never get a reserved key with a
// client's value to the backend, and never shift the list.
func TestIDForwardingProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(10))
	plain := []string{"x-originating-ip", "X-ORIGINATING-PORT", "x-connected-ip", "x-session-id", "x-forward-x", "X-Proxy-TTL",
		"x-", "x", "X", "-", "name", "version", "10.66.6.6", " ", "\"", "\\", "(", ")", "{", "}", "NIL", "{4+}"}
	hostile := []string{"\r\n", "\r", "\n", "\x00", "\t", "\x7f", "é", "\xff"}
	str := func() string {
		var s strings.Builder
		for n := rng.Intn(3); n >= 0; n-- {
			if rng.Intn(6) == 0 {
				s.WriteString(hostile[rng.Intn(len(hostile))])
			} else {
				s.WriteString(plain[rng.Intn(len(plain))])
			}
		}
		return s.String()
	}
	enc := func(s string, value bool) string {
		switch rng.Intn(4) {
		case 0:
			return fmt.Sprintf("{%d+}\r\n%s", len(s), s)
		case 1:
			return fmt.Sprintf("{%d}\r\n%s", len(s), s)
		case 2:
			if value && rng.Intn(3) == 0 {
				return "NIL"
			}
		}
		if q, ok := imapwire.Quote(s); ok {
			return q
		}
		return fmt.Sprintf("{%d+}\r\n%s", len(s), s)
	}
	forwarded := 0
	for i := 0; i < 3000; i++ {
		var b strings.Builder
		b.WriteString("a ID (")
		var elems []string
		for n := rng.Intn(31); n > 0; n-- {
			elems = append(elems, enc(str(), false), enc(str(), true))
		}
		b.WriteString(strings.Join(elems, " ") + ")\r\n")
		if len(idFlow(t, []byte(b.String()))) > 0 {
			forwarded++
		}
	}
	// The generator must reach the writer with client pairs, not only
	// produce commands answered BAD.
	if forwarded < 300 {
		t.Fatalf("only %d of 3000 random ID commands forwarded a client pair", forwarded)
	}
	t.Logf("%d of 3000 random ID commands forwarded client pairs", forwarded)
}

func FuzzIDForwarding(f *testing.F) {
	for _, s := range []string{
		"a ID ({4+}\r\nx\r\ny \"x-originating-ip\" \"10.66.6.6\" \"zz\" \"x-originating-port\" \"1\")\r\n",
		"a ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n",
		"a ID ({16}\r\nx-originating-ip {9}\r\n10.66.6.6)\r\n",
		"a ID (\"X-Originating-Ip\" \"1.2.3.4\")\r\nb ID NIL\r\nc ID (\"a\" {2+}\r\n\r\n)\r\n",
		"a ID (\"k\" \"v\\\"\" \"\\\\\" NIL)\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { idFlow(t, data) })
}

// Against the recording backend: the attack's x-originating-ip never
// reaches the backend, which sees the proxy's fields with the real client
// address and the login.
func TestIDSmugglingRecordingBackend(t *testing.T) {
	fb := newFakeBackend(t, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] fake")
	r := newRig(t, fb.port(), listener(routing.TLSNone, nil, true))
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runDialog(t, c, []step{
		{"a ID ({4+}\r\nx\r\ny \"x-originating-ip\" \"10.66.6.6\" \"zz\" \"x-originating-port\" \"666\")\r\n", "a OK"},
		{"b LOGIN alice secret\r\n", "b OK"},
	})
	if h := <-r.results; h == nil {
		t.Fatal("no handoff")
	}
	var idLine string
	for _, l := range strings.Split(fb.received(), "\n") {
		if strings.HasPrefix(l, tagID+" ID ") {
			idLine = l
		}
	}
	if idLine == "" {
		t.Fatalf("no ID at the backend: %q", fb.received())
	}
	fwd := forwardedID(t, []byte(idLine+"\r\n"), idRemote, idLocal, idSID, [][2]string{{"x\r\ny", "x-originating-ip"}, {"10.66.6.6", "zz"}, {"x-originating-port", "666"}})
	if fmt.Sprint(fwd) != "[[10.66.6.6 zz]]" {
		t.Fatalf("forwarded %q", fwd)
	}
}

// A backend that does not accept the ID carrying the client's address
// must not get the login used: it would have checked and logged the
// proxy's address instead of the client's. The client is told the backend
// is unavailable, not that its password is wrong.
func TestIDRefusedFailsClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] fake\r\n")
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			switch {
			case strings.HasPrefix(line, tagID+" "):
				io.WriteString(c, tagID+" BAD not today\r\n")
			case strings.HasPrefix(line, tagLogin+" "):
				io.WriteString(c, tagLogin+" OK [CAPABILITY IMAP4rev1] Logged in\r\n")
			}
		}
	}()
	r := newRig(t, ln.Addr().(*net.TCPAddr).Port, listener(routing.TLSNone, nil, true))
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runDialog(t, c, []step{
		{"a LOGIN alice secret\r\n", "a NO [UNAVAILABLE]"},
		{"b LOGOUT\r\n", "b OK"},
	})
	if h := <-r.results; h != nil {
		t.Fatal("handoff after the backend refused the ID")
	}
	ln.Close()
	<-done
}
