// Command mailsink is a lightweight ManageSieve and SMTP submission backend
// for proxy benchmarks, the counterpart of imapsink: it accepts any user
// whose password equals -password, keeps no state, and answers just enough
// for a proxy to log in and relay. Submission messages (DATA or BDAT) are
// read and dropped. Every connection is served by one goroutine with a
// small read buffer. See bench/README.md.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
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

	"github.com/portico-mail/portico/bench/internal/rlimit"
)

var (
	password                              string
	nConns, nLogins, nMessages, nMsgBytes atomic.Int64
)

func main() {
	sieveAddr := flag.String("sieve", "127.0.0.1:14190", "plain ManageSieve listen address (empty: none)")
	subAddr := flag.String("submission", "127.0.0.1:14587", "plain submission listen address (empty: none)")
	flag.StringVar(&password, "password", "secret", "password accepted for every user")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("mailsink: ")
	if _, err := rlimit.RaiseNoFile(); err != nil {
		log.Printf("raising RLIMIT_NOFILE: %v", err)
	}
	serve := func(addr string, handle func(net.Conn)) {
		if addr == "" {
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("listening on %s", ln.Addr())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					log.Fatal(err)
				}
				nConns.Add(1)
				go func() {
					defer c.Close()
					handle(c)
				}()
			}
		}()
	}
	serve(*sieveAddr, sieve)
	serve(*subAddr, submission)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	log.Printf("connections %d, logins %d, messages %d (%d bytes)", nConns.Load(), nLogins.Load(), nMessages.Load(), nMsgBytes.Load())
}

// plainOK checks a base64 SASL PLAIN response.
func plainOK(ir string) bool {
	b, err := base64.StdEncoding.DecodeString(strings.Trim(ir, `"`))
	if err != nil {
		return false
	}
	parts := bytes.Split(b, []byte{0})
	return len(parts) == 3 && len(parts[1]) > 0 && string(parts[2]) == password
}

func sieve(c net.Conn) {
	br := bufio.NewReaderSize(c, 512)
	w := func(s string) { _, _ = io.WriteString(c, s) }
	w("\"IMPLEMENTATION\" \"mailsink\"\r\n\"SASL\" \"PLAIN\"\r\n\"SIEVE\" \"fileinto\"\r\n\"VERSION\" \"1.0\"\r\nOK \"ready\"\r\n")
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		// AUTHENTICATE "PLAIN" {n+} then the literal.
		if i := strings.LastIndexByte(l, '{'); i >= 0 && strings.HasSuffix(l, "}") {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(l[i+1:], "}"), "+"))
			lit := make([]byte, n)
			if _, err := io.ReadFull(br, lit); err != nil {
				return
			}
			rest, _ := br.ReadString('\n')
			l = l[:i] + `"` + string(lit) + `"` + strings.TrimRight(rest, "\r\n")
		}
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "AUTHENTICATE":
			_, ir, _ := strings.Cut(arg, " ")
			if plainOK(ir) {
				nLogins.Add(1)
				w("OK \"Logged in.\"\r\n")
			} else {
				w("NO \"Authentication failed.\"\r\n")
			}
		case "LOGOUT":
			w("OK \"Bye.\"\r\n")
			return
		case "CAPABILITY":
			w("\"IMPLEMENTATION\" \"mailsink\"\r\n\"SASL\" \"PLAIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"done\"\r\n")
		default:
			w("OK \"done\"\r\n")
		}
	}
}

func submission(c net.Conn) {
	br := bufio.NewReaderSize(c, 512)
	bw := bufio.NewWriterSize(c, 512)
	w := func(s string) { _, _ = bw.WriteString(s) }
	w("220 mailsink ESMTP\r\n")
	for {
		if br.Buffered() == 0 {
			if bw.Flush() != nil {
				return
			}
		}
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "EHLO", "HELO":
			w("250-mailsink\r\n250-PIPELINING\r\n250-SIZE 0\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 AUTH PLAIN\r\n")
		case "AUTH":
			_, ir, _ := strings.Cut(arg, " ")
			if plainOK(ir) {
				nLogins.Add(1)
				w("235 2.7.0 Authentication successful\r\n")
			} else {
				w("535 5.7.8 Authentication failed\r\n")
			}
		case "DATA":
			w("354 go ahead\r\n")
			_ = bw.Flush()
			n := int64(0)
			atStart := true
			for {
				frag, err := br.ReadSlice('\n')
				if err != nil && err != bufio.ErrBufferFull {
					return
				}
				n += int64(len(frag))
				if atStart && err == nil && (string(frag) == ".\r\n" || string(frag) == ".\n") {
					break
				}
				atStart = err == nil
			}
			nMessages.Add(1)
			nMsgBytes.Add(n)
			w("250 2.0.0 Ok: dropped\r\n")
		case "BDAT":
			f := strings.Fields(arg)
			n, _ := strconv.ParseInt(f[0], 10, 64)
			if _, err := br.Discard(int(n)); err != nil {
				return
			}
			nMsgBytes.Add(n)
			if len(f) > 1 {
				nMessages.Add(1)
			}
			w(fmt.Sprintf("250 2.0.0 %d bytes\r\n", n))
		case "QUIT":
			w("221 2.0.0 Bye\r\n")
			_ = bw.Flush()
			return
		default:
			w("250 2.0.0 Ok\r\n")
		}
	}
}
