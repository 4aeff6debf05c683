package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
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

// reply is one client command's answer, in command order. write blocks
// until the answer is known.
type reply interface {
	write(w *bufio.Writer)
}

// clientConn is one client connection: a reader that parses and dispatches
// commands, and a writer that puts the replies back in order.
type clientConn struct {
	s        *Server
	nc       net.Conn
	cr       *connReader
	br       *bufio.Reader
	pin      uint64 // picks the server connections this client's commands use
	replies  chan reply
	req      request
	picks    []int // scratch for multi-key routing
	session  *lockext.Session
	ctx      context.Context // ends when the client hangs up or the proxy stops
	cancel   context.CancelFunc
	stopping atomic.Bool
	long     []byte // scratch for retrieval lines longer than the read buffer
	sawEOF   bool   // the client closed its side
}

func newClientConn(s *Server, nc net.Conn) *clientConn {
	c := &clientConn{s: s, nc: nc, pin: s.nextPin.Add(1), replies: make(chan reply, maxPipeline)}
	c.cr = &connReader{nc: nc}
	c.br = bufio.NewReaderSize(c.cr, clientBufferSize)
	c.ctx, c.cancel = context.WithCancel(context.Background())
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
	defer c.s.untrack(c)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	defer func() {
		if p := recover(); p != nil {
			c.s.cfg.Logger.Error("panic serving client; closing its connection",
				"client", c.nc.RemoteAddr(), "panic", p, "stack", string(debug.Stack()))
		}
		close(c.replies)
		<-writerDone
		c.close()
		c.cancel()
		if c.session != nil {
			ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.Timeout)
			c.session.Close(ctx)
			cancel()
		}
	}()
	for !c.stopping.Load() {
		line, err := c.readLine()
		if err != nil {
			c.sawEOF = errors.Is(err, io.EOF)
			if errors.Is(err, errLineTooLong) {
				c.send(staticReply("CLIENT_ERROR line too long\r\n"))
			}
			return
		}
		c.s.commands.Add(1)
		if !c.handle(line) {
			return
		}
	}
}

func (c *clientConn) send(r reply) { c.replies <- r }

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
	bw := bufio.NewWriterSize(c.nc, clientBufferSize)
	var unsent []*grantReply // grants written since the last flush
	var deadline time.Time
	broken := false
	for r := range c.replies {
		if broken {
			discard(r)
			if g, ok := r.(*grantReply); ok {
				c.releaseGrant(g)
			}
			continue
		}
		r.write(bw)
		if g, ok := r.(*grantReply); ok {
			unsent = append(unsent, g)
		}
		if len(c.replies) == 0 {
			// Refresh the deadline only now and then: setting it costs a
			// timer update, and per flush that shows in profiles.
			if now := time.Now(); deadline.Sub(now) < writeTimeout/2 {
				deadline = now.Add(writeTimeout)
				c.nc.SetWriteDeadline(deadline)
			}
			if err := bw.Flush(); err != nil {
				broken = true
				c.stopReading()
				for _, g := range unsent {
					c.releaseGrant(g)
				}
			}
			unsent = unsent[:0]
		}
	}
	if !broken {
		bw.Flush()
	}
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

// staticReply is an answer the proxy knows at once.
type staticReply []byte

func (r staticReply) write(w *bufio.Writer) { w.Write(r) }

var (
	replyERROR      = staticReply("ERROR\r\n")
	replyFormat     = staticReply("CLIENT_ERROR bad command line format\r\n")
	replyNoop       = staticReply("MN\r\n")
	replyOKStatic   = staticReply("OK\r\n")
	replyTooLarge   = staticReply("SERVER_ERROR object too large for cache\r\n")
	replyBadChunk   = staticReply("CLIENT_ERROR bad data chunk\r\n")
	replyNoReplyErr = staticReply("CLIENT_ERROR noreply not allowed\r\n")
)

// errorReply turns a parse error into the line memcached would send.
func errorReply(err error) reply {
	switch err {
	case errUnknown:
		return replyERROR
	case errFormat:
		return replyFormat
	}
	return staticReply(err.Error() + "\r\n")
}

// serverError is the reply for a call the server could not answer.
func serverError(err error) []byte { return fmt.Appendf(nil, "SERVER_ERROR %v\r\n", err) }

// write passes the server's answer to one call through unchanged.
func (c *call) write(w *bufio.Writer) {
	c.wait()
	if c.err != nil {
		w.Write(serverError(c.err))
	} else {
		w.Write(c.reply)
	}
	c.release()
}
