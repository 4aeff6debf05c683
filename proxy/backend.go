package proxy

import (
	"bufio"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// replyShape says where a server's reply to a call ends.
type replyShape uint8

const (
	shapeSingle   replyShape = iota // one line, plus a data block after VA/VALUE
	shapeUntilEnd                   // lines up to END (retrievals, stats)
	shapeQuiet                      // everything up to the MN of the noop we add
)

var noop = []byte("mn\r\n")

// call is one request to one server and, once done is closed, its reply.
type call struct {
	out      []byte // what to send, line and data block
	shape    replyShape
	deadline time.Time
	reply    []byte // the server's reply, without the MN of a quiet call
	err      error  // set instead of reply when the server could not answer
	done     chan struct{}
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func newCall(shape replyShape, timeout time.Duration) *call {
	c := callPool.Get().(*call)
	c.shape, c.deadline = shape, time.Now().Add(timeout)
	c.out, c.reply, c.err = c.out[:0], c.reply[:0], nil
	return c
}

func (c *call) finish(err error) {
	c.err = err
	c.done <- struct{}{}
}

func (c *call) wait() { <-c.done }

// release returns a finished call, whose reply has been used, to the pool.
func (c *call) release() {
	if cap(c.out) > 64<<10 || cap(c.reply) > 64<<10 {
		c.out, c.reply = nil, nil // do not pin large buffers
	}
	callPool.Put(c)
}

// Why a server did not answer; the text goes to the client after SERVER_ERROR.
var (
	errServerDown    = errors.New("server unavailable")
	errServerTimeout = errors.New("server timeout")
	errServerClosed  = errors.New("proxy shutting down")
	errServerReply   = errors.New("unexpected server reply")
)

// backend is one memcached server: a few pipelined connections and counters.
type backend struct {
	addr    string
	timeout time.Duration
	conns   []*serverConn

	requests atomic.Uint64
	errors   atomic.Uint64
	timeouts atomic.Uint64
	up       atomic.Bool
}

func newBackend(addr string, nconns int, timeout time.Duration, quit <-chan struct{}) *backend {
	b := &backend{addr: addr, timeout: timeout}
	b.up.Store(true)
	for i := 0; i < nconns; i++ {
		sc := &serverConn{b: b, queue: make(chan *call, 1024), quit: quit}
		b.conns = append(b.conns, sc)
		go sc.run()
	}
	return b
}

// send queues c on the connection chosen by pin. Calls with the same pin go
// over one connection, so one client's commands reach memcached in order.
func (b *backend) send(pin uint64, c *call) {
	b.requests.Add(1)
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

func (sc *serverConn) run() {
	for {
		nc, err := net.DialTimeout("tcp", sc.b.addr, sc.b.timeout)
		if err == nil {
			sc.b.up.Store(true)
			err = sc.serve(nc)
		}
		if errors.Is(err, errServerClosed) {
			sc.failQueued(errServerClosed)
			return
		}
		sc.b.up.Store(false)
		// Until the next dial, fail what arrives at once rather than let
		// clients wait for a server that is not there.
		t := time.NewTimer(retryDelay)
	idle:
		for {
			select {
			case c := <-sc.queue:
				sc.b.errors.Add(1)
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
	inflight := make(chan *call, cap(sc.queue))
	broken, readerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(readerDone)
		sc.read(nc, inflight, broken)
	}()
	err := sc.write(nc, inflight, broken)
	close(inflight)
	nc.Close()
	<-readerDone
	return err
}

func (sc *serverConn) write(nc net.Conn, inflight chan<- *call, broken <-chan struct{}) error {
	bw := bufio.NewWriterSize(nc, 16<<10)
	for {
		var c *call
		select {
		case c = <-sc.queue:
		case <-broken:
			return errServerDown
		case <-sc.quit:
			return errServerClosed
		}
		// Write this call and whatever else is queued, then flush once.
		deadline := c.deadline
		for c != nil {
			bw.Write(c.out)
			if c.shape == shapeQuiet {
				bw.Write(noop)
			}
			inflight <- c
			c = nil
			if len(inflight) < cap(inflight) {
				select {
				case c = <-sc.queue:
				default:
				}
			}
		}
		nc.SetWriteDeadline(deadline)
		if err := bw.Flush(); err != nil {
			return err
		}
	}
}

func (sc *serverConn) read(nc net.Conn, inflight <-chan *call, broken chan<- struct{}) {
	br := bufio.NewReaderSize(nc, 16<<10)
	var failed error
	for c := range inflight {
		if failed == nil {
			nc.SetReadDeadline(c.deadline)
			failed = readReply(br, c)
			if failed == nil {
				c.finish(nil)
				continue
			}
			if errors.Is(failed, os.ErrDeadlineExceeded) {
				failed = errServerTimeout
				sc.b.timeouts.Add(1)
			} else if !errors.Is(failed, errServerReply) {
				failed = errServerDown
			}
			nc.Close()
			close(broken)
		}
		sc.b.errors.Add(1)
		c.finish(failed)
	}
}
