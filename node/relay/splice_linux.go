package relay

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// A pipe carries spliced bytes from one socket to another inside the
// kernel. Pipes are only held while a direction is actively moving data:
// an idle session holds none (each pipe costs two file descriptors, and a
// node with 9,000+ sessions is close to its descriptor limit).
type pipe struct {
	r, w int
}

const (
	spliceChunk = 64 << 10 // the default pipe capacity
	maxIdlePipe = 64       // pipes kept for reuse
)

var (
	pipeMu   sync.Mutex
	pipeFree []*pipe
)

func getPipe() (*pipe, error) {
	pipeMu.Lock()
	if n := len(pipeFree); n > 0 {
		p := pipeFree[n-1]
		pipeFree = pipeFree[:n-1]
		pipeMu.Unlock()
		return p, nil
	}
	pipeMu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe for reuse.
func putPipe(p *pipe) {
	pipeMu.Lock()
	if len(pipeFree) < maxIdlePipe {
		pipeFree = append(pipeFree, p)
		pipeMu.Unlock()
		return
	}
	pipeMu.Unlock()
	p.close()
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// spliceRead moves what the socket fd has now (up to max bytes) into the
// pipe. It returns 0, nil at end of stream and errAgain when the socket has
// nothing.
func spliceRead(fd int, p *pipe, max int) (int, error) {
	for {
		n, err := unix.Splice(fd, nil, p.w, nil, max, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if err != nil {
			n = 0 // the raw syscall reports -1 on error
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return 0, errAgain
		}
		return int(n), err
	}
}

// spliceWrite moves up to n bytes from the pipe to the socket fd. errAgain
// means the socket's send buffer is full.
func spliceWrite(p *pipe, fd int, n int) (int, error) {
	for {
		m, err := unix.Splice(p.r, nil, fd, nil, n, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if err != nil {
			m = 0 // the raw syscall reports -1 on error
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return 0, errAgain
		}
		return int(m), err
	}
}

var errAgain = errors.New("resource temporarily unavailable")
