// Command loadmail measures a proxy's cost per idle session for IMAP,
// ManageSieve and SMTP submission with one method, so that the three can be
// compared: it opens N sessions through the proxy at a limited rate, logs
// each in (IMAP LOGIN, ManageSieve AUTHENTICATE "PLAIN", submission EHLO +
// AUTH PLAIN; over implicit TLS, STARTTLS or plaintext), holds them idle,
// and samples the proxy's memory (PSS and RSS over its process tree) before
// the first connection and after a settle time. For submission it can then
// send messages of a given size (DATA or BDAT) through one session and
// report the relay throughput and the proxy's CPU per GB. See
// bench/README.md.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/bench/internal/procstat"
	"github.com/portico-mail/portico/bench/internal/rlimit"
)

type intList []int

func (l *intList) String() string { return fmt.Sprint([]int(*l)) }
func (l *intList) Set(s string) error {
	v, err := strconv.Atoi(s)
	*l = append(*l, v)
	return err
}

var (
	protocol   = flag.String("protocol", "imap", "imap, sieve or submission")
	addr       = flag.String("addr", "127.0.0.1:10143", "proxy address")
	tlsMode    = flag.String("tls", "none", "none, implicit or starttls (ManageSieve and submission)")
	n          = flag.Int("n", 1000, "sessions")
	rate       = flag.Float64("rate", 500, "session starts per second")
	settle     = flag.Duration("settle", 10*time.Second, "hold time before the memory sample")
	password   = flag.String("password", "secret", "password")
	messages   = flag.Int("messages", 0, "submission: messages sent through one extra session after the memory sample")
	msgSize    = flag.Int("message-size", 10<<20, "submission: message size in bytes")
	bdat       = flag.Bool("bdat", false, "submission: send messages with BDAT (1 MiB chunks) instead of DATA")
	jsonOut    = flag.String("json", "", "write the result as JSON to this file")
	label      = flag.String("label", "portico", "proxy name recorded in the result")
	proxyPIDs  intList
	timeoutDur = 30 * time.Second
)

type result struct {
	Label       string   `json:"label"`
	Protocol    string   `json:"protocol"`
	TLS         string   `json:"tls"`
	N           int      `json:"n"`
	Established int      `json:"established"`
	PSSPerSess  float64  `json:"pss_kib_per_session"`
	RSSPerSess  float64  `json:"rss_kib_per_session"`
	LoginP50ms  float64  `json:"login_p50_ms"`
	LoginP99ms  float64  `json:"login_p99_ms"`
	Messages    int      `json:"messages,omitempty"`
	MessageSize int      `json:"message_size,omitempty"`
	BDAT        bool     `json:"bdat,omitempty"`
	MBps        float64  `json:"relay_mb_per_s,omitempty"`
	CPUmsPerGB  *float64 `json:"relay_cpu_ms_per_gb,omitempty"`
	Errors      []string `json:"errors,omitempty"`
}

