package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// backend is one memcached server: a few pipelined connections and counters.
type backend struct {
	addr    string
	timeout time.Duration
	conns   []*serverConn
	logger  *slog.Logger

	requests  atomic.Uint64
	errors    atomic.Uint64
	timeouts  atomic.Uint64
	up        atomic.Bool
	failures  atomic.Int64 // calls failed in a row, for ejection
	ejections atomic.Uint64
	lost      atomic.Uint64 // connections that ended: idle ones elsewhere may be dead too

	latency    prometheus.Observer // request durations; nil without a registry
	latencySum atomic.Int64        // nanoseconds, over answeredN requests
	answeredN  atomic.Int64

	quit     chan struct{} // closed to stop its connections
	quitOnce sync.Once
}

// observe records one answered request's duration.
func (b *backend) observe(d time.Duration) {
	b.latencySum.Add(int64(d))
	b.answeredN.Add(1)
	if b.latency != nil {
		b.latency.Observe(d.Seconds())
	}
}

// meanLatency is the mean time to an answer since start.
func (b *backend) meanLatency() time.Duration {
	n := b.answeredN.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(b.latencySum.Load() / n)
}

// close stops the backend's connections; calls still queued fail.
func (b *backend) close() { b.quitOnce.Do(func() { close(b.quit) }) }

// failed and answered keep the count of calls failed in a row.
func (b *backend) failed() { b.failures.Add(1) }

func (b *backend) answered() {
	if b.failures.Load() != 0 {
		b.failures.Store(0)
	}
}

func newBackend(addr string, nconns int, timeout time.Duration, logger *slog.Logger) *backend {
	b := &backend{addr: addr, timeout: timeout, logger: logger, quit: make(chan struct{})}
	quit := b.quit
	b.up.Store(true)
	// Wait for the first dials (each bounded by the timeout), so that
	// requests right after start-up find the connections made.
	var first sync.WaitGroup
	for i := 0; i < nconns; i++ {
		sc := &serverConn{b: b, queue: make(chan *call, 1024), quit: quit}
		b.conns = append(b.conns, sc)
		first.Add(1)
		go sc.run(first.Done)
	}
	first.Wait()
	return b
}

// send queues c on the connection chosen by pin. Calls with the same pin go
// over one connection, so one client's commands reach memcached in order.
// The server's clock starts here, once the whole request is in hand: a
// client slow to send its data block is never taken for a slow server.
func (b *backend) send(pin uint64, c *call) {
	b.requests.Add(1)
	c.queuedAt = time.Now()
	b.conns[pin%uint64(len(b.conns))].queue <- c
}

// do sends one call and waits for it.
func (b *backend) do(pin uint64, c *call) {
	b.send(pin, c)
	c.wait()
}

// serverConn is one connection to a server, with requests pipelined on it:
// a writer batches queued calls onto the socket, a reader matches replies to
// them in order. On any error the connection is dropped, every call on it
// fails, and it is dialled again.
type serverConn struct {
	b     *backend
	queue chan *call
	quit  <-chan struct{}
}

const retryDelay = 100 * time.Millisecond

func (sc *serverConn) run(dialled func()) {
	for {
		nc, err := net.DialTimeout("tcp", sc.b.addr, sc.b.timeout)
		if dialled != nil {
			if err != nil {
				sc.b.setUp(false, err) // down already when New returns, not a moment later
			}
			dialled()
			dialled = nil
		}
		if err == nil {
			sc.b.logger.Debug("server connection dialled", "server", sc.b.addr, "local", nc.LocalAddr().String())
			sc.b.setUp(true, nil)
			start := time.Now()
			err = sc.serve(nc)
			sc.b.lost.Add(1)
			sc.b.logger.Debug("server connection closed", "server", sc.b.addr, "local", nc.LocalAddr().String(), "err", err)
			if errors.Is(err, errServerClosed) {
				sc.failQueued(errServerClosed)
				return
			}
			if time.Since(start) > retryDelay {
				continue // it worked for a while: redial at once
			}
		}
		sc.b.setUp(false, err)
		// Until the next dial, fail what arrives at once rather than let
		// clients wait for a server that is not there.
		t := time.NewTimer(retryDelay)
	idle:
		for {
			select {
			case c := <-sc.queue:
				sc.b.errors.Add(1)
				sc.b.failed()
				c.finish(errServerDown)
			case <-t.C:
				break idle
			case <-sc.quit:
				t.Stop()
				sc.failQueued(errServerClosed)
				return
			}
		}
	}
}

// setUp records the server's state, logging each change once.
func (b *backend) setUp(up bool, err error) {
	if b.up.Swap(up) == up {
		return
	}
	if up {
		b.logger.Info("memcached server up", "server", b.addr)
	} else {
		b.logger.Warn("memcached server down", "server", b.addr, "err", err)
	}
}

