package auth

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// authServer is a scripted auth_http server: it records each request and
// answers with the reply function's bytes (or does something nastier).
type authServer struct {
	t     *testing.T
	ln    net.Listener
	reply func(n int, req string, c net.Conn) (keep bool)

	mu    sync.Mutex
	reqs  []string
	conns int
	wg    sync.WaitGroup
}

func newAuthServer(t *testing.T, reply func(n int, req string, c net.Conn) bool) *authServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &authServer{t: t, ln: ln, reply: reply}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				for {
					var req strings.Builder
					for {
						line, err := br.ReadString('\n')
						req.WriteString(line)
						if err != nil {
							return
						}
						if line == "\r\n" {
							break
						}
					}
					s.mu.Lock()
					s.reqs = append(s.reqs, req.String())
					n := len(s.reqs)
					s.mu.Unlock()
					if !s.reply(n, req.String(), c) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

// answer replies with fixed text and closes (nginx's HTTP/1.0 way).
func answer(text string) func(int, string, net.Conn) bool {
	return func(_ int, _ string, c net.Conn) bool {
		_, _ = io.WriteString(c, text)
		return false
	}
}

func (s *authServer) url() string { return "http://" + s.ln.Addr().String() + "/auth" }

func (s *authServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reqs...)
}

