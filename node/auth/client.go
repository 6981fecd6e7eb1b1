package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Limits on an answer's status line and headers: nginx's, and the larger
// one of relaxed limits (lifting nginx's).
const (
	DefaultMaxResponse = 1024
	RelaxedMaxResponse = 16 << 10
)

const (
	// keepAliveIdle: an idle keep-alive connection older than this is
	// closed rather than reused (servers commonly close after 60 s or so).
	keepAliveIdle = 30 * time.Second
	maxIdle       = 16
	// maxDiscard: a keep-alive response body larger than this closes the
	// connection instead of being read and dropped.
	maxDiscard = 64 << 10
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// URL is http://host[:port][/uri] or unix:/path[:/uri], as nginx's
	// auth_http (the Host header is the host as written, without the
	// port; "localhost" for a Unix socket).
	URL     string
	Headers []Header      // extra headers, in order (auth_http_header)
	Timeout time.Duration // whole exchange; 0: the default (DefaultClientConfig)
	// MaxResponse bounds the status line and headers; 0: the default.
	MaxResponse int
	// KeepAlive: HTTP/1.1 with persistent connections instead of nginx's
	// HTTP/1.0 and a connection per request.
	KeepAlive bool
}

// DefaultClientConfig returns nginx's settings, the defaults documented in
// the README: 60 s for the whole exchange (auth_http_timeout) and at most
// 1024 bytes of status line and headers, over HTTP/1.0 with a connection
// per request.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{Timeout: 60 * time.Second, MaxResponse: DefaultMaxResponse}
}

// Client sends auth_http requests. It is safe for concurrent use.
type Client struct {
	cfg           ClientConfig
	network, addr string
	host, uri     string

	mu   sync.Mutex
	idle []idleConn
}

type idleConn struct {
	c     net.Conn
	since time.Time
}

// ParseURL splits an auth_http URL into the dial network and address, the
// Host header and the request URI.
func ParseURL(s string) (network, addr, host, uri string, err error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		path, rest, _ := strings.Cut(strings.TrimPrefix(s, "unix:"), ":")
		if path == "" || !strings.HasPrefix(path, "/") {
			return "", "", "", "", fmt.Errorf("%q: want unix:/path/to/socket[:/uri]", s)
		}
		uri = rest
		if uri == "" {
			uri = "/"
		}
		if !strings.HasPrefix(uri, "/") || strings.ContainsAny(uri, " \r\n\t") {
			return "", "", "", "", fmt.Errorf("%q: the URI after the socket path must start with / and contain no spaces", s)
		}
		return "unix", path, "localhost", uri, nil
	case strings.HasPrefix(s, "http://"):
		u, err := url.Parse(s)
		if err != nil {
			return "", "", "", "", fmt.Errorf("%q: %v", s, err)
		}
		if u.Host == "" || u.Hostname() == "" || u.User != nil || u.Fragment != "" {
			return "", "", "", "", fmt.Errorf("%q: want http://host[:port]/uri", s)
		}
		port := u.Port()
		if port == "" {
			port = "80"
		}
		uri = u.RequestURI()
		if strings.ContainsAny(uri, " \r\n\t") {
			return "", "", "", "", fmt.Errorf("%q: the URI must not contain spaces", s)
		}
		return "tcp", net.JoinHostPort(u.Hostname(), port), u.Hostname(), uri, nil
	}
	return "", "", "", "", fmt.Errorf("%q: want http://host[:port]/uri or unix:/path[:/uri]", s)
}

// NewClient validates cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	network, addr, host, uri, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	d := DefaultClientConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = d.Timeout
	}
	if cfg.MaxResponse <= 0 {
		cfg.MaxResponse = d.MaxResponse
	}
	for _, h := range cfg.Headers {
		if err := CheckHeader(h.Name, h.Value); err != nil {
			return nil, err
		}
	}
	return &Client{cfg: cfg, network: network, addr: addr, host: host, uri: uri}, nil
}

// CheckHeader validates an extra header.
func CheckHeader(name, value string) error {
	if name == "" {
		return errors.New("empty header name")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !alnum(c) && (c != '-' || i == 0) {
			return fmt.Errorf("header name %q: use letters, digits and '-'", name)
		}
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		return fmt.Errorf("header %s: the value must not contain CR, LF or NUL", name)
	}
	return nil
}

// Server names the auth server in logs and errors.
func (c *Client) Server() string {
	if c.network == "unix" {
		return "unix:" + c.addr
	}
	return c.addr
}

// Error is a failed exchange with the auth server. Kind is one of the
// Err* constants (a metric label).
type Error struct {
	Kind string
	Err  error
}

