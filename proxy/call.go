package proxy

import (
	"bufio"
	"errors"
	"sync"
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
	timeout  time.Duration // how long the server has to answer, from queuedAt
	queuedAt time.Time     // set by backend.send: the server's clock starts there
	reply    []byte        // the server's reply, without the MN of a quiet call
	err      error         // set instead of reply when the server could not answer
	done     chan struct{}
	group    *multiGet // set for a part of a multi-key get: finishing counts there
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func newCall(shape replyShape, timeout time.Duration) *call {
	c := callPool.Get().(*call)
	c.shape, c.timeout = shape, timeout
	c.out, c.reply, c.err = c.out[:0], c.reply[:0], nil
	c.group = nil
	return c
}

// deadline is when the server's time to answer runs out.
func (c *call) deadline() time.Time { return c.queuedAt.Add(c.timeout) }

func (c *call) finish(err error) {
	c.err = err
	if c.group != nil {
		c.group.finished()
		return
	}
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