func (s *authServer) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func newDirector(t *testing.T, url string, mod func(*ClientConfig)) *Director {
	t.Helper()
	cfg := ClientConfig{URL: url, Timeout: 2 * time.Second, Headers: []Header{{"X-Auth-Key", "secret"}}}
	if mod != nil {
		mod(&cfg)
	}
	cl, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &Director{Client: cl, Metrics: NewMetrics(prometheus.NewRegistry()), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func testClient(p routing.Protocol) *session.Client {
	lim := session.DefaultLimits(p)
	return &session.Client{
		ID:       "T1",
		Listener: &session.Listener{Name: "l", Protocol: p, Limits: lim},
		Stream:   &netx.Stream{},
		Remote:   netip.MustParseAddrPort("198.51.100.7:40000"),
		Local:    netip.MustParseAddrPort("192.0.2.1:143"),
		Peer:     netip.MustParseAddrPort("198.51.100.7:40000"),
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func attempt(c *session.Client, n int, user, pass string) *session.Attempt {
	return &session.Attempt{Client: c, Number: n, Creds: session.Credentials{Mechanism: "LOGIN", User: user, Password: pass}}
}

func refusal(t *testing.T, err error) *session.Refusal {
	t.Helper()
	var ref *session.Refusal
	if !errors.As(err, &ref) {
		t.Fatalf("want a refusal, got %v", err)
	}
	return ref
}

func TestRequestIsNginxs(t *testing.T) {
	r := &Request{
		Method: "plain", User: "us er%x", Pass: "p a%ss\\w\x7f\xc3\xa9+&=d\t\r\n",
		Protocol: "imap", Attempt: 3, ClientIP: netip.MustParseAddr("::ffff:127.0.0.1"),
		Proxy: &ProxyInfo{Addr: netip.MustParseAddrPort("[2001:db8::7]:40000"), ServerAddr: netip.MustParseAddrPort("[2001:db8::9]:993")},
		TLS:   &TLSInfo{Protocol: "TLSv1.2", Cipher: "ECDHE-ECDSA-AES256-GCM-SHA384"},
	}
	got := string(appendRequest(nil, false, "127.0.0.77", "/auth", r, []Header{{"X-Secret", "s3cret"}}))
	// What nginx 1.22.1 sent for the same login (recorded).
	want := "GET /auth HTTP/1.0\r\nHost: 127.0.0.77\r\nAuth-Method: plain\r\n" +
		"Auth-User: us%20er%25x\r\nAuth-Pass: p%20a%25ss\\w\x7f\xc3\xa9+&=d%09%0D%0A\r\n" +
		"Auth-Protocol: imap\r\nAuth-Login-Attempt: 3\r\nClient-IP: 127.0.0.1\r\n" +
		"Proxy-Protocol-Addr: 2001:db8::7\r\nProxy-Protocol-Port: 40000\r\n" +
		"Proxy-Protocol-Server-Addr: 2001:db8::9\r\nProxy-Protocol-Server-Port: 993\r\n" +
		"Auth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.2\r\nAuth-SSL-Cipher: ECDHE-ECDSA-AES256-GCM-SHA384\r\n" +
		"X-Secret: s3cret\r\n\r\n"
	if got != want {
		t.Errorf("request:\n got %q\nwant %q", got, want)
	}
}

func TestParseResponse(t *testing.T) {
	cases := []struct {
		in      string
		err     error // nil, errIncomplete or ErrMalformed
		check   func(*Response) bool
		comment string
	}{
		{"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.1\r\nAuth-Port: 143\r\n\r\nbody", nil,
			func(r *Response) bool { return r.OK && r.Server == "10.0.0.1" && r.Port == "143" && !r.HasErr }, "good"},
		{"Auth-Status: OK\nauth-server:   10.0.0.1  \nAUTH-PORT:143\n\n", nil,
			func(r *Response) bool { return r.OK && r.Server == "10.0.0.1" && r.Port == "143" }, "no status line, LF only, case, spaces"},
		{"HTTP/1.0 500 Oops\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n", nil,
			func(r *Response) bool { return r.HasErr && r.Err == "Invalid login or password" && r.WaitSecs == 3 }, "text, wait"},
		{"HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: x\r\n\r\n", nil,
			func(r *Response) bool { return r.Wait && r.WaitSecs == -1 }, "bad Auth-Wait ignored"},
		{"HTTP/1.0 200 OK\r\nAuth-Status\r\nX-Other: a\tb\r\n\r\n", nil,
			func(r *Response) bool { return r.HasErr && r.Err == "" }, "name alone: empty value"},
		{"HTTP/1.0 200 OK\r\nAuth-User: a b \r\nAuth-Pass: %20x\r\n\r\n", nil,
			func(r *Response) bool { return r.HasUser && r.User == "a b" && r.Pass == "%20x" }, "no unescaping, as nginx"},
		{"HTTP/1.0 200 OK\r\nAuth Status: OK\r\n\r\n", ErrMalformed, nil, "space in name"},
		{"HTTP/1.0 200 OK\r\n-Auth: OK\r\n\r\n", ErrMalformed, nil, "name starts with -"},
		{"HTTP/1.0 200 OK\r\nAuth-Status: OK\rX\n\r\n", ErrMalformed, nil, "CR without LF"},
		{"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n\rX", ErrMalformed, nil, "CR without LF at end"},
		{"HTTP/1.0 200 OK\rX\n", ErrMalformed, nil, "bad status line"},
		{"\x00\x01garbage\r\n\r\n", ErrMalformed, nil, "garbage"},
		{"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n", errIncomplete, nil, "no blank line"},
		{"HTT", errIncomplete, nil, "partial status"},
		{"", errIncomplete, nil, "empty"},
	}
	for _, c := range cases {
		r, n, err := parseResponse([]byte(c.in))
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: err %v, want %v", c.comment, err, c.err)
			}
			continue
		}
		if err != nil || !c.check(r) || n > len(c.in) {
			t.Errorf("%s: %+v n=%d err=%v", c.comment, r, n, err)
		}
	}
}

func TestSuccessAndOverrides(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 1143\r\nAuth-User: real@example.com\r\nAuth-Pass: backend-secret\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	c := testClient(routing.IMAP)
	tgt, err := d.Direct(context.Background(), attempt(c, 1, "alice", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Backend.Addr(routing.IMAP) != "10.1.2.3:1143" || tgt.Creds.User != "real@example.com" || tgt.Creds.Password != "backend-secret" {
		t.Fatalf("%+v %+v", tgt.Backend, tgt.Creds)
	}
	want := "GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\nAuth-User: alice\r\nAuth-Pass: pw\r\n" +
		"Auth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 198.51.100.7\r\nX-Auth-Key: secret\r\n\r\n"
	if got := srv.requests(); len(got) != 1 || got[0] != want {
		t.Fatalf("requests %q", got)
	}
	if v := testutil.ToFloat64(d.Metrics.requests.WithLabelValues("ok")); v != 1 {
		t.Errorf("ok requests %v", v)
	}
}

func TestNoOverridesKeepsCredentials(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: ::1\r\nAuth-Port: 110\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	a := attempt(testClient(routing.POP3), 2, "bob", "pw")
	a.Creds.AuthzID = "admin"
	tgt, err := d.Direct(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	want := a.Creds
	want.AuthzID = "" // as nginx
	if tgt.Backend.Addr(routing.POP3) != "[::1]:110" || tgt.Creds != want {
		t.Fatalf("%+v %+v", tgt.Backend, tgt.Creds)
	}
	if r := srv.requests()[0]; !strings.Contains(r, "Auth-Protocol: pop3\r\nAuth-Login-Attempt: 2\r\n") || !strings.Contains(r, "Auth-User: bob\r\n") {
		t.Errorf("request %q", r)
	}
}

func TestFailureWithAndWithoutWait(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	_, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	ref := refusal(t, err)
	if ref.Kind != session.RefuseAuth || ref.Reply != "Invalid login or password" || ref.Wait != 3*time.Second || ref.Close {
		t.Fatalf("%+v", ref)
	}
	srv2 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: Go\x01 away\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), nil)
	_, err = d2.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	ref = refusal(t, err)
	if ref.Kind != session.RefuseAuth || ref.Reply != "Go? away" || ref.Wait != 0 || !ref.Close {
		t.Fatalf("%+v", ref)
	}
	// Auth-Wait is capped by the listener's preauth_timeout.
	c := testClient(routing.IMAP)
	c.Listener.Limits.PreAuthTimeout = time.Second
	_, err = d.Direct(context.Background(), attempt(c, 1, "a", "b"))
	if ref = refusal(t, err); ref.Wait != time.Second {
		t.Fatalf("%+v", ref)
	}
}

func TestWaitRepolls(t *testing.T) {
	srv := newAuthServer(t, func(n int, _ string, c net.Conn) bool {
		if n < 3 {
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: 0\r\n\r\n")
		} else {
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n")
		}
		return false
	})
	d := newDirector(t, srv.url(), nil)
	if _, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 4, "a", "b")); err != nil {
		t.Fatal(err)
	}
	reqs := srv.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests", len(reqs))
	}
	for _, r := range reqs {
		if r != reqs[0] || !strings.Contains(r, "Auth-Login-Attempt: 4\r\n") {
			t.Fatalf("re-polls differ: %q", reqs)
		}
	}
	// A server that says WAIT forever gets the internal error eventually.
	srv2 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), nil)
	_, err := d2.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	if ref := refusal(t, err); ref.Kind != session.RefuseInternal || len(srv2.requests()) != maxWaitPolls {
		t.Fatalf("%+v after %d polls", ref, len(srv2.requests()))
	}
}

