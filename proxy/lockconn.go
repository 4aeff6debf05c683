package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// lockConn carries the lock service's batches to one lock server over
// connections of its own, each used by one exchange at a time: the caller
// writes the batch and reads the replies itself. On the shared pipelined
// connections an exchange costs three goroutine wake-ups (their writer,
// their reader, the caller); here it costs one, and every lock handoff
// waits for an exchange. The backend still counts the server's failures
// and latency, so health, ejection and metrics see lock traffic too.
type lockConn struct {
	b     *backend
	idle  chan *lockSocket // connections between exchanges
	slots chan struct{}    // one per connection open or being dialled
}

// lockSocket is one connection of a lockConn.
type lockSocket struct {
	nc  net.Conn
	br  *bufio.Reader
	out []byte
}

// lockConnsMax bounds the connections to one lock server: as many
// exchanges run at once, more wait for one to finish. They stay open
// between exchanges, as many as were ever needed at once.
const lockConnsMax = 64

func newLockConn(b *backend) *lockConn {
	return &lockConn{b: b, idle: make(chan *lockSocket, lockConnsMax), slots: make(chan struct{}, lockConnsMax)}
}

// Exchange writes batch and an mn after it, and returns every reply before
// the MN. A connection whose exchange failed in any way is closed, never
// reused: a late reply on it would be taken for the next batch's.
func (lc *lockConn) Exchange(ctx context.Context, batch, reply []byte) ([]byte, error) {
	ls, err := lc.get(ctx)
	if err != nil {
		return nil, err
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

// get returns an idle connection, or dials one when none is idle and fewer
// than lockConnsMax are open.
func (lc *lockConn) get(ctx context.Context) (*lockSocket, error) {
	select {
	case ls := <-lc.idle:
		return ls, nil
	default:
	}
	wait := time.NewTimer(lc.b.timeout)
	defer wait.Stop()
	select {
	case ls := <-lc.idle:
		return ls, nil
	case lc.slots <- struct{}{}:
	case <-wait.C:
		return nil, errServerTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	nc, err := net.DialTimeout("tcp", lc.b.addr, lc.b.timeout)
	if err != nil {
		<-lc.slots
		lc.b.failed()
		return nil, errServerDown
	}
	return &lockSocket{nc: nc, br: bufio.NewReaderSize(nc, 4<<10)}, nil
}

func (lc *lockConn) put(ls *lockSocket) { lc.idle <- ls }

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
