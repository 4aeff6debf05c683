package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
	"github.com/memcachedlock/memcachedlock/lockservice"
)

var lockUsage = map[command]string{
	cmdLock:     "lock <key> [<ttl> [<wait_ms> [<owner>]]]",
	cmdRLock:    "rlock <key> <ttl> <wait_ms> <owner>",
	cmdUnlock:   "unlock <key> <fence>",
	cmdExtend:   "extend <key> <fence> <ttl>",
	cmdLockInfo: "lockinfo <key>",
}

// lockArity is the least and most arguments of each lock command.
var lockArity = map[command][2]int{
	cmdLock: {1, 4}, cmdRLock: {4, 4}, cmdUnlock: {2, 2}, cmdExtend: {3, 3}, cmdLockInfo: {1, 1},
}

// lockCommand carries out a lock command. Waits happen here, in the
// reader: later commands from the same client wait for the lock too, which
// is what a client that pipelines "lock" and then its writes means.
func (c *clientConn) lockCommand() {
	r := &c.req
	args := r.tokens[1:]
	if len(args) > 0 && string(args[len(args)-1]) == "noreply" {
		c.send(replyNoReplyErr)
		return
	}
	if arity := lockArity[r.cmd]; len(args) < arity[0] || len(args) > arity[1] {
		c.send(staticReply("CLIENT_ERROR usage: " + lockUsage[r.cmd] + "\r\n"))
		return
	}
	if !validName(args[0]) {
		c.send(replyFormat)
		return
	}
	name := string(args[0])
	cfg := &c.s.cfg
	var out []byte
	switch r.cmd {
	case cmdLock, cmdRLock:
		req := lockext.Request{Name: name, TTL: cfg.LockTTL, Wait: cfg.LockWait, Reentrant: r.cmd == cmdRLock}
		if len(args) > 1 {
			ttl, ok := parseUint(args[1], 31)
			if !ok || ttl < 1 || int(ttl) > cfg.LockTTLMax {
				c.send(staticReply(fmt.Sprintf("CLIENT_ERROR ttl must be 1 to %d\r\n", cfg.LockTTLMax)))
				return
			}
			req.TTL = int(ttl)
		}
		if len(args) > 2 {
			ms, ok := parseUint(args[2], 40)
			if !ok || time.Duration(ms)*time.Millisecond > cfg.LockWaitMax {
				c.send(staticReply(fmt.Sprintf("CLIENT_ERROR wait_ms must be 0 to %d\r\n", cfg.LockWaitMax.Milliseconds())))
				return
			}
			req.Wait = time.Duration(ms) * time.Millisecond
		}
		if len(args) > 3 {
			if !validOwner(args[3]) {
				c.send(staticReply("CLIENT_ERROR owner must be 1 to 64 printable bytes\r\n"))
				return
			}
			req.Owner = string(args[3])
		}
		c.lock(req)
		return
	case cmdUnlock, cmdExtend:
		fence, ok := parseUint(args[1], 64)
		if !ok {
			c.send(staticReply("CLIENT_ERROR invalid fence\r\n"))
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*cfg.Timeout+time.Second)
		defer cancel()
		if r.cmd == cmdUnlock {
			left, err := c.lockSession().Unlock(ctx, name, fence)
			out = fmt.Appendf(nil, "UNLOCKED %d\r\n", left)
			if err != nil {
				out = lockError(err)
			}
			break
		}
		ttl, ok := parseUint(args[2], 31)
		if !ok || ttl < 1 || int(ttl) > cfg.LockTTLMax {
			out = fmt.Appendf(nil, "CLIENT_ERROR ttl must be 1 to %d\r\n", cfg.LockTTLMax)
			break
		}
		left, err := c.lockSession().Extend(ctx, name, fence, int(ttl))
		out = fmt.Appendf(nil, "EXTENDED %d\r\n", left)
		if err != nil {
			out = lockError(err)
		}
	case cmdLockInfo:
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout+time.Second)
		defer cancel()
		info, err := c.lockSession().Info(ctx, name)
		out = fmt.Appendf(nil, "LOCK %d %d %d %s %d\r\n", info.Fence, info.TTL, info.Count, info.Owner, info.Waiters)
		if err != nil {
			out = lockError(err)
		}
	}
	c.sendNow(staticReply(out))
}