// Every way an answer can be unusable gives the internal error.
func TestInternalErrors(t *testing.T) {
	big := "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\nX-Pad: " + strings.Repeat("x", 1024) + "\r\n\r\n"
	cases := []struct {
		name, reply, kind string
	}{
		{"missing server", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Port: 143\r\n\r\n", ErrKindInvalid},
		{"missing port", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n\r\n", ErrKindInvalid},
		{"no status at all", "HTTP/1.0 200 OK\r\n\r\n", ErrKindInvalid},
		{"bad port", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 70000\r\n\r\n", ErrKindInvalid},
		{"host name", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: mail.example.com\r\nAuth-Port: 143\r\n\r\n", ErrKindInvalid},
		{"bad header", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth_Server: 127.0.0.1\r\n\r\n", ErrKindMalformed},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ErrKindMalformed},
		{"oversized", big, ErrKindTooLarge},
		{"closed early", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n", ErrKindIO},
		{"closed at once", "", ErrKindIO},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := newAuthServer(t, answer(c.reply))
			d := newDirector(t, srv.url(), nil)
			_, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
			if ref := refusal(t, err); ref.Kind != session.RefuseInternal || !strings.Contains(ref.Text, srv.ln.Addr().String()) {
				t.Fatalf("%+v", ref)
			}
			if v := testutil.ToFloat64(d.Metrics.errors.WithLabelValues(c.kind)); v != 1 {
				t.Errorf("errors{kind=%s} = %v", c.kind, v)
			}
		})
	}
}

// nginx ignores the status code: a 500 with Auth-Status: OK logs in.
func TestStatusCodeIgnored(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\noops!"))
	d := newDirector(t, srv.url(), nil)
	if _, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b")); err != nil {
		t.Fatal(err)
	}
}

func TestExactly1024BytesIsFine(t *testing.T) {
	head := "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\nX-Pad: "
	pad := 1024 - len(head) - 4
	srv := newAuthServer(t, answer(head+strings.Repeat("x", pad)+"\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	if _, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b")); err != nil {
		t.Fatal(err)
	}
	// Relaxed limits take larger answers.
	srv2 := newAuthServer(t, answer(head+strings.Repeat("x", 4000)+"\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), func(c *ClientConfig) { c.MaxResponse = 16 << 10 })
	if _, err := d2.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b")); err != nil {
		t.Fatal(err)
	}
}

func TestEscapedUserNames(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: nope\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	_, _ = d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "we ird%user\r\nAuth-Status: OK", "p w"))
	r := srv.requests()[0]
	if !strings.Contains(r, "Auth-User: we%20ird%25user%0D%0AAuth-Status:%20OK\r\nAuth-Pass: p%20w\r\n") {
		t.Fatalf("request %q", r)
	}
}

func TestHostileServers(t *testing.T) {
	never := func(_ int, _ string, c net.Conn) bool {
		_, _ = io.Copy(io.Discard, c) // never answers; returns when we close
		return false
	}
	slow := func(_ int, _ string, c net.Conn) bool {
		for _, b := range []byte("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n") {
			if _, err := c.Write([]byte{b}); err != nil {
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
		return false
	}
	huge := func(_ int, _ string, c net.Conn) bool {
		chunk := []byte(strings.Repeat("X-Junk: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n", 1000))
		_, _ = c.Write([]byte("HTTP/1.0 200 OK\r\n"))
		for sent := 0; sent < 10<<20; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return false
			}
		}
		return false
	}
	for _, c := range []struct {
		name  string
		reply func(int, string, net.Conn) bool
		kind  string
	}{
		{"never answers", never, ErrKindTimeout},
		{"slow", slow, ErrKindTimeout},
		{"10 MB", huge, ErrKindTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := newAuthServer(t, c.reply)
			d := newDirector(t, srv.url(), func(cc *ClientConfig) { cc.Timeout = 300 * time.Millisecond })
			start := time.Now()
			_, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
			if ref := refusal(t, err); ref.Kind != session.RefuseInternal {
				t.Fatalf("%+v", ref)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("took %v", el)
			}
			if v := testutil.ToFloat64(d.Metrics.errors.WithLabelValues(c.kind)); v != 1 {
				t.Errorf("errors{kind=%s} = %v", c.kind, v)
			}
		})
	}
	// Nobody listening.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	d := newDirector(t, "http://"+addr+"/", nil)
	_, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	if ref := refusal(t, err); ref.Kind != session.RefuseInternal || testutil.ToFloat64(d.Metrics.errors.WithLabelValues(ErrKindConnect)) != 1 {
		t.Fatalf("%+v", ref)
	}
}

// A shutdown abandons a pending request at once.
func TestCancelled(t *testing.T) {
	srv := newAuthServer(t, func(_ int, _ string, c net.Conn) bool { _, _ = io.Copy(io.Discard, c); return false })
	d := newDirector(t, srv.url(), func(cc *ClientConfig) { cc.Timeout = time.Minute })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := d.Direct(ctx, attempt(testClient(routing.IMAP), 1, "a", "b"))
	refusal(t, err)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v", el)
	}
}

