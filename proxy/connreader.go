package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// connReader sits between a client socket and its bufio.Reader. While a
// command blocks (a lock wait), it keeps reading in the background, so that
// a client hanging up is noticed at once (net/http's backgroundRead). What
// it reads meanwhile is kept, up to a bound, for the parser to read later.
type connReader struct {
	nc net.Conn

	mu      sync.Mutex
	pending []byte // read in the background, not yet handed out
	err     error  // the read error seen in the background
	bgDone  chan struct{}
}

const maxBackgroundBuffer = 64 << 10

func (cr *connReader) Read(p []byte) (int, error) {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if len(cr.pending) > 0 {
		n := copy(p, cr.pending)
		cr.pending = cr.pending[n:]
		return n, nil
	}
	if cr.err != nil {
		return 0, cr.err
	}
	cr.mu.Unlock()
	n, err := cr.nc.Read(p)
	cr.mu.Lock()
	return n, err
}

// startBackgroundRead reads until stopped, calling hangup if the client
// goes away.
func (cr *connReader) startBackgroundRead(hangup func()) {
	cr.bgDone = make(chan struct{})
	go func() {
		defer close(cr.bgDone)
		buf := make([]byte, 1024)
		for {
			cr.mu.Lock()
			full := len(cr.pending) >= maxBackgroundBuffer
			cr.mu.Unlock()
			if full {
				return // the client will be read again after the wait
			}
			n, err := cr.nc.Read(buf)
			cr.mu.Lock()
			cr.pending = append(cr.pending, buf[:n]...)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				cr.err = err
			}
			cr.mu.Unlock()
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					hangup()
				}
				return
			}
		}
	}()
}

// stopBackgroundRead interrupts the background read and waits for it.
func (cr *connReader) stopBackgroundRead() {
	cr.nc.SetReadDeadline(time.Unix(1, 0))
	<-cr.bgDone
	cr.nc.SetReadDeadline(time.Time{})
}