func main() {
	flag.Var(&proxyPIDs, "pid", "proxy process id, measured with its descendants (repeatable)")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("loadmail: ")
	if _, err := rlimit.RaiseNoFile(); err != nil {
		log.Fatal(err)
	}
	sel := &procstat.Selector{PIDs: proxyPIDs, Exclude: os.Getpid()}
	res := result{Label: *label, Protocol: *protocol, TLS: *tlsMode, N: *n}
	before := mem(sel)
	var conns []net.Conn
	var lat []time.Duration
	errs := map[string]int{}
	tick := time.NewTicker(time.Duration(float64(time.Second) / *rate))
	type done struct {
		c   net.Conn
		d   time.Duration
		err error
	}
	out := make(chan done, *n)
	for i := 0; i < *n; i++ {
		<-tick.C
		go func(i int) {
			start := time.Now()
			c, err := session(fmt.Sprintf("user%d", i))
			out <- done{c, time.Since(start), err}
		}(i)
	}
	tick.Stop()
	for i := 0; i < *n; i++ {
		d := <-out
		if d.err != nil {
			errs[d.err.Error()]++
			continue
		}
		conns = append(conns, d.c)
		lat = append(lat, d.d)
	}
	res.Established = len(conns)
	for e, k := range errs {
		res.Errors = append(res.Errors, fmt.Sprintf("%d x %s", k, e))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		res.LoginP50ms = ms(lat[len(lat)/2])
		res.LoginP99ms = ms(lat[len(lat)*99/100])
	}
	log.Printf("%d sessions established (%d failed); settling %v", len(conns), *n-len(conns), *settle)
	time.Sleep(*settle)
	after := mem(sel)
	if before != nil && after != nil && len(conns) > 0 {
		res.PSSPerSess = float64(after.PSSKiB-before.PSSKiB) / float64(len(conns))
		res.RSSPerSess = float64(after.RSSKiB-before.RSSKiB) / float64(len(conns))
	}
	if *protocol == "submission" && *messages > 0 {
		if err := relay(&res, sel); err != nil {
			log.Fatalf("relay: %v", err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(b))
	if *jsonOut != "" {
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mem(sel *procstat.Selector) *procstat.Mem {
	if sel.Empty() {
		return nil
	}
	pids, err := sel.Resolve()
	if err != nil {
		log.Fatal(err)
	}
	m, err := procstat.ReadMem(pids)
	if err != nil {
		log.Fatal(err)
	}
	return &m
}

// clientTLS offers X25519 and P-256 only, as loadimap does by default (the
// groups nginx/OpenSSL 3.0 can do), so the figures compare with its.
var clientTLS = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
	CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}

// conn is a line-oriented client connection.
type conn struct {
	c  net.Conn
	br *bufio.Reader
}

func (c *conn) send(s string) error {
	_, err := io.WriteString(c.c, s)
	return err
}

// until reads lines until one starts with prefix (a final reply).
func (c *conn) until(prefix string, fail ...string) error {
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(l, prefix) {
			return nil
		}
		for _, f := range fail {
			if strings.HasPrefix(l, f) {
				return errors.New(strings.TrimSpace(l))
			}
		}
	}
}

// smtpReply reads one SMTP reply and checks its code.
func (c *conn) smtpReply(code string) error {
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return err
		}
		if len(l) >= 4 && l[3] == '-' {
			continue
		}
		if !strings.HasPrefix(l, code) {
			return errors.New(strings.TrimSpace(l))
		}
		return nil
	}
}

func (c *conn) startTLS() {
	tc := tls.Client(c.c, clientTLS)
	c.c, c.br = tc, bufio.NewReaderSize(tc, 4096)
}

func dial() (*conn, error) {
	var nc net.Conn
	var err error
	if *tlsMode == "implicit" {
		nc, err = tls.DialWithDialer(&net.Dialer{Timeout: timeoutDur}, "tcp", *addr, clientTLS)
	} else {
		nc, err = net.DialTimeout("tcp", *addr, timeoutDur)
	}
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(timeoutDur))
	return &conn{c: nc, br: bufio.NewReaderSize(nc, 4096)}, nil
}

func plainIR(user string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + *password))
}