func TestBackendIDAndHostNames(t *testing.T) {
	table := map[string]*routing.Backend{
		"imap2": {ID: "imap2", Host: "10.9.9.9", IMAPPort: 993, TLS: routing.TLSImplicit, Forward: routing.ForwardProxy, State: routing.StateActive},
		"off":   {ID: "off", Host: "10.9.9.8", IMAPPort: 143, State: routing.StateDisabled},
	}
	lookup := func(id string) *routing.Backend { return table[id] }
	srv := newAuthServer(t, func(n int, _ string, c net.Conn) bool {
		switch n {
		case 1:
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: imap2\r\n\r\n")
		case 2:
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: off\r\nAuth-Port: 143\r\n\r\n")
		default:
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: mail.example.com\r\nAuth-Port: 143\r\n\r\n")
		}
		return false
	})
	d := newDirector(t, srv.url(), nil)
	d.Backend = lookup
	d.Relaxed = true
	tgt, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	if err != nil || tgt.Backend.ID != "imap2" || tgt.Backend.TLS != routing.TLSImplicit || tgt.Backend.Forward != routing.ForwardProxy {
		t.Fatalf("%+v %v", tgt, err)
	}
	_, err = d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	if ref := refusal(t, err); ref.Kind != session.RefuseUnavailable {
		t.Fatalf("%+v", ref)
	}
	tgt, err = d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	if err != nil || tgt.Backend.Addr(routing.IMAP) != "mail.example.com:143" {
		t.Fatalf("%+v %v", tgt, err)
	}
}

