// Command authhttp is a minimal nginx mail auth_http server for benchmarks:
// it answers every request with Auth-Status: OK and points nginx at the
// IMAP sink given by -server and -port. It does not check credentials (the
// sink does).
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portico-mail/portico/bench/internal/rlimit"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "HTTP listen address")
	server := flag.String("server", "127.0.0.1", "backend IP address returned in Auth-Server (must be an IP)")
	port := flag.Int("port", 14143, "backend port returned in Auth-Port")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("authhttp: ")
	if _, err := rlimit.RaiseNoFile(); err != nil {
		log.Printf("raising RLIMIT_NOFILE: %v", err)
	}
	if net.ParseIP(*server) == nil {
		log.Fatalf("-server %q is not an IP address (nginx requires one)", *server)
	}
	portStr := strconv.Itoa(*port)
	var n atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		hd := w.Header()
		hd.Set("Auth-Status", "OK")
		hd.Set("Auth-Server", *server)
		hd.Set("Auth-Port", portStr)
		w.WriteHeader(http.StatusOK)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s, sending nginx to %s:%d", ln.Addr(), *server, *port)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.Default()}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		log.Printf("%d requests served", n.Load())
		os.Exit(0)
	}()
	log.Fatal(srv.Serve(ln))
}