// lock takes a lock and queues the reply. While it waits, a background
// read watches for the client hanging up, which ends the wait; the reply
// is queued before that read is stopped, so stopping it costs the grant
// no time.
func (c *clientConn) lock(req lockext.Request) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	watching := false
	req.OnWait = func() {
		watching = true
		c.cr.startBackgroundRead(cancel)
	}
	start := time.Now()
	g, err := c.lockSession().Lock(ctx, req)
	if waited := time.Since(start); waited > longLockWait {
		c.s.cfg.Logger.Debug("long lock wait", "lock", req.Name, "waited", waited, "granted", err == nil, "client", c.nc.RemoteAddr().String())
	}
	if errors.Is(err, context.Canceled) && c.stopping.Load() {
		err = lockext.ErrClosed // the wait ended because the proxy is stopping
	}
	var nl *lockext.NotLockedError
	switch {
	case err == nil:
		c.s.metrics.lockWaited(start, "granted")
	case errors.As(err, &nl):
		c.s.metrics.lockWaited(start, "not_locked")
	default:
		c.s.metrics.lockWaited(start, "error")
	}
	if err == nil {
		c.sendNow(&grantReply{line: fmt.Appendf(nil, "LOCKED %d %d %d\r\n", g.Fence, g.TTL, g.Count), name: req.Name, fence: g.Fence})
	} else {
		c.sendNow(staticReply(lockError(err)))
	}
	if watching {
		c.cr.stopBackgroundRead()
		if c.stopping.Load() {
			c.nc.SetReadDeadline(time.Now()) // shutdown began during the wait
		}
	}
}

// servePeer serves another proxy that forwards lock commands for names
// whose home this proxy is.
func (c *clientConn) servePeer() {
	c.send(staticReply("PEER\r\n"))
	next := func() ([]byte, error) {
		line, err := c.readLine()
		return bytes.Clone(line), err
	}
	c.s.locks.ServePeer(c.ctx, next, func(b []byte) { c.send(staticReply(b)) })
}

// longLockWait is the wait after which a lock command is logged (debug).
const longLockWait = time.Second

func (c *clientConn) lockSession() *lockservice.Session {
	if c.session == nil {
		c.session = c.s.locks.NewSession()
	}
	return c.session
}

func validOwner(b []byte) bool {
	if len(b) == 0 || len(b) > 64 {
		return false
	}
	for _, ch := range b {
		if ch <= ' ' || ch >= 0x7f {
			return false
		}
	}
	return true
}

// lockError turns the lock manager's errors into reply lines.
func lockError(err error) []byte {
	var nl *lockext.NotLockedError
	switch {
	case errors.As(err, &nl):
		return fmt.Appendf(nil, "NOT_LOCKED %d\r\n", nl.HolderTTL)
	case errors.Is(err, lockext.ErrNotFound):
		return []byte("NOT_FOUND\r\n")
	case errors.Is(err, lockext.ErrNotOwner):
		return []byte("NOT_OWNER\r\n")
	case errors.Is(err, lockext.ErrModeMismatch):
		return []byte("CLIENT_ERROR lock is held in another mode\r\n")
	case errors.Is(err, lockext.ErrBadRequest):
		return []byte("CLIENT_ERROR bad command line format\r\n")
	case errors.Is(err, lockservice.ErrRecovering):
		return []byte("SERVER_ERROR lock server recovering\r\n")
	case errors.Is(err, lockservice.ErrServersDiffer):
		return []byte("SERVER_ERROR lock servers differ between proxies\r\n")
	case errors.Is(err, lockext.ErrClosed):
		return []byte("SERVER_ERROR proxy shutting down\r\n")
	case errors.Is(err, context.Canceled):
		return []byte("SERVER_ERROR client gone\r\n") // never read
	default:
		return []byte("SERVER_ERROR lock server unavailable\r\n")
	}
}

// grantReply is a LOCKED line; if it cannot be delivered, the grant is
// released again so that nobody holds a lock they do not know of.
type grantReply struct {
	line  []byte
	name  string
	fence uint64
}

func (g *grantReply) write(w *bufio.Writer) { w.Write(g.line) }

func (c *clientConn) releaseGrant(g *grantReply) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.s.cfg.Timeout)
	defer cancel()
	c.lockSession().Unlock(ctx, g.name, g.fence)
}