func TestKeepAlive(t *testing.T) {
	srv := newAuthServer(t, func(_ int, req string, c net.Conn) bool {
		if !strings.HasPrefix(req, "GET /auth HTTP/1.1\r\n") {
			return false
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\nok")
		return true
	})
	d := newDirector(t, srv.url(), func(c *ClientConfig) { c.KeepAlive = true })
	for i := 0; i < 5; i++ {
		if _, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b")); err != nil {
			t.Fatal(i, err)
		}
	}
	if n := srv.connCount(); n != 1 {
		t.Errorf("%d connections for 5 requests", n)
	}
	// A server that closes idle connections: the request is sent again on
	// a new one.
	srv2 := newAuthServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), func(c *ClientConfig) { c.KeepAlive = true })
	for i := 0; i < 3; i++ {
		if _, err := d2.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b")); err != nil {
			t.Fatal(i, err)
		}
	}
	if n := len(srv2.requests()); n != 3 {
		t.Errorf("%d requests", n)
	}
}

func TestUnixSocket(t *testing.T) {
	path := t.TempDir() + "/auth.sock"
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		got <- string(buf[:n])
		_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n")
	}()
	defer ln.Close()
	d := newDirector(t, "unix:"+path+":/check", nil)
	if _, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b")); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !strings.HasPrefix(r, "GET /check HTTP/1.0\r\nHost: localhost\r\n") {
		t.Errorf("request %q", r)
	}
}

