// Command imapsink is a lightweight IMAP backend for proxy benchmarks.
//
// It accepts any user whose password equals -password, keeps no mailbox
// state, and answers just enough IMAP for a proxy to log in and relay:
// CAPABILITY, NOOP, ID, LOGIN, AUTHENTICATE PLAIN, SELECT/EXAMINE, FETCH,
// XFETCH, IDLE/DONE, LOGOUT. Every connection is served by one goroutine with
// a small read buffer, so 10,000 idle connections cost little memory and no
// CPU. See bench/README.md.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portico-mail/portico/bench/internal/rlimit"
)

const (
	capsPre    = "* CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN\r\n"
	capsPost   = "* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\n"
	maxLine    = 16 << 10 // longest command line accepted
	maxLiteral = 64 << 10 // longest literal accepted (LOGIN arguments)
	maxXFetch  = 1 << 30
)

// The greeting and the reply to a login. -bare leaves the capabilities out
// of both, as minimal servers do: a proxy then has to ask with CAPABILITY.
var (
	greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN] sink ready\r\n"
	loggedIn = " OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] Logged in\r\n"
)

var (
	password  string
	fetchData []byte // shared, read-only message body

	nConns, nActive, nLogins, nLoginFail, nFetchBytes atomic.Int64
)

func main() {
	listen := flag.String("listen", "127.0.0.1:14143", "plain IMAP listen address (empty: none)")
	tlsListen := flag.String("tls-listen", "", "implicit-TLS IMAP listen address (needs -tls-cert and -tls-key)")
	certFile := flag.String("tls-cert", "", "TLS certificate (PEM)")
	keyFile := flag.String("tls-key", "", "TLS key (PEM)")
	flag.StringVar(&password, "password", "secret", "password accepted for every user")
	fetchSize := flag.Int("fetch-size", 1<<20, "size in bytes of the message body returned by FETCH")
	statsEvery := flag.Duration("stats", 0, "log counters at this interval (0: only at exit)")
	bare := flag.Bool("bare", false, "no capabilities in the greeting or the login reply (a client must send CAPABILITY)")
	flag.Parse()
	if *bare {
		greeting, loggedIn = "* OK sink ready\r\n", " OK Logged in\r\n"
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("imapsink: ")

	if lim, err := rlimit.RaiseNoFile(); err != nil {
		log.Printf("raising RLIMIT_NOFILE: %v", err)
	} else {
		log.Printf("RLIMIT_NOFILE %d", lim)
	}
	if *fetchSize < 0 || *fetchSize > maxXFetch {
		log.Fatalf("-fetch-size out of range")
	}
	fetchData = makeBody(*fetchSize)

	var lns []net.Listener
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("plain IMAP on %s", ln.Addr())
		lns = append(lns, ln)
	}
	if *tlsListen != "" {
		if *certFile == "" || *keyFile == "" {
			log.Fatal("-tls-listen needs -tls-cert and -tls-key")
		}
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		ln, err := net.Listen("tcp", *tlsListen)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("implicit-TLS IMAP on %s", ln.Addr())
		lns = append(lns, tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	}
	if len(lns) == 0 {
		log.Fatal("nothing to listen on")
	}
	for _, ln := range lns {
		go serve(ln)
	}
	if *statsEvery > 0 {
		go func() {
			for range time.Tick(*statsEvery) {
				logStats()
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	logStats()
}

func logStats() {
	log.Printf("connections %d (active %d), logins %d ok / %d failed, fetched %d bytes",
		nConns.Load(), nActive.Load(), nLogins.Load(), nLoginFail.Load(), nFetchBytes.Load())
}

func makeBody(n int) []byte {
	b := make([]byte, n)
	line := []byte("Subject: benchmark filler 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJK\r\n")
	for i := 0; i < n; i += len(line) {
		copy(b[i:], line)
	}
	return b
}

func serve(ln net.Listener) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors or similar: back off and retry.
				if delay == 0 {
					delay = 5 * time.Millisecond
				} else if delay < time.Second {
					delay *= 2
				}
				log.Printf("accept: %v; retrying in %v", err, delay)
				time.Sleep(delay)
				continue
			}
			log.Fatalf("accept: %v", err)
		}
		delay = 0
		go handle(c)
	}
}

type session struct {
	c      net.Conn
	r      *bufio.Reader
	authed bool
	line   []byte // scratch for long lines
}

