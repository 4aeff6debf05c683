package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memcachedlock/memcachedlock/lockservice"
)

// maxRetrievalLine bounds get/gets/gat/gats lines, which may be longer than
// other command lines (about 4000 keys of the longest size).
const maxRetrievalLine = 1 << 20

// maxPipeline bounds the replies a client may have outstanding; a client
// that sends without reading stops being read, and so cannot make the proxy
// buffer without bound.
const maxPipeline = 128

// clientBufferSize is each client's read and write buffer: small, because
// idle connections are many (10,000 cost about 100 MiB) and memcached
// lines are short; values pass through in as many reads as they need.
const clientBufferSize = 4 << 10

// clientConn is one client connection: a reader that parses and dispatches
// commands, and a writer that puts the replies back in order.
type clientConn struct {
	env      *connEnv
	nc       net.Conn
	cr       *connReader
	br       *bufio.Reader
	pin      uint64 // picks the server connections this client's commands use
	replies  chan reply
	req      request
	picks    []int // scratch for multi-key routing
	session  *lockservice.Session
	watch    func()          // c.startWatching, made once
	watching bool            // a lock wait started the background read
	ctx      context.Context // ends when the client hangs up or the proxy stops
	cancel   context.CancelFunc
	stopping atomic.Bool
	long     []byte // scratch for retrieval lines longer than the read buffer
	sawEOF   bool   // the client closed its side

	queued atomic.Int64 // replies sent to the writer and not yet written
	wmu    sync.Mutex   // guards what follows: the writer's side
	bw     *bufio.Writer
	broken bool          // a write failed: replies are dropped from now on
	unsent []*grantReply // grants written since the last flush
	grant  grantReply    // the LOCKED line written at once (sendGrant)
	// deadline is the write deadline last set on the socket.
	deadline time.Time
}

func newClientConn(env *connEnv, nc net.Conn, pin uint64) *clientConn {
	c := &clientConn{env: env, nc: nc, pin: pin, replies: make(chan reply, maxPipeline)}
	c.cr = &connReader{nc: nc}
	c.br = bufio.NewReaderSize(c.cr, clientBufferSize)
	c.bw = bufio.NewWriterSize(nc, clientBufferSize)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.watch = c.startWatching
	return c
}

// stopReading makes the reader stop after the command it is on; replies to
// commands already read are still written.
func (c *clientConn) stopReading() {
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Now())
	c.cancel()
}

func (c *clientConn) serve() {
	defer c.env.untrack(c)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	defer func() {
		if p := recover(); p != nil {
			c.env.logger.Error("panic serving client; closing its connection",
				"client", c.nc.RemoteAddr(), "panic", p, "stack", string(debug.Stack()))
		}
		close(c.replies)
		<-writerDone
		c.close()
		c.cancel()
		if c.session != nil {
			ctx, cancel := context.WithTimeout(context.Background(), c.env.timeout)
			c.session.Close(ctx)
			cancel()
		}
	}()
	if first, err := c.br.Peek(1); err == nil && first[0] == binRequestMagic {
		c.serveBinary()
		return
	}
	for first := true; !c.stopping.Load(); first = false {
		line, err := c.readLine()
		if err != nil {
			c.sawEOF = errors.Is(err, io.EOF)
			if errors.Is(err, errLineTooLong) {
				c.send(replyLineTooLong)
			}
			return
		}
		if first && c.env.locks.IsPeerHello(line) {
			c.servePeer()
			return
		}
		c.env.counters.commands.Add(1)
		if !c.handle(line) {
			return
		}
	}
}

func (c *clientConn) send(r reply) {
	c.queued.Add(1)
	c.replies <- r
}

// sendNow writes r at once from the reader when nothing is waiting to be
// written before it, saving the hand-off to the writer: lock replies take
// this path, since a grant's latency is a lock's throughput.
func (c *clientConn) sendNow(r reply) {
	if c.queued.Load() != 0 {
		c.send(r)
		return
	}
	c.output(r, true)
}

// close ends the connection. When the client may still be sending (the
// proxy gave up on its stream), the proxy stops writing and drains a little
// first: closing a socket with unread input resets it, and a reset can
// destroy the last reply before the client reads it.
func (c *clientConn) close() {
	if tc, ok := c.nc.(*net.TCPConn); ok && !c.sawEOF {
		tc.CloseWrite()
		tc.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(tc, 1<<20))
	}
	c.nc.Close()
}

// writeLoop writes replies in order, flushing only when no further reply is
// already waiting, so pipelined replies share a write.
func (c *clientConn) writeLoop() {
	for r := range c.replies {
		c.output(r, len(c.replies) == 0)
		c.queued.Add(-1)
	}
	c.wmu.Lock()
	if !c.broken {
		c.bw.Flush()
	}
	c.wmu.Unlock()
}

// output writes one reply, and flushes when asked. A grant whose reply
// cannot be delivered is released again.
func (c *clientConn) output(r reply, flush bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	g, isGrant := r.(*grantReply)
	if c.broken {
		discard(r)
		if isGrant {
			c.releaseGrant(g)
		}
		return
	}
	r.write(c.bw)
	if isGrant {
		c.unsent = append(c.unsent, g)
	}
	if !flush {
		return
	}
	// Refresh the deadline only now and then: setting it costs a timer
	// update, and per flush that shows in profiles.
	if now := time.Now(); c.deadline.Sub(now) < writeTimeout/2 {
		c.deadline = now.Add(writeTimeout)
		c.nc.SetWriteDeadline(c.deadline)
	}
	if err := c.bw.Flush(); err != nil {
		c.broken = true
		c.stopReading()
		for _, g := range c.unsent {
			c.releaseGrant(g)
		}
	}
	c.unsent = c.unsent[:0]
}

// writeTimeout is how long a client may leave its replies unread before
// the proxy gives up on it; until then it simply stops reading its commands.
const writeTimeout = 30 * time.Second

// discard waits for a reply nobody will read, so its resources are freed.
func discard(r reply) { r.write(bufio.NewWriterSize(io.Discard, 16)) }

var errLineTooLong = errors.New("line too long")

// readLine returns the next command line without its line ending. The
// slice is valid until the next read.
func (c *clientConn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// Only retrievals may be this long.
		if len(line) > maxLineLen && !isRetrievalLine(line) {
			return nil, errLineTooLong
		}
		c.long = append(c.long[:0], line...)
		for err == bufio.ErrBufferFull {
			line, err = c.br.ReadSlice('\n')
			c.long = append(c.long, line...)
			if len(c.long) > maxRetrievalLine {
				return nil, errLineTooLong
			}
		}
		line = c.long
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > maxLineLen && !isRetrievalLine(line) {
		return nil, errLineTooLong
	}
	return line, nil
}

func isRetrievalLine(line []byte) bool {
	line = bytes.TrimLeft(line, " ")
	for _, v := range [...]string{"get ", "gets ", "gat ", "gats "} {
		if bytes.HasPrefix(line, []byte(v)) {
			return true
		}
	}
	return false
}