func TestParseURL(t *testing.T) {
	for in, want := range map[string][4]string{
		"http://127.0.0.1:9000/auth?x=1": {"tcp", "127.0.0.1:9000", "127.0.0.1", "/auth?x=1"},
		"http://auth.local":              {"tcp", "auth.local:80", "auth.local", "/"},
		"http://[::1]:81/a":              {"tcp", "[::1]:81", "::1", "/a"},
		"unix:/run/auth.sock":            {"unix", "/run/auth.sock", "localhost", "/"},
		"unix:/run/auth.sock:/mail":      {"unix", "/run/auth.sock", "localhost", "/mail"},
	} {
		n, a, h, u, err := ParseURL(in)
		if err != nil || [4]string{n, a, h, u} != want {
			t.Errorf("%s: %q %q %q %q %v", in, n, a, h, u, err)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:9000/auth", "https://x/", "http:///x", "unix:", "unix:rel.sock", "http://u:p@x/"} {
		if _, _, _, _, err := ParseURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCache(t *testing.T) {
	srv := newAuthServer(t, func(_ int, req string, c net.Conn) bool {
		if strings.Contains(req, "Auth-Pass: good\r\n") {
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n")
		} else {
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 1\r\n\r\n")
		}
		return false
	})
	d := newDirector(t, srv.url(), nil)
	d.Cache = NewCache(CacheConfig{PositiveTTL: time.Minute, NegativeTTL: time.Minute, MaxEntries: 2})
	now := time.Now()
	d.Cache.now = func() time.Time { return now }
	try := func(user, pass string) error {
		_, err := d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, user, pass))
		return err
	}
	for i := 0; i < 3; i++ {
		if err := try("alice", "good"); err != nil {
			t.Fatal(err)
		}
		if ref := refusal(t, try("alice", "bad")); ref.Reply != "Invalid login or password" || ref.Wait != time.Second {
			t.Fatalf("%+v", ref)
		}
	}
	if n := len(srv.requests()); n != 2 {
		t.Fatalf("%d requests, want 2 (the rest from the cache)", n)
	}
	m := d.Metrics
	if testutil.ToFloat64(m.cacheHits.WithLabelValues("ok")) != 2 || testutil.ToFloat64(m.cacheHits.WithLabelValues("refused")) != 2 || testutil.ToFloat64(m.cacheMisses) != 2 {
		t.Error("cache metrics")
	}
	// Another listener is another scope.
	other := testClient(routing.IMAP)
	other.Listener.Name = "other"
	if _, err := d.Direct(context.Background(), attempt(other, 1, "alice", "good")); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.requests()); n != 3 {
		t.Fatalf("%d requests: the cache crossed listeners", n)
	}
	// Another password is another key; the oldest entry is evicted.
	if err := try("alice", "other"); err == nil {
		t.Fatal("other password accepted")
	}
	if d.Cache.Len() != 2 {
		t.Fatalf("len %d", d.Cache.Len())
	}
	// Expiry.
	now = now.Add(2 * time.Minute)
	_ = try("alice", "bad")
	if n := len(srv.requests()); n != 5 {
		t.Fatalf("%d requests after expiry", n)
	}
	// Positive caching is off by default; WAIT and errors never cached.
	d2 := newDirector(t, srv.url(), nil)
	d2.Cache = NewCache(CacheConfig{NegativeTTL: time.Minute})
	_, _ = d2.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "alice", "good"))
	_, _ = d2.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "alice", "good"))
	if n := len(srv.requests()); n != 7 {
		t.Fatalf("%d requests: positive answer cached by default", n)
	}
	if NewCache(CacheConfig{}) != nil {
		t.Error("a cache with both halves off")
	}
}

func TestCacheKeyIsKeyed(t *testing.T) {
	a, b := NewCache(CacheConfig{NegativeTTL: time.Second}), NewCache(CacheConfig{NegativeTTL: time.Second})
	if a.key("imap", "", "u", "p") == b.key("imap", "", "u", "p") {
		t.Error("two processes' caches share keys")
	}
	if a.key("imap", "", "u", "p") == a.key("imap", "", "u", "q") || a.key("imap", "", "ab", "c") == a.key("imap", "", "a", "bc") ||
		a.key("imap", "", "u", "p") == a.key("pop3", "", "u", "p") {
		t.Error("key collision")
	}
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("%v %+v", err, problems)
	}
}

func TestCheckHeader(t *testing.T) {
	if CheckHeader("X-Auth-Key", "s e c r e t") != nil {
		t.Error("good header refused")
	}
	for _, h := range [][2]string{{"", "x"}, {"X Key", "x"}, {"-X", "x"}, {"X:", "x"}, {"X", "a\r\nInjected: 1"}} {
		if CheckHeader(h[0], h[1]) == nil {
			t.Errorf("%q accepted", h)
		}
	}
}