func handle(c net.Conn) {
	nConns.Add(1)
	nActive.Add(1)
	defer nActive.Add(-1)
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // the Go default, made explicit
	}
	s := &session{c: c, r: bufio.NewReaderSize(c, 512)}
	if err := s.writeString(greeting); err != nil {
		return
	}
	for {
		tag, cmd, args, err := s.readCommand()
		if err != nil {
			var pe protoError
			if errors.As(err, &pe) {
				if s.writeString("* BAD "+pe.Error()+"\r\n") == nil {
					continue
				}
			}
			return
		}
		if !s.dispatch(tag, cmd, args) {
			return
		}
	}
}

// dispatch runs one command and reports whether the connection stays open.
func (s *session) dispatch(tag, cmd string, args []string) bool {
	var err error
	switch cmd {
	case "CAPABILITY":
		caps := capsPre
		if s.authed {
			caps = capsPost
		}
		err = s.writeString(caps + tag + " OK CAPABILITY completed\r\n")
	case "NOOP", "CHECK":
		err = s.writeString(tag + " OK " + cmd + " completed\r\n")
	case "ID":
		err = s.writeString("* ID (\"name\" \"imapsink\")\r\n" + tag + " OK ID completed\r\n")
	case "LOGOUT":
		s.writeString("* BYE logging out\r\n" + tag + " OK LOGOUT completed\r\n")
		return false
	case "LOGIN":
		switch {
		case s.authed:
			err = s.writeString(tag + " BAD already authenticated\r\n")
		case len(args) != 2:
			err = s.writeString(tag + " BAD LOGIN needs user and password\r\n")
		default:
			err = s.login(tag, args[0], args[1])
		}
	case "AUTHENTICATE":
		err = s.authenticate(tag, args)
	case "SELECT", "EXAMINE":
		if !s.authed {
			err = s.writeString(tag + " NO not authenticated\r\n")
			break
		}
		mode := "READ-WRITE"
		if cmd == "EXAMINE" {
			mode = "READ-ONLY"
		}
		err = s.writeString("* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen \\Deleted)\r\n" +
			"* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 2] predicted next UID\r\n" +
			tag + " OK [" + mode + "] " + cmd + " completed\r\n")
	case "FETCH", "UID":
		if !s.authed {
			err = s.writeString(tag + " NO not authenticated\r\n")
			break
		}
		if cmd == "UID" && (len(args) == 0 || !strings.EqualFold(args[0], "FETCH")) {
			err = s.writeString(tag + " BAD only UID FETCH is supported\r\n")
			break
		}
		seq := "1"
		if cmd == "UID" {
			args = args[1:]
		}
		if len(args) > 0 {
			if _, e := strconv.ParseUint(args[0], 10, 32); e == nil {
				seq = args[0]
			}
		}
		err = s.fetch(tag, seq, len(fetchData))
	case "XFETCH":
		if !s.authed {
			err = s.writeString(tag + " NO not authenticated\r\n")
			break
		}
		n := len(fetchData)
		if len(args) > 0 {
			v, e := strconv.Atoi(args[0])
			if e != nil || v < 0 || v > maxXFetch {
				err = s.writeString(tag + " BAD XFETCH size\r\n")
				break
			}
			n = v
		}
		err = s.fetch(tag, "1", n)
	case "IDLE":
		if !s.authed {
			err = s.writeString(tag + " NO not authenticated\r\n")
			break
		}
		if err = s.writeString("+ idling\r\n"); err != nil {
			break
		}
		var l []byte
		if l, err = s.readLine(); err != nil {
			break
		}
		if strings.EqualFold(string(l), "DONE") {
			err = s.writeString(tag + " OK IDLE terminated\r\n")
		} else {
			err = s.writeString(tag + " BAD expected DONE\r\n")
		}
	case "":
		err = s.writeString(tag + " BAD missing command\r\n")
	default:
		err = s.writeString(tag + " BAD unknown command\r\n")
	}
	return err == nil
}

func (s *session) login(tag, user, pass string) error {
	if user == "" || pass != password {
		nLoginFail.Add(1)
		return s.writeString(tag + " NO [AUTHENTICATIONFAILED] invalid credentials\r\n")
	}
	s.authed = true
	nLogins.Add(1)
	return s.writeString(tag + loggedIn)
}

func (s *session) authenticate(tag string, args []string) error {
	if s.authed {
		return s.writeString(tag + " BAD already authenticated\r\n")
	}
	if len(args) < 1 || !strings.EqualFold(args[0], "PLAIN") {
		return s.writeString(tag + " NO unsupported mechanism\r\n")
	}
	var resp string
	if len(args) >= 2 {
		resp = args[1] // SASL-IR
		if resp == "=" {
			resp = ""
		}
	} else {
		if err := s.writeString("+ \r\n"); err != nil {
			return err
		}
		l, err := s.readLine()
		if err != nil {
			return err
		}
		resp = string(l)
		if resp == "*" {
			return s.writeString(tag + " BAD AUTHENTICATE cancelled\r\n")
		}
	}
	raw, err := base64.StdEncoding.DecodeString(resp)
	if err != nil {
		return s.writeString(tag + " BAD invalid base64\r\n")
	}
	parts := bytes.Split(raw, []byte{0})
	if len(parts) != 3 {
		return s.writeString(tag + " BAD invalid PLAIN response\r\n")
	}
	return s.login(tag, string(parts[1]), string(parts[2]))
}

