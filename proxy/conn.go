package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime/debug"
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

	replyWriter // the writer's side (writer.go)
}

func newClientConn(env *connEnv, nc net.Conn, pin uint64) *clientConn {
	c := &clientConn{env: env, nc: nc, pin: pin}
	c.cr = &connReader{nc: nc}
	c.br = bufio.NewReaderSize(c.cr, clientBufferSize)
	c.replyWriter.init(nc, c.releaseGrant, c.stopReading)
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