// A ManageSieve login: Auth-Protocol sieve, and the port the server names
// is the backend's ManageSieve port.
func TestSieveProtocol(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 4190\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	tgt, err := d.Direct(context.Background(), attempt(testClient(routing.Sieve), 1, "alice", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Backend.Addr(routing.Sieve) != "10.1.2.3:4190" || tgt.Backend.IMAPPort != 0 {
		t.Fatalf("backend %+v", tgt.Backend)
	}
	if got := srv.requests(); len(got) != 1 || !strings.Contains(got[0], "\r\nAuth-Protocol: sieve\r\n") {
		t.Fatalf("requests %q", got)
	}
}

func bearerAttempt(c *session.Client, mech, msg string) *session.Attempt {
	b, err := session.ParseBearer(mech, []byte(msg))
	if err != nil {
		panic(err)
	}
	return &session.Attempt{Client: c, Number: 1, Creds: session.Credentials{Mechanism: mech, User: b.User, Password: b.Token, Bearer: b}}
}

// A bearer login: Auth-Method oauthbearer/xoauth2 with the named user and
// the bare token, as nginx's bearer patch sends them. Without Auth-Pass
// the backend gets the client's message (for Auth-User when given); with
// it, a password login as nginx would make.
func TestBearerRequestAndOverrides(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 143\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	c := testClient(routing.IMAP)
	msg := "n,a=te,st@example.com,\x01auth=Bearer tok/en+1=\x01\x01"
	msg = strings.Replace(msg, "te,st", "te=2Cst", 1)
	tgt, err := d.Direct(context.Background(), bearerAttempt(c, session.MechOAuthBearer, msg))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Creds.Bearer == nil || string(tgt.Creds.Bearer.Message) != msg || tgt.Creds.User != "te,st@example.com" {
		t.Fatalf("creds %+v", tgt.Creds)
	}
	want := "GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: oauthbearer\r\nAuth-User: te,st@example.com\r\nAuth-Pass: tok/en+1=\r\n" +
		"Auth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 198.51.100.7\r\nX-Auth-Key: secret\r\n\r\n"
	if got := srv.requests(); len(got) != 1 || got[0] != want {
		t.Fatalf("requests %q", got)
	}

	srv2 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 4190\r\nAuth-User: carol@mail\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), nil)
	tgt, err = d2.Direct(context.Background(), bearerAttempt(testClient(routing.Sieve), session.MechXOAuth2, "user=carol\x01auth=Bearer T\x01\x01"))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Creds.User != "carol@mail" || tgt.Creds.Password != "T" || string(tgt.Creds.Bearer.Message) != "user=carol@mail\x01auth=Bearer T\x01\x01" {
		t.Fatalf("creds %+v", tgt.Creds)
	}
	if r := srv2.requests()[0]; !strings.Contains(r, "Auth-Method: xoauth2\r\nAuth-User: carol\r\nAuth-Pass: T\r\nAuth-Protocol: sieve\r\n") {
		t.Errorf("request %q", r)
	}

	srv3 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 110\r\nAuth-Pass: backend-secret\r\n\r\n"))
	d3 := newDirector(t, srv3.url(), nil)
	tgt, err = d3.Direct(context.Background(), bearerAttempt(testClient(routing.POP3), session.MechXOAuth2, "user=dan\x01auth=Bearer T\x01\x01"))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Creds.Bearer != nil || tgt.Creds.User != "dan" || tgt.Creds.Password != "backend-secret" || tgt.Creds.Mechanism != "PLAIN" {
		t.Fatalf("creds %+v", tgt.Creds)
	}

	// An Auth-User that would add fields to the message is the auth
	// server's error.
	srv4 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 143\r\nAuth-User: eve\x01auth=Bearer x\r\n\r\n"))
	d4 := newDirector(t, srv4.url(), nil)
	_, err = d4.Direct(context.Background(), bearerAttempt(testClient(routing.IMAP), session.MechXOAuth2, "user=dan\x01auth=Bearer T\x01\x01"))
	if ref := refusal(t, err); ref.Kind != session.RefuseInternal {
		t.Fatalf("%+v", ref)
	}
}