// fetch writes one FETCH response with an n-byte literal, then the tagged OK.
func (s *session) fetch(tag, seq string, n int) error {
	head := "* " + seq + " FETCH (BODY[] {" + strconv.Itoa(n) + "}\r\n"
	tail := ")\r\n" + tag + " OK FETCH completed\r\n"
	bufs := net.Buffers{[]byte(head)}
	for rest := n; rest > 0; {
		k := min(rest, len(fetchData))
		bufs = append(bufs, fetchData[:k])
		rest -= k
	}
	bufs = append(bufs, []byte(tail))
	_, err := bufs.WriteTo(s.c)
	if err == nil {
		nFetchBytes.Add(int64(n))
	}
	return err
}

func (s *session) writeString(str string) error {
	_, err := io.WriteString(s.c, str)
	return err
}

type protoError string

func (e protoError) Error() string { return string(e) }

// readLine returns one line without its CRLF (or bare LF). The slice is only
// valid until the next read.
func (s *session) readLine() ([]byte, error) {
	l, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.line = append(s.line[:0], l...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(s.line) > maxLine {
				// Swallow the rest of the line, then complain.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = s.r.ReadSlice('\n')
				}
				if err != nil {
					return nil, err
				}
				return nil, protoError("line too long")
			}
			l, err = s.r.ReadSlice('\n')
			s.line = append(s.line, l...)
		}
		l = s.line
	}
	if err != nil {
		return nil, err
	}
	l = l[:len(l)-1]
	if len(l) > 0 && l[len(l)-1] == '\r' {
		l = l[:len(l)-1]
	}
	return l, nil
}

// readCommand reads "tag COMMAND args...", following literals. Arguments are
// astrings (atom, quoted string, literal); anything else is split on spaces.
func (s *session) readCommand() (tag, cmd string, args []string, err error) {
	l, err := s.readLine()
	if err != nil {
		return "", "", nil, err
	}
	line := string(l) // copy: the buffer is reused by literal reads
	var ok bool
	tag, line, ok = strings.Cut(line, " ")
	if tag == "" {
		return "", "", nil, protoError("missing tag")
	}
	if !ok {
		return tag, "", nil, nil
	}
	cmd, line, _ = strings.Cut(line, " ")
	cmd = strings.ToUpper(cmd)
	for {
		line = strings.TrimLeft(line, " ")
		if line == "" {
			return tag, cmd, args, nil
		}
		switch line[0] {
		case '"':
			v, rest, err := unquote(line)
			if err != nil {
				return "", "", nil, protoError(tag + " " + err.Error())
			}
			args = append(args, v)
			line = rest
		case '{':
			if line[len(line)-1] != '}' || strings.IndexByte(line, ' ') >= 0 {
				goto atom
			}
			spec := line[1 : len(line)-1]
			sync := true
			if strings.HasSuffix(spec, "+") {
				sync = false
				spec = spec[:len(spec)-1]
			}
			n, err := strconv.Atoi(spec)
			if err != nil || n < 0 {
				goto atom
			}
			if n > maxLiteral {
				if sync {
					s.writeString(tag + " NO literal too big\r\n")
					return "", "", nil, protoError("literal too big")
				}
				return "", "", nil, errors.New("non-synchronizing literal too big")
			}
			if sync {
				if err := s.writeString("+ Ready for literal data\r\n"); err != nil {
					return "", "", nil, err
				}
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(s.r, buf); err != nil {
				return "", "", nil, err
			}
			args = append(args, string(buf))
			l, err := s.readLine()
			if err != nil {
				return "", "", nil, err
			}
			line = string(l)
		default:
			goto atom
		}
		continue
	atom:
		var a string
		a, line, _ = strings.Cut(line, " ")
		args = append(args, a)
	}
}

func unquote(s string) (val, rest string, err error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			i++
			if i == len(s) {
				return "", "", fmt.Errorf("bad quoted string")
			}
			b.WriteByte(s[i])
		case '"':
			return b.String(), s[i+1:], nil
		default:
			b.WriteByte(c)
		}
	}
	return "", "", fmt.Errorf("unterminated quoted string")
}
