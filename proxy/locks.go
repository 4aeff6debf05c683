package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
	"github.com/memcachedlock/memcachedlock/lockservice"
)

// lockCommand carries out a lock command. Waits happen here, in the
// reader: later commands from the same client wait for the lock too, which
// is what a client that pipelines "lock" and then its writes means.
func (c *clientConn) lockCommand() {
	r, refused := parseLock(c.req.cmd, c.req.tokens[1:], c.env.lockLimits)
	if refused != nil {
		c.send(readyReply(refused))
		return
	}
	if r.cmd == cmdLock || r.cmd == cmdRLock {
		req := lockext.Request{Name: r.name, TTL: c.env.lockTTL, Wait: c.env.lockWait, Owner: r.owner, Reentrant: r.cmd == cmdRLock}
		if r.ttl > 0 {
			req.TTL = r.ttl
		}
		if r.wait >= 0 {
			req.Wait = r.wait
		}
		c.lock(req)
		return
	}
	// Each memcached exchange is bounded by --timeout, and a forward by the
	// peer link's own limit. The connection's context is not used: a
	// shutdown ends it, and a command read before the shutdown is carried
	// out and answered (an unlock cut short left its lease held).
	ctx := context.Background()
	var out []byte
	switch r.cmd {
	case cmdUnlock:
		left, err := c.lockSession().Unlock(ctx, r.name, r.fence)
		switch {
		case err != nil:
			out = lockError(err)
		case left == 0:
			c.sendNow(replyUnlocked)
			return
		default:
			out = append(strconv.AppendInt([]byte("UNLOCKED "), int64(left), 10), "\r\n"...)
		}
	case cmdExtend:
		left, err := c.lockSession().Extend(ctx, r.name, r.fence, r.ttl)
		out = append(strconv.AppendInt([]byte("EXTENDED "), int64(left), 10), "\r\n"...)
		if err != nil {
			out = lockError(err)
		}
	case cmdLockInfo:
		info, err := c.lockSession().Info(ctx, r.name)
		out = fmt.Appendf(nil, "LOCK %d %d %d %s %d\r\n", info.Fence, info.TTL, info.Count, info.Owner, info.Waiters)
		if err != nil {
			out = lockError(err)
		}
	}
	c.sendNow(readyReply(out))
}

// lock takes a lock and queues the reply. While it waits, a background
// read watches for the client hanging up, which ends the wait; the reply
// is queued before that read is stopped, so stopping it costs the grant
// no time.
func (c *clientConn) lock(req lockext.Request) {
	// The connection's own context: a hang-up seen by the background read
	// ends the connection anyway, so a context per wait would buy nothing.
	ctx := c.ctx
	c.watching = false
	req.OnWait = c.watch
	start := time.Now()
	g, err := c.lockSession().Lock(ctx, req)
	if waited := time.Since(start); waited > longLockWait {
		c.env.logger.Debug("long lock wait", "lock", req.Name, "waited", waited, "granted", err == nil, "client", c.nc.RemoteAddr().String())
	}
	if errors.Is(err, context.Canceled) && c.stopping.Load() {
		err = lockext.ErrClosed // the wait ended because the proxy is stopping
	}
	c.env.metrics.lockWaited(start, waitOutcome(err))
	if err == nil {
		c.sendGrant(grantReply{g})
	} else {
		c.sendNow(readyReply(lockError(err)))
	}
	if c.watching {
		c.cr.stopBackgroundRead()
		if c.stopping.Load() {
			c.nc.SetReadDeadline(time.Now()) // shutdown began during the wait
		}
	}
}

// startWatching starts the background read that notices a client hanging
// up during a lock wait; c.watch is this, bound once per connection.
func (c *clientConn) startWatching() {
	c.watching = true
	c.cr.startBackgroundRead(c.cancel)
}

// servePeer serves another proxy that forwards lock commands for names
// whose home this proxy is.
// Replies are tagged, so their order does not matter: each is written by
// the goroutine that made it, one hand-off sooner than the writer's queue
// (a grant's latency is the lock's throughput).
func (c *clientConn) servePeer() {
	c.output(replyPeer, true)
	next := func() ([]byte, error) {
		line, err := c.readLine()
		return bytes.Clone(line), err
	}
	c.env.locks.ServePeer(c.ctx, next, func(b []byte) { c.output(readyReply(b), true) })
}

// replyUnlocked is the reply to the unlock of a last level.
var replyUnlocked reply = readyReply("UNLOCKED 0\r\n")

// waitOutcome names how a lock wait ended, for the metrics.
func waitOutcome(err error) string {
	if err == nil {
		return "granted" // before nl, which escapes: a grant allocates nothing here
	}
	var nl *lockext.NotLockedError
	switch {
	case errors.As(err, &nl):
		return "not_locked"
	default:
		return "error"
	}
}

// longLockWait is the wait after which a lock command is logged (debug).
const longLockWait = time.Second

func (c *clientConn) lockSession() *lockservice.Session {
	if c.session == nil {
		c.session = c.env.locks.NewSession()
	}
	return c.session
}

// lockError turns the lock manager's errors into reply lines.
func lockError(err error) []byte {
	var nl *lockext.NotLockedError
	switch {
	case errors.As(err, &nl):
		return fmt.Appendf(nil, "NOT_LOCKED %d\r\n", nl.HolderTTL)
	case errors.Is(err, lockext.ErrNotFound):
		return replyNotFound
	case errors.Is(err, lockext.ErrNotOwner):
		return replyNotOwner
	case errors.Is(err, lockext.ErrModeMismatch):
		return replyModeMismatch
	case errors.Is(err, lockext.ErrBadRequest):
		return replyFormat
	case errors.Is(err, lockservice.ErrRecovering):
		return replyRecovering
	case errors.Is(err, lockservice.ErrServersDiffer):
		return replyLocksDiffer
	case errors.Is(err, lockext.ErrClosed):
		return replyShuttingDown
	case errors.Is(err, context.Canceled):
		return replyClientGone // never read
	default:
		return replyLocksDown
	}
}

// grantReply is a LOCKED line; if it cannot be delivered, what it handed
// out is given back, so that nobody holds a lock they do not know of.
type grantReply struct{ lockext.Grant }

// write formats "LOCKED <fence> <ttl> <count>" straight into the buffer.
func (g *grantReply) write(w *bufio.Writer) {
	b := w.AvailableBuffer()
	b = strconv.AppendUint(append(b, "LOCKED "...), g.Fence, 10)
	b = strconv.AppendInt(append(b, ' '), int64(g.TTL), 10)
	b = strconv.AppendInt(append(b, ' '), int64(g.Count), 10)
	w.Write(append(b, "\r\n"...))
}

// releaseGrant gives back what a LOCKED line that could not be delivered
// handed out: a new grant, or a reentrant lock's new level. Only while no
// later reply handed the grant out again (its owner asking again on
// another connection or through another proxy), which the lock service
// decides where the grant was made; otherwise the grant is kept until its
// holder releases it or its ttl runs out. A grant its holder had already
// (Again) is always kept.
func (c *clientConn) releaseGrant(g *grantReply) {
	if g.Again {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.env.timeout)
	defer cancel()
	c.lockSession().Undelivered(ctx, g.Grant)
}
