package netx

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"time"
)

// Buffer sizes for the pre-login dialogue. Lines longer than the reader's
// buffer are still read (the protocol readers accumulate up to their own
// caps); these only bound what one read syscall fetches.
const (
	readBufSize  = 2048
	writeBufSize = 1024
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}
)

// Stream is one side of a proxied session during the line-based phase
// before login: the client connection (server role) or a backend connection
// (client role). After login, Detach hands the connection to the relay.
type Stream struct {
	base *Conn
	tls  *tls.Conn
	R    *bufio.Reader
	W    *bufio.Writer
}

// NewStream wraps c with pooled buffers.
func NewStream(c *Conn) *Stream {
	s := &Stream{base: c}
	s.R = readerPool.Get().(*bufio.Reader)
	s.W = writerPool.Get().(*bufio.Writer)
	s.R.Reset(c)
	s.W.Reset(c)
	return s
}

// Base returns the underlying TCP connection wrapper.
func (s *Stream) Base() *Conn { return s.base }

// TLS returns the TLS connection, or nil before TLS.
func (s *Stream) TLS() *tls.Conn { return s.tls }

// NetConn returns the connection the protocol currently runs on.
func (s *Stream) NetConn() net.Conn {
	if s.tls != nil {
		return s.tls
	}
	return s.base
}

// Write buffers p; call Flush to send.
func (s *Stream) Write(p []byte) (int, error) { return s.W.Write(p) }

// WriteString buffers str; call Flush to send.
func (s *Stream) WriteString(str string) (int, error) { return s.W.WriteString(str) }

// Flush sends buffered output.
func (s *Stream) Flush() error { return s.W.Flush() }

// SetDeadline sets read and write deadlines on the connection.
func (s *Stream) SetDeadline(t time.Time) error { return s.base.SetDeadline(t) }

// SetReadDeadline sets the read deadline on the connection.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.base.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline on the connection.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.base.SetWriteDeadline(t) }

// StartTLSServer upgrades the stream to TLS as the server. Bytes the peer
// pipelined after the STARTTLS command, still in the read buffer, are fed
// to the TLS handshake, never parsed as plaintext commands. The handshake
// must finish within timeout.
func (s *Stream) StartTLSServer(ctx context.Context, cfg *tls.Config, timeout time.Duration) error {
	return s.startTLS(ctx, timeout, func(c net.Conn) *tls.Conn { return tls.Server(c, cfg) })
}

// StartTLSClient upgrades the stream to TLS as the client.
func (s *Stream) StartTLSClient(ctx context.Context, cfg *tls.Config, timeout time.Duration) error {
	return s.startTLS(ctx, timeout, func(c net.Conn) *tls.Conn { return tls.Client(c, cfg) })
}

func (s *Stream) startTLS(ctx context.Context, timeout time.Duration, mk func(net.Conn) *tls.Conn) error {
	if err := s.W.Flush(); err != nil {
		return err
	}
	if n := s.R.Buffered(); n > 0 {
		b, _ := s.R.Peek(n)
		s.base.Unread(b)
	}
	tc := mk(s.base)
	_ = s.base.SetDeadline(deadline(timeout))
	err := tc.HandshakeContext(ctx)
	_ = s.base.SetDeadline(time.Time{})
	if err != nil {
		return err
	}
	s.tls = tc
	s.R.Reset(tc)
	s.W.Reset(tc)
	return nil
}

// Detach ends the buffered phase: it returns the bytes that were read
// ahead but not consumed (they belong to the other side of the relay), and
// returns the buffers to their pools. The Stream's R and W must not be used
// afterwards; NetConn and Base stay valid.
func (s *Stream) Detach() []byte {
	var pending []byte
	if s.R != nil {
		if n := s.R.Buffered(); n > 0 {
			b, _ := s.R.Peek(n)
			pending = append([]byte(nil), b...)
		}
		s.R.Reset(nil)
		readerPool.Put(s.R)
		s.R = nil
	}
	if s.W != nil {
		s.W.Reset(nil)
		writerPool.Put(s.W)
		s.W = nil
	}
	return pending
}

// Close closes the connection and releases buffers. For TLS it sends
// close_notify with a short write deadline so a stuck peer cannot hold it.
func (s *Stream) Close() error {
	s.Detach()
	if s.tls != nil {
		_ = s.base.SetWriteDeadline(time.Now().Add(time.Second))
		return s.tls.Close()
	}
	return s.base.Close()
}

// ReadFull reads exactly len(p) bytes from the buffered reader.
func (s *Stream) ReadFull(p []byte) error {
	_, err := io.ReadFull(s.R, p)
	return err
}