// Auth-Error-SASL: the refusal of a bearer login carries the challenge;
// a password login's does not; garbage is dropped.
func TestBearerErrorSASL(t *testing.T) {
	js := `{"status":"invalid_token"}`
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: Invalid token\r\nAuth-Wait: 1\r\nAuth-Error-SASL: "+base64.StdEncoding.EncodeToString([]byte(js))+"\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	_, err := d.Direct(context.Background(), bearerAttempt(testClient(routing.IMAP), session.MechOAuthBearer, "n,a=a,\x01auth=Bearer t\x01\x01"))
	ref := refusal(t, err)
	if string(ref.Challenge) != js || ref.Reply != "Invalid token" || ref.Wait != time.Second {
		t.Fatalf("%+v", ref)
	}
	_, err = d.Direct(context.Background(), attempt(testClient(routing.IMAP), 1, "a", "b"))
	if ref = refusal(t, err); ref.Challenge != nil {
		t.Fatalf("password login got a challenge: %+v", ref)
	}
	srv2 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: No\r\nAuth-Error-SASL: not base64!\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), nil)
	_, err = d2.Direct(context.Background(), bearerAttempt(testClient(routing.IMAP), session.MechOAuthBearer, "n,a=a,\x01auth=Bearer t\x01\x01"))
	if ref = refusal(t, err); ref.Challenge != nil || ref.Reply != "No" {
		t.Fatalf("%+v", ref)
	}
}

// The cache never answers a bearer login with a password login's answer
// (or the other way round) for the same user and secret.
func TestCacheSeparatesMethods(t *testing.T) {
	srv := newAuthServer(t, func(n int, req string, c net.Conn) bool {
		status := "Invalid login or password"
		if strings.Contains(req, "Auth-Method: xoauth2") {
			status = "OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 143"
		}
		_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: "+status+"\r\n\r\n")
		return false
	})
	d := newDirector(t, srv.url(), nil)
	d.Cache = NewCache(CacheConfig{PositiveTTL: time.Minute, NegativeTTL: time.Minute})
	c := testClient(routing.IMAP)
	if _, err := d.Direct(context.Background(), attempt(c, 1, "dan", "T")); err == nil {
		t.Fatal("password login accepted")
	}
	if _, err := d.Direct(context.Background(), bearerAttempt(c, session.MechXOAuth2, "user=dan\x01auth=Bearer T\x01\x01")); err != nil {
		t.Fatalf("bearer login answered from the password login's cache entry: %v", err)
	}
	if n := len(srv.requests()); n != 2 {
		t.Errorf("%d requests", n)
	}
}

// A submission login: Auth-Protocol smtp (nginx's), the port the server
// names is the backend's submission port, and an approved login is
// verified (a backend trusting the proxy may get XCLIENT LOGIN). A
// refusal keeps its Auth-Error-Code for the SMTP reply.
func TestSubmissionProtocol(t *testing.T) {
	srv := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.1.2.3\r\nAuth-Port: 587\r\n\r\n"))
	d := newDirector(t, srv.url(), nil)
	tgt, err := d.Direct(context.Background(), attempt(testClient(routing.Submission), 1, "alice", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Backend.Addr(routing.Submission) != "10.1.2.3:587" || tgt.Backend.IMAPPort != 0 || !tgt.Verified {
		t.Fatalf("target %+v backend %+v", tgt, tgt.Backend)
	}
	// As nginx without a resolver: Client-Host after Client-IP.
	if got := srv.requests(); len(got) != 1 || !strings.Contains(got[0], "\r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\nClient-IP: 198.51.100.7\r\nClient-Host: [UNAVAILABLE]\r\n") {
		t.Fatalf("requests %q", got)
	}

	srv2 := newAuthServer(t, answer("HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Error-Code: 535 5.7.8\r\nAuth-Wait: 1\r\n\r\n"))
	d2 := newDirector(t, srv2.url(), nil)
	_, err = d2.Direct(context.Background(), attempt(testClient(routing.Submission), 1, "alice", "bad"))
	var ref *session.Refusal
	if !errors.As(err, &ref) || ref.Code != "535 5.7.8" || ref.Reply != "Invalid login or password" || ref.Close {
		t.Fatalf("refusal %+v (%v)", ref, err)
	}
}
