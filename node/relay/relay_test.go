package relay

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/netx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func wrap(t testing.TB, c *net.TCPConn) *netx.Conn {
	nc, err := netx.NewConn(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

func selfSigned(t testing.TB) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type rig struct {
	client  net.Conn // the mail client's end
	backend net.Conn // the mail server's end
	sess    *Session
	stats   chan Stats
}

// newRig builds client <-> [relay] <-> backend. clientTLS puts TLS between
// the client and the relay, backendTLS between the relay and the backend.
// A plain side's socket is of kind k.
func newRig(t *testing.T, e *Engine, k plain, clientTLS, backendTLS bool, toBackend, toClient []byte, opts Options) *rig {
	t.Helper()
	cApp, cProxy := tcpPair(t)
	bProxy, bApp := tcpPair(t)
	r := &rig{client: cApp, backend: bApp, stats: make(chan Stats, 1)}
	var cs, bs Side
	cert := selfSigned(t)
	var wg sync.WaitGroup
	if !clientTLS {
		cs.Conn = k.sock(t, cProxy)
	} else {
		c := wrap(t, cProxy)
		cs.Conn = c
		srv := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		cli := tls.Client(cApp, &tls.Config{InsecureSkipVerify: true})
		wg.Add(1)
		go func() { defer wg.Done(); _ = cli.Handshake() }()
		if err := srv.Handshake(); err != nil {
			t.Fatal(err)
		}
		cs.TLS = srv
		r.client = cli
	}
	if !backendTLS {
		bs.Conn = k.sock(t, bProxy)
	} else {
		c := wrap(t, bProxy)
		bs.Conn = c
		srv := tls.Server(bApp, &tls.Config{Certificates: []tls.Certificate{cert}})
		cli := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Handshake() }()
		if err := cli.Handshake(); err != nil {
			t.Fatal(err)
		}
		bs.TLS = cli
		r.backend = srv
	}
	wg.Wait()
	user := opts.OnClose
	opts.OnClose = func(s Stats) {
		if user != nil {
			user(s)
		}
		r.stats <- s
	}
	// Deadlines left over from the pre-login phase must not survive.
	_ = cs.Conn.SetDeadline(time.Now().Add(50 * time.Millisecond))
	_ = bs.Conn.SetDeadline(time.Now().Add(50 * time.Millisecond))
	r.sess = e.Start(cs, bs, toBackend, toClient, opts)
	if got, want := r.sess.LocalAddr().String(), cApp.RemoteAddr().String(); got != want {
		t.Errorf("session's local address %s, want %s", got, want)
	}
	t.Cleanup(func() { r.client.Close(); r.backend.Close() })
	return r
}

func testEngine(t *testing.T) *Engine {
	e, err := NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func payload(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestRelayBothWays(t *testing.T) { eachKind(t, testRelayBothWays) }

func testRelayBothWays(t *testing.T, k plain) {
	for _, mode := range []struct {
		name               string
		clientTLS, backTLS bool
	}{{"plain", false, false}, {"client-tls", true, false}, {"backend-tls", false, true}, {"both-tls", true, true}} {
		t.Run(mode.name, func(t *testing.T) {
			e := testEngine(t)
			r := newRig(t, e, k, mode.clientTLS, mode.backTLS, []byte("pipelined\r\n"), []byte("early\r\n"), Options{})
			up := payload(3<<20 + 17)
			down := payload(5<<20 + 3)
			var wg sync.WaitGroup
			var gotUp, gotDown []byte
			var errUp, errDown error
			wg.Add(4)
			go func() { defer wg.Done(); _, _ = r.client.Write(up) }()
			go func() { defer wg.Done(); _, _ = r.backend.Write(down) }()
			go func() {
				defer wg.Done()
				gotUp = make([]byte, len("pipelined\r\n")+len(up))
				_, errUp = io.ReadFull(r.backend, gotUp)
			}()
			go func() {
				defer wg.Done()
				gotDown = make([]byte, len("early\r\n")+len(down))
				_, errDown = io.ReadFull(r.client, gotDown)
			}()
			wg.Wait()
			if errUp != nil || errDown != nil {
				t.Fatal(errUp, errDown)
			}
			if !bytes.Equal(gotUp, append([]byte("pipelined\r\n"), up...)) {
				t.Error("client->backend bytes differ")
			}
			if !bytes.Equal(gotDown, append([]byte("early\r\n"), down...)) {
				t.Error("backend->client bytes differ")
			}
			r.client.Close()
			r.backend.Close()
			st := <-r.stats
			if st.ClientToBackend != int64(len(gotUp)) || st.BackendToClient != int64(len(gotDown)) {
				t.Errorf("stats %+v, want %d/%d", st, len(gotUp), len(gotDown))
			}
			if e.Len() != 0 {
				t.Errorf("%d sessions left", e.Len())
			}
		})
	}
}

func TestRelayHalfClose(t *testing.T) { eachKind(t, testRelayHalfClose) }

func testRelayHalfClose(t *testing.T, k plain) {
	for _, clientTLS := range []bool{false, true} {
		e := testEngine(t)
		r := newRig(t, e, k, clientTLS, false, nil, nil, Options{})
		// The client is done sending; the backend must see EOF but may still answer.
		if _, err := r.client.Write([]byte("a LOGOUT\r\n")); err != nil {
			t.Fatal(err)
		}
		if cw, ok := r.client.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		got, err := io.ReadAll(r.backend)
		if err != nil || string(got) != "a LOGOUT\r\n" {
			t.Fatalf("backend read %q %v", got, err)
		}
		if _, err := r.backend.Write([]byte("* BYE\r\na OK\r\n")); err != nil {
			t.Fatal(err)
		}
		r.backend.Close()
		got, _ = io.ReadAll(r.client)
		if string(got) != "* BYE\r\na OK\r\n" {
			t.Fatalf("client read %q", got)
		}
		st := <-r.stats
		if st.Reason != ReasonClosed {
			t.Errorf("reason %q err %v", st.Reason, st.Err)
		}
	}
}

func TestRelayIdleTimeout(t *testing.T) { eachKind(t, testRelayIdleTimeout) }

func testRelayIdleTimeout(t *testing.T, k plain) {
	e, err := newEngine(20 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	r := newRig(t, e, k, false, false, nil, nil, Options{IdleTimeout: 500 * time.Millisecond})
	start := time.Now()
	// Activity keeps it alive.
	for i := 0; i < 5; i++ {
		_, _ = r.client.Write([]byte("x"))
		buf := make([]byte, 1)
		if _, err := io.ReadFull(r.backend, buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case st := <-r.stats:
		if st.Reason != ReasonIdle {
			t.Fatalf("reason %q", st.Reason)
		}
		if time.Since(start) < 700*time.Millisecond {
			t.Fatalf("closed too early: %v", time.Since(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("idle session not closed")
	}
	if _, err := r.client.Read(make([]byte, 1)); err == nil {
		t.Fatal("client connection still open")
	}
}

func TestRelayHalfClosedTimeout(t *testing.T) { eachKind(t, testRelayHalfClosedTimeout) }

// A session one side of which ended its stream while the other keeps its
// own open closes once nothing has moved for halfCloseIdle.
func testRelayHalfClosedTimeout(t *testing.T, k plain) {
	old := halfCloseIdle
	halfCloseIdle = 300 * time.Millisecond
	t.Cleanup(func() { halfCloseIdle = old })
	e, err := newEngine(20 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	r := newRig(t, e, k, false, false, nil, nil, Options{})
	if _, err := r.client.Write([]byte("a LOGOUT\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = r.client.(*net.TCPConn).CloseWrite()
	_ = r.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(r.backend); err != nil || string(got) != "a LOGOUT\r\n" {
		t.Fatalf("backend read %q, %v (want the bytes, then end of stream)", got, err)
	}
	start := time.Now()
	// The backend keeps its end open and silent.
	select {
	case st := <-r.stats:
		if st.Reason != ReasonHalfOpen {
			t.Fatalf("reason %q", st.Reason)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("closed after %v, before halfCloseIdle", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("half-closed session not closed")
	}
}

func TestRelayResetClosesSession(t *testing.T) { eachKind(t, testRelayResetClosesSession) }

func testRelayResetClosesSession(t *testing.T, k plain) {
	e := testEngine(t)
	r := newRig(t, e, k, false, false, nil, nil, Options{})
	_ = r.backend.(*net.TCPConn).SetLinger(0)
	r.backend.Close()
	select {
	case st := <-r.stats:
		if st.Reason != ReasonBackend && st.Reason != ReasonClosed {
			t.Fatalf("reason %q", st.Reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session not closed after backend reset")
	}
}

// Idle sessions must not hold goroutines: that is what makes 14,000
// sessions per node cheap.
func TestIdleSessionsHoldNoGoroutines(t *testing.T) { eachKind(t, testIdleSessionsHoldNoGoroutines) }

func testIdleSessionsHoldNoGoroutines(t *testing.T, k plain) {
	e := testEngine(t)
	base := runtime.NumGoroutine()
	const n = 200
	rigs := make([]*rig, n)
	for i := range rigs {
		rigs[i] = newRig(t, e, k, i%2 == 0, false, nil, nil, Options{})
		// One exchange each way, then idle.
		_, _ = rigs[i].client.Write([]byte("a NOOP\r\n"))
		buf := make([]byte, 8)
		if _, err := io.ReadFull(rigs[i].backend, buf); err != nil {
			t.Fatal(err)
		}
		_, _ = rigs[i].backend.Write([]byte("a OK\r\n"))
		if _, err := io.ReadFull(rigs[i].client, buf[:6]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	var extra int
	for time.Now().Before(deadline) {
		extra = runtime.NumGoroutine() - base
		if extra <= n/10 { // TLS client ends in the test hold none either; allow slack
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if extra > n/10 {
		t.Fatalf("%d idle sessions hold %d goroutines", n, extra)
	}
	t.Logf("%d idle sessions, %d extra goroutines", n, extra)
	// And they still work after parking.
	for _, r := range rigs {
		_, _ = r.client.Write([]byte("b NOOP\r\n"))
		buf := make([]byte, 8)
		if _, err := io.ReadFull(r.backend, buf); err != nil || string(buf) != "b NOOP\r\n" {
			t.Fatalf("after park: %q %v", buf, err)
		}
	}
}

func BenchmarkRelayPlain(b *testing.B)     { benchRelay(b, plain{}, false, false, nil) }
func BenchmarkRelayClientTLS(b *testing.B) { benchRelay(b, plain{}, true, false, nil) }

// Framed: the backend sends 1 MiB responses as literals, as a FETCH
// does, with a framer following them (what a relayed IMAP session does).
func BenchmarkRelayPlainFramed(b *testing.B)     { benchRelay(b, plain{}, false, true, nil) }
func BenchmarkRelayClientTLSFramed(b *testing.B) { benchRelay(b, plain{}, true, true, nil) }

// The same with raw descriptors (*netx.FD) for the plain sides.
func BenchmarkRelayPlainFD(b *testing.B) { benchRelay(b, plain{w: testWaiter(b)}, false, false, nil) }
func BenchmarkRelayClientTLSFD(b *testing.B) {
	benchRelay(b, plain{w: testWaiter(b)}, true, false, nil)
}
func BenchmarkRelayPlainFramedFD(b *testing.B) {
	benchRelay(b, plain{w: testWaiter(b)}, false, true, nil)
}

// benchRelay sends 1 MiB chunks backend -> client b.N times; counters, if
// set, are the session's Options.Counters. Plain sides are of kind k.
func benchRelay(b *testing.B, k plain, clientTLS, framed bool, counters *Counters) {
	e, _ := NewEngine()
	defer e.Close()
	cApp, cProxy := tcpPair(b)
	bProxy, bApp := tcpPair(b)
	var cs Side
	var client net.Conn = cApp
	if !clientTLS {
		cs.Conn = k.sock(b, cProxy)
	} else {
		c := wrap(b, cProxy)
		cs.Conn = c
		cert := selfSigned(b)
		srv := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		cli := tls.Client(cApp, &tls.Config{InsecureSkipVerify: true})
		go func() { _ = cli.Handshake() }()
		if err := srv.Handshake(); err != nil {
			b.Fatal(err)
		}
		cs.TLS = srv
		client = cli
	}
	opts := Options{Counters: counters}
	chunk := make([]byte, 1<<20)
	if framed {
		opts.Framer = &lineFramer{}
		head := []byte(fmt.Sprintf("LIT %d\n", len(chunk)-len("LIT 1048576\n")-len(" end\n")))
		copy(chunk, head)
		copy(chunk[len(chunk)-len(" end\n"):], " end\n")
	}
	e.Start(cs, Side{Conn: k.sock(b, bProxy)}, nil, nil, opts)
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := client.Read(buf); err != nil {
				close(done)
				return
			}
		}
	}()
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	r0 := cpuTime()
	var w0 uint64
	if k.w != nil {
		w0 = k.w.Waited()
	}
	for i := 0; i < b.N; i++ {
		if _, err := bApp.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	bApp.Close()
	<-done
	// The process's CPU time (the relay's and the test's two ends), a
	// steadier figure than the throughput on a shared machine.
	b.ReportMetric(float64(cpuTime()-r0)/float64(b.N), "cpu-ns/op")
	if k.w != nil {
		b.ReportMetric(float64(k.w.Waited()-w0)/float64(b.N), "waits/op")
	}
	client.Close()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
}

// A slow reader forces the relay to wait for the destination to drain
// (EAGAIN on splice into a full socket buffer) many times.
func TestRelaySlowReader(t *testing.T) { eachKind(t, testRelaySlowReader) }

func testRelaySlowReader(t *testing.T, k plain) {
	for _, clientTLS := range []bool{false, true} {
		e := testEngine(t)
		r := newRig(t, e, k, clientTLS, false, nil, nil, Options{})
		data := payload(4 << 20)
		go func() { _, _ = r.backend.Write(data); r.backend.Close() }()
		var got []byte
		buf := make([]byte, 32<<10)
		for i := 0; ; i++ {
			n, err := r.client.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
			if i%16 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("tls=%v: got %d bytes, want %d", clientTLS, len(got), len(data))
		}
	}
}

// Pre-login deadlines are cleared at the hand-off: a session idle for
// longer than they allowed still works.
func TestRelayClearsDeadlines(t *testing.T) { eachKind(t, testRelayClearsDeadlines) }

func testRelayClearsDeadlines(t *testing.T, k plain) {
	e := testEngine(t)
	r := newRig(t, e, k, false, false, nil, nil, Options{})
	time.Sleep(200 * time.Millisecond) // past the 50 ms deadlines newRig set
	_, _ = r.client.Write([]byte("a NOOP\r\n"))
	buf := make([]byte, 8)
	if _, err := io.ReadFull(r.backend, buf); err != nil {
		t.Fatalf("after the old deadline: %v", err)
	}
	_, _ = r.backend.Write([]byte("a OK\r\n"))
	if _, err := io.ReadFull(r.client, buf[:6]); err != nil {
		t.Fatalf("after the old deadline: %v", err)
	}
}

// queued waits until the socket behind c has n bytes waiting to be read.
func queued(t *testing.T, c Socket, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var q int
		var qerr error
		if err := c.Raw().Control(func(fd uintptr) { q, qerr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
			t.Fatal(err)
		}
		if qerr != nil {
			t.Fatal(qerr)
		}
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes queued", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A plain source parks at Start without reading (pump.begin): bytes that
// were already waiting in its socket must still be relayed at once, by the
// level-triggered registration, in both directions.
func TestRelayBytesWaitingAtStart(t *testing.T) { eachKind(t, testRelayBytesWaitingAtStart) }

func testRelayBytesWaitingAtStart(t *testing.T, k plain) {
	for _, framed := range []bool{false, true} {
		t.Run(fmt.Sprintf("framed=%v", framed), func(t *testing.T) {
			e := testEngine(t)
			cApp, cProxy := tcpPair(t)
			bProxy, bApp := tcpPair(t)
			t.Cleanup(func() { cApp.Close(); bApp.Close() })
			cs, bs := Side{Conn: k.sock(t, cProxy)}, Side{Conn: k.sock(t, bProxy)}
			up, down := []byte("a SELECT INBOX\r\n"), []byte("* 1 EXISTS\r\n")
			if _, err := cApp.Write(up); err != nil {
				t.Fatal(err)
			}
			if _, err := bApp.Write(down); err != nil {
				t.Fatal(err)
			}
			queued(t, cs.Conn, len(up))
			queued(t, bs.Conn, len(down))
			var opts Options
			if framed {
				opts.Framer = &lineFramer{}
			}
			e.Start(cs, bs, nil, nil, opts)
			_ = cApp.SetDeadline(time.Now().Add(5 * time.Second))
			_ = bApp.SetDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, len(up))
			if _, err := io.ReadFull(bApp, got); err != nil || !bytes.Equal(got, up) {
				t.Fatalf("backend got %q, %v", got, err)
			}
			got = make([]byte, len(down))
			if _, err := io.ReadFull(cApp, got); err != nil || !bytes.Equal(got, down) {
				t.Fatalf("client got %q, %v", got, err)
			}
		})
	}
}
