package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// lockConn carries the lock service's batches to one lock server. A few
// connections of its own are each used by one exchange at a time: the
// caller writes the batch and reads the replies itself, one goroutine
// wake-up where the shared pipelined connections take three (their writer,
// their reader, the caller), and every lock handoff waits for an exchange.
// When all of those are busy, the exchange goes over the shared
// connections, whose writer puts many callers' batches in one write: under
// load that saves more syscalls than the hand-offs cost. The backend counts
// the server's failures and latency either way, so health, ejection and
// metrics see lock traffic too.
type lockConn struct {
	b     *backend
	idle  chan *lockSocket // direct connections between exchanges
	slots chan struct{}    // one per direct connection open or being dialled
}

// lockSocket is one connection of a lockConn.
type lockSocket struct {
	nc   net.Conn
	br   *bufio.Reader
	out  []byte
	lost uint64 // the backend's lost count when it went idle
}

// lockConnsDirect is how many exchanges with one lock server run on
// connections of their own at once.
const lockConnsDirect = 4

func newLockConn(b *backend) *lockConn {
	return &lockConn{b: b, idle: make(chan *lockSocket, lockConnsDirect), slots: make(chan struct{}, lockConnsDirect)}
}

// Exchange writes batch and an mn after it, and returns every reply before
// the MN. A connection whose exchange failed in any way is closed, never
// reused: a late reply on it would be taken for the next batch's.
func (lc *lockConn) Exchange(ctx context.Context, batch, reply []byte) ([]byte, error) {
	ls, err := lc.get()
	if err != nil {
		return nil, err
	}
	if ls == nil {
		return lc.pipelined(ctx, batch, reply)
	}
	start := time.Now()
	lc.b.requests.Add(1)
	// One exchange is bounded by the timeout, the context's own deadline
	// aside: a caller that gives up meanwhile still learns what happened.
	deadline := start.Add(lc.b.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ls.nc.SetDeadline(deadline)
	ls.out = append(append(ls.out[:0], batch...), noop...)
	if reply == nil {
		reply = make([]byte, 0, 256) // a lock batch's replies fit
	}
	c := call{shape: shapeQuiet, reply: reply}
	if _, err = ls.nc.Write(ls.out); err == nil {
		err = readReply(ls.br, &c)
	}
	if err != nil {
		lc.drop(ls)
		lc.b.lost.Add(1) // the idle ones are suspect too
		lc.b.failed()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, errServerTimeout
		}
		return nil, errServerDown
	}
	lc.b.answered()
	lc.b.observe(time.Since(start))
	lc.put(ls)
	return c.reply, nil
}

// get returns an idle direct connection, dials one when fewer than
// lockConnsDirect are open, and returns none when all are busy.
func (lc *lockConn) get() (*lockSocket, error) {
	for {
		select {
		case ls := <-lc.idle:
			if ls.lost == lc.b.lost.Load() {
				return ls, nil
			}
			// A connection to the server ended since this one was used:
			// the server may have restarted, and this one be dead too.
			lc.drop(ls)
			continue
		default:
		}
		break
	}
	select {
	case lc.slots <- struct{}{}:
	default:
		return nil, nil
	}
	nc, err := net.DialTimeout("tcp", lc.b.addr, lc.b.timeout)
	if err != nil {
		<-lc.slots
		lc.b.failed()
		return nil, errServerDown
	}
	return &lockSocket{nc: nc, br: bufio.NewReaderSize(nc, 4<<10)}, nil
}

// pipelined sends the batch over the server's shared connections, as one
// call, so nothing of another client's comes between its commands.
func (lc *lockConn) pipelined(ctx context.Context, batch, reply []byte) ([]byte, error) {
	c := newCall(shapeQuiet, lc.b.timeout)
	c.out = append(c.out, batch...)
	lc.b.send(0, c)
	select {
	case <-c.done:
	case <-ctx.Done():
		// The call is in flight: let it finish before it goes back to the pool.
		go func() { c.wait(); c.release() }()
		return nil, ctx.Err()
	}
	reply, err := append(reply, c.reply...), c.err
	c.release()
	return reply, err
}

func (lc *lockConn) put(ls *lockSocket) {
	ls.lost = lc.b.lost.Load()
	lc.idle <- ls
}

func (lc *lockConn) drop(ls *lockSocket) {
	ls.nc.Close()
	<-lc.slots
}

// close closes the idle connections; exchanges in flight close theirs.
func (lc *lockConn) close() {
	for {
		select {
		case ls := <-lc.idle:
			lc.drop(ls)
		default:
			return
		}
	}
}
