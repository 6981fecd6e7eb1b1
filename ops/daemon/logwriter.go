package daemon

import (
	"io"
	"sync"
	"time"
)

// logWriter batches log lines: a node writes several lines per session, and
// one write(2) per line was a measurable share of a login's CPU. Lines are
// flushed every flushEvery, when the buffer fills, and on Close, so at most
// flushEvery of logs is lost if the process is killed.
type logWriter struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	stop chan struct{}
	done chan struct{}
}

const (
	flushEvery  = 100 * time.Millisecond
	logBufLimit = 64 << 10
)

func newLogWriter(w io.Writer) *logWriter {
	lw := &logWriter{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	go lw.loop()
	return lw
}

func (lw *logWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.buf = append(lw.buf, p...)
	if len(lw.buf) >= logBufLimit {
		lw.flushLocked()
	}
	return len(p), nil
}

func (lw *logWriter) flushLocked() {
	if len(lw.buf) == 0 {
		return
	}
	_, _ = lw.w.Write(lw.buf)
	if cap(lw.buf) > 4*logBufLimit {
		lw.buf = nil
		return
	}
	lw.buf = lw.buf[:0]
}

func (lw *logWriter) loop() {
	defer close(lw.done)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			lw.mu.Lock()
			lw.flushLocked()
			lw.mu.Unlock()
		case <-lw.stop:
			lw.mu.Lock()
			lw.flushLocked()
			lw.mu.Unlock()
			return
		}
	}
}

// Close flushes and stops the writer.
func (lw *logWriter) Close() error {
	select {
	case <-lw.stop:
	default:
		close(lw.stop)
	}
	<-lw.done
	return nil
}