// Kinds of Error.
const (
	ErrKindConnect   = "connect"   // could not connect
	ErrKindTimeout   = "timeout"   // no complete answer within the timeout
	ErrKindIO        = "io"        // the connection failed or closed early
	ErrKindMalformed = "malformed" // not an nginx-acceptable response
	ErrKindTooLarge  = "too_large" // headers over the size limit
	ErrKindInvalid   = "invalid"   // well-formed, but unusable (no server, bad port...)
)

func (e *Error) Error() string { return e.Kind + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Do sends one request and reads the answer. Errors are *Error.
func (c *Client) Do(ctx context.Context, r *Request) (*Response, error) {
	deadline := time.Now().Add(c.cfg.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	req := appendRequest(make([]byte, 0, 512), c.cfg.KeepAlive, c.host, c.uri, r, c.cfg.Headers)
	if conn := c.getIdle(); conn != nil {
		resp, sent, err := c.exchange(ctx, conn, deadline, req)
		if err == nil || sent {
			return resp, err
		}
		// The server closed an idle connection before reading our
		// request: one new connection, as HTTP clients do.
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := (&net.Dialer{KeepAlive: -1}).DialContext(dctx, c.network, c.addr)
	if err != nil {
		if dctx.Err() != nil && ctx.Err() == nil {
			return nil, &Error{ErrKindTimeout, fmt.Errorf("connecting: %w", err)}
		}
		return nil, &Error{ErrKindConnect, err}
	}
	resp, _, err := c.exchange(ctx, conn, deadline, req)
	return resp, err
}

// exchange writes req and reads the answer on conn, which it closes or
// returns to the idle pool. sent reports whether the server may have seen
// the request (any answer byte was read), so that it must not be retried.
func (c *Client) exchange(ctx context.Context, conn net.Conn, deadline time.Time, req []byte) (_ *Response, sent bool, _ error) {
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	resp, n, rest, err := c.roundTrip(conn, req)
	stopped := stop()
	if err != nil {
		conn.Close()
		if !stopped || ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, true, &Error{ErrKindTimeout, ctx.Err()}
			}
			return nil, true, &Error{ErrKindIO, fmt.Errorf("abandoned: %w", context.Cause(ctx))}
		}
		return nil, n > 0, err
	}
	if c.cfg.KeepAlive && stopped && c.reusable(conn, resp, rest) {
		_ = conn.SetDeadline(time.Time{})
		c.putIdle(conn)
	} else {
		conn.Close()
	}
	return resp, true, nil
}

// roundTrip returns the response, how many bytes were read, and the bytes
// read after the headers.
func (c *Client) roundTrip(conn net.Conn, req []byte) (*Response, int, []byte, error) {
	if _, err := conn.Write(req); err != nil {
		return nil, 0, nil, ioError(err, "sending request")
	}
	buf := make([]byte, c.cfg.MaxResponse)
	n := 0
	for {
		if n == len(buf) {
			return nil, n, nil, &Error{ErrKindTooLarge, fmt.Errorf("response headers over %d bytes", len(buf))}
		}
		m, err := conn.Read(buf[n:])
		n += m
		if m > 0 {
			resp, end, perr := parseResponse(buf[:n])
			if perr == nil {
				return resp, n, buf[end:n], nil
			}
			if !errors.Is(perr, errIncomplete) {
				return nil, n, nil, &Error{ErrKindMalformed, perr}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, n, nil, &Error{ErrKindIO, fmt.Errorf("connection closed after %d bytes, before the end of the headers", n)}
			}
			return nil, n, nil, ioError(err, "reading response")
		}
	}
}

func ioError(err error, what string) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &Error{ErrKindTimeout, fmt.Errorf("%s: %w", what, err)}
	}
	return &Error{ErrKindIO, fmt.Errorf("%s: %w", what, err)}
}

// reusable reads and drops a keep-alive response's body; it reports
// whether the connection can carry another request.
func (c *Client) reusable(conn net.Conn, resp *Response, rest []byte) bool {
	if !resp.http11 || resp.connClose || resp.contentLength < 0 || resp.contentLength > maxDiscard {
		return false
	}
	left := resp.contentLength - int64(len(rest))
	if left < 0 {
		return false // more bytes than announced: out of step
	}
	if left > 0 {
		if _, err := io.CopyN(io.Discard, conn, left); err != nil {
			return false
		}
	}
	return true
}

func (c *Client) getIdle() net.Conn {
	if !c.cfg.KeepAlive {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.idle) > 0 {
		ic := c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		if time.Since(ic.since) < keepAliveIdle {
			return ic.c
		}
		ic.c.Close()
	}
	return nil
}

func (c *Client) putIdle(conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle) >= maxIdle {
		conn.Close()
		return
	}
	c.idle = append(c.idle, idleConn{conn, time.Now()})
}

// Close closes idle keep-alive connections.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ic := range c.idle {
		ic.c.Close()
	}
	c.idle = nil
}