// session opens one session and logs it in; it is left idle.
func session(user string) (net.Conn, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Conn, error) { c.c.Close(); return nil, err }
	switch *protocol {
	case "imap":
		if err := c.until("* OK"); err != nil {
			return fail(err)
		}
		if err := c.send("a LOGIN " + user + " " + *password + "\r\n"); err != nil {
			return fail(err)
		}
		if err := c.until("a OK", "a NO", "a BAD"); err != nil {
			return fail(err)
		}
	case "sieve":
		if err := c.until("OK", "NO", "BYE"); err != nil {
			return fail(err)
		}
		if *tlsMode == "starttls" {
			if err := c.send("STARTTLS\r\n"); err != nil {
				return fail(err)
			}
			if err := c.until("OK", "NO"); err != nil {
				return fail(err)
			}
			c.startTLS()
			if err := c.until("OK", "NO"); err != nil {
				return fail(err)
			}
		}
		if err := c.send("AUTHENTICATE \"PLAIN\" \"" + plainIR(user) + "\"\r\n"); err != nil {
			return fail(err)
		}
		if err := c.until("OK", "NO", "BYE"); err != nil {
			return fail(err)
		}
	case "submission":
		if err := c.smtpReply("220"); err != nil {
			return fail(err)
		}
		if err := c.send("EHLO loadmail.example\r\n"); err != nil {
			return fail(err)
		}
		if err := c.smtpReply("250"); err != nil {
			return fail(err)
		}
		if *tlsMode == "starttls" {
			if err := c.send("STARTTLS\r\n"); err != nil {
				return fail(err)
			}
			if err := c.smtpReply("220"); err != nil {
				return fail(err)
			}
			c.startTLS()
			if err := c.send("EHLO loadmail.example\r\n"); err != nil {
				return fail(err)
			}
			if err := c.smtpReply("250"); err != nil {
				return fail(err)
			}
		}
		if err := c.send("AUTH PLAIN " + plainIR(user) + "\r\n"); err != nil {
			return fail(err)
		}
		if err := c.smtpReply("235"); err != nil {
			return fail(err)
		}
	default:
		return fail(fmt.Errorf("unknown protocol %q", *protocol))
	}
	_ = c.c.SetDeadline(time.Time{})
	return c.c, nil
}

// relay sends the messages through one more session and measures the
// throughput and the proxy's CPU.
func relay(res *result, sel *procstat.Selector) error {
	nc, err := session("relay")
	if err != nil {
		return err
	}
	defer nc.Close()
	c := &conn{c: nc, br: bufio.NewReaderSize(nc, 4096)}
	var body strings.Builder
	line := "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
	body.WriteString("Subject: loadmail\r\n\r\n")
	for body.Len() < *msgSize {
		body.WriteString(line)
	}
	msg := body.String()
	pids, _ := sel.Resolve()
	cpu0 := procstat.ReadCPU(pids)
	start := time.Now()
	for i := 0; i < *messages; i++ {
		_ = nc.SetDeadline(time.Now().Add(5 * time.Minute))
		if err := c.send("MAIL FROM:<relay@example.com>\r\nRCPT TO:<sink@example.com>\r\n"); err != nil {
			return err
		}
		if err := c.smtpReply("250"); err != nil {
			return err
		}
		if err := c.smtpReply("250"); err != nil {
			return err
		}
		if *bdat {
			chunks := 0
			for off := 0; off < len(msg); off += 1 << 20 {
				end := min(off+1<<20, len(msg))
				last := ""
				if end == len(msg) {
					last = " LAST"
				}
				if err := c.send("BDAT " + strconv.Itoa(end-off) + last + "\r\n" + msg[off:end]); err != nil {
					return err
				}
				chunks++
			}
			for j := 0; j < chunks; j++ {
				if err := c.smtpReply("250"); err != nil {
					return err
				}
			}
		} else {
			if err := c.send("DATA\r\n"); err != nil {
				return err
			}
			if err := c.smtpReply("354"); err != nil {
				return err
			}
			if err := c.send(msg + ".\r\n"); err != nil {
				return err
			}
			if err := c.smtpReply("250"); err != nil {
				return err
			}
		}
	}
	elapsed := time.Since(start)
	cpu1 := procstat.ReadCPU(pids)
	total := float64(len(msg)) * float64(*messages)
	res.Messages, res.MessageSize, res.BDAT = *messages, len(msg), *bdat
	res.MBps = total / (1 << 20) / elapsed.Seconds()
	if len(pids) > 0 {
		v := (cpu1.Millis() - cpu0.Millis()) / (total / (1 << 30))
		res.CPUmsPerGB = &v
	}
	return nil
}
