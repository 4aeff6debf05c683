package proxy

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// replyWriter is a client connection's writing side: it writes replies in
// the order their commands came, from its own goroutine (writeLoop) or,
// when nothing is queued before a reply, from the reader at once (sendNow).
type replyWriter struct {
	nc      net.Conn
	replies chan reply
	queued  atomic.Int64 // replies sent to the writer and not yet written
	// release gives back a grant whose LOCKED line could not be delivered.
	release func(*grantReply)
	// broke is called when a write fails, so that the reader stops too.
	broke func()

	mu     sync.Mutex // guards what follows
	bw     *bufio.Writer
	broken bool          // a write failed: replies are dropped from now on
	unsent []*grantReply // grants written since the last flush
	grant  grantReply    // the LOCKED line written at once (sendGrant)
	// deadline is the write deadline last set on the socket.
	deadline time.Time
}

func (w *replyWriter) init(nc net.Conn, release func(*grantReply), broke func()) {
	w.nc, w.release, w.broke = nc, release, broke
	w.replies = make(chan reply, maxPipeline)
	w.bw = bufio.NewWriterSize(nc, clientBufferSize)
}

func (w *replyWriter) send(r reply) {
	w.queued.Add(1)
	w.replies <- r
}

// sendNow writes r at once from the reader when nothing is waiting to be
// written before it, saving the hand-off to the writer: lock replies take
// this path, since a grant's latency is a lock's throughput.
func (w *replyWriter) sendNow(r reply) {
	if w.queued.Load() != 0 {
		w.send(r)
		return
	}
	w.output(r, true)
}

// sendGrant is sendNow for a LOCKED line, written from the writer's own
// grantReply when it goes out at once (nothing holds on to it after
// output returns); one queued behind other replies gets its own.
func (w *replyWriter) sendGrant(g grantReply) {
	if w.queued.Load() != 0 {
		queued := new(grantReply)
		*queued = g
		w.send(queued)
		return
	}
	w.grant = g
	w.output(&w.grant, true)
}

// writeLoop writes replies in order, flushing only when no further reply is
// already waiting, so pipelined replies share a write. It returns when the
// replies channel is closed.
func (w *replyWriter) writeLoop() {
	for r := range w.replies {
		w.output(r, len(w.replies) == 0)
		w.queued.Add(-1)
	}
	w.mu.Lock()
	if !w.broken {
		w.bw.Flush()
	}
	w.mu.Unlock()
}

// output writes one reply, and flushes when asked. A grant whose reply
// cannot be delivered is given back (see clientConn.releaseGrant).
func (w *replyWriter) output(r reply, flush bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	g, isGrant := r.(*grantReply)
	if w.broken {
		discard(r)
		if isGrant {
			w.release(g)
		}
		return
	}
	r.write(w.bw)
	if isGrant {
		w.unsent = append(w.unsent, g)
	}
	if !flush {
		return
	}
	// Refresh the deadline only now and then: setting it costs a timer
	// update, and per flush that shows in profiles.
	if now := time.Now(); w.deadline.Sub(now) < writeTimeout/2 {
		w.deadline = now.Add(writeTimeout)
		w.nc.SetWriteDeadline(w.deadline)
	}
	if err := w.bw.Flush(); err != nil {
		w.broken = true
		w.broke()
		for _, g := range w.unsent {
			w.release(g)
		}
	}
	w.unsent = w.unsent[:0]
}

// writeFailed reports whether a write failed, for the debug log.
func (w *replyWriter) writeFailed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.broken
}

// writeTimeout is how long a client may leave its replies unread before
// the proxy gives up on it; until then it simply stops reading its commands.
const writeTimeout = 30 * time.Second

// discard waits for a reply nobody will read, so its resources are freed.
func discard(r reply) { r.write(bufio.NewWriterSize(io.Discard, 16)) }