func (sc *serverConn) failQueued(err error) {
	for {
		select {
		case c := <-sc.queue:
			c.finish(err)
		default:
			return
		}
	}
}

// serve runs one connection until it breaks, or until the proxy quits.
func (sc *serverConn) serve(nc net.Conn) error {
	p := &pipeline{nc: nc, b: sc.b, broken: make(chan struct{})}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		sc.read(p)
	}()
	err := sc.write(p)
	p.fail(err)
	<-readerDone
	return err
}

// pipeline is the calls written to one connection and not yet answered.
// The reader always waits on the socket, even when nothing is in flight,
// so a server that closes an idle connection (it restarted) is noticed at
// once and redialled before the next request, not by failing it. The read
// deadline is one timeout from when the oldest call was sent
// or, if later, became the oldest; none while idle.
type pipeline struct {
	nc     net.Conn
	b      *backend
	mu     sync.Mutex
	calls  []*call
	err    error         // set once the connection is done for
	broken chan struct{} // closed with err
}

// push adds a call about to be written; false if the connection is broken.
func (p *pipeline) push(c *call) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return false
	}
	if len(p.calls) == 0 {
		p.nc.SetReadDeadline(c.deadline())
	}
	p.calls = append(p.calls, c)
	return true
}

// head returns the oldest call in flight, or nil.
func (p *pipeline) head() *call {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.calls) == 0 {
		return nil
	}
	return p.calls[0]
}

// pop removes the answered oldest call and moves the deadline on from now.
func (p *pipeline) pop(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls[0] = nil
	p.calls = p.calls[1:]
	if len(p.calls) > 0 {
		// The server starts on a pipelined request once it has answered
		// the ones before it, so its clock starts again now: a long run
		// of large replies ahead of it is not taken for a slow server,
		// and a hung server is still noticed within one timeout.
		p.nc.SetReadDeadline(now.Add(p.calls[0].timeout))
	} else {
		p.nc.SetReadDeadline(time.Time{})
	}
}

// fail breaks the connection: every call in flight fails with err.
func (p *pipeline) fail(err error) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	p.err = err
	calls := p.calls
	p.calls = nil
	close(p.broken)
	p.mu.Unlock()
	p.nc.Close()
	for _, c := range calls {
		p.b.failed()
		c.finish(err)
	}
}

// maxBatch bounds the bytes the writer gathers into one write.
const maxBatch = 256 << 10

func (sc *serverConn) write(p *pipeline) error {
	var batch []byte
	for {
		var c *call
		select {
		case c = <-sc.queue:
		case <-p.broken:
			return errServerDown
		case <-sc.quit:
			return errServerClosed
		}
		// Write this call and whatever else is queued, then flush once.
		// Each call's bytes are copied into the batch before it joins the
		// pipeline: from then on it may be answered (or failed) and reused
		// at any moment, even while a write of its bytes would still run.
		deadline := c.deadline()
		batch = batch[:0]
		for n := 0; c != nil; n++ {
			batch = append(batch, c.out...)
			if c.shape == shapeQuiet {
				batch = append(batch, noop...)
			}
			if !p.push(c) {
				sc.b.errors.Add(1)
				sc.b.failed()
				c.finish(errServerDown)
				return errServerDown
			}
			c = nil
			if n < 1024 && len(batch) < maxBatch {
				select {
				case c = <-sc.queue:
				default:
				}
			}
		}
		p.nc.SetWriteDeadline(deadline)
		if _, err := p.nc.Write(batch); err != nil {
			return sc.classify(err)
		}
		if cap(batch) > maxBatch {
			batch = nil // do not pin what one large value needed
		}
	}
}

func (sc *serverConn) read(p *pipeline) {
	br := bufio.NewReaderSize(p.nc, 16<<10)
	for {
		_, err := br.Peek(1)
		c := p.head()
		if err == nil && c == nil {
			err = fmt.Errorf("%w: reply to no request", errServerReply)
		}
		if err == nil {
			err = readReply(br, c)
		}
		if err != nil {
			if c != nil || !isClosedOrEOF(err) {
				sc.b.errors.Add(1)
			}
			p.fail(sc.classify(err))
			return
		}
		now := time.Now()
		p.pop(now)
		sc.b.answered()
		sc.b.observe(now.Sub(c.queuedAt))
		c.finish(nil)
	}
}

// classify turns a socket error into what clients are told.
func (sc *serverConn) classify(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		sc.b.timeouts.Add(1)
		return errServerTimeout
	case errors.Is(err, errServerReply), errors.Is(err, errServerClosed):
		return err
	}
	return errServerDown
}

func isClosedOrEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}
