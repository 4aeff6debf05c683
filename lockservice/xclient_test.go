package lockservice

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// stopped reports whether the run is over.
func (r *crossRun) stopped() bool {
	select {
	case <-r.stopCh:
		return true
	default:
		return false
	}
}

// sleepOn waits d, or until c's connection ends; false when it ended.
func sleepOn(c *xConn, d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (r *crossRun) isDead(c *xConn) (dead, crash bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return c.dead, c.crash
}

// client takes locks and releases them until the run stops.
func (r *crossRun) client(i int, rnd *rand.Rand) {
	for n := 0; !r.stopped(); n++ {
		q := lockext.Request{Name: r.names[rnd.IntN(len(r.names))], TTL: 1 + rnd.IntN(3)}
		if rnd.IntN(4) > 0 {
			q.Wait = time.Duration(rnd.IntN(3000)) * time.Millisecond
		}
		if rnd.IntN(3) > 0 {
			q.Owner = fmt.Sprintf("c%d.%d", i, n)
			q.Reentrant = rnd.IntN(4) == 0
		}
		c := r.connect(rnd)
		x, delivered := r.lock(i, rnd, c, q)
		if x != nil && !delivered && !x.conn && !x.reentrant && !x.begun && rnd.IntN(2) == 0 {
			// The client never had the reply: it asks again, elsewhere,
			// and gets the same grant back if it still stands.
			r.close(c)
			c = r.connect(rnd)
			q.Wait = time.Duration(rnd.IntN(500)) * time.Millisecond
			x, delivered = r.lock(i, rnd, c, q)
		}
		if delivered {
			r.use(i, rnd, c, x, q.TTL)
		}
		r.close(c)
		if x == nil {
			time.Sleep(time.Duration(rnd.IntN(3)) * time.Millisecond)
		}
	}
}

// lock asks for q through c: x is the grant made, if one was, and
// delivered tells whether the client has it. One that nobody reads (the
// client hung up, or the proxy crashed) is a grant all the same.
func (r *crossRun) lock(i int, rnd *rand.Rand, c *xConn, q lockext.Request) (x *xGrant, delivered bool) {
	ctx, cancel := c.ctx, context.CancelFunc(func() {})
	if rnd.IntN(6) == 0 { // the client goes away while it waits
		ctx, cancel = context.WithTimeout(ctx, time.Duration(rnd.Int64N(int64(q.Wait)+1)))
	}
	what := "lease " + q.Owner
	if q.Reentrant {
		what = "rlock " + q.Owner
	}
	if q.Owner == "" {
		what = "conn lock"
	}
	r.logf("client %d %s %s via %s (home %s) ttl %d wait %s", i, what, q.Name, c.p.name, homeOf(c.p.svc, q.Name), q.TTL, q.Wait)
	sent := time.Now()
	failed := c.p.svc.forwardFailed.Load()
	g, err := c.sess.Lock(ctx, q)
	failed = c.p.svc.forwardFailed.Load() - failed
	hungUp := ctx.Err() != nil && c.ctx.Err() == nil
	cancel()
	dead, crash := r.isDead(c)
	if err != nil {
		r.logf("client %d lock %s via %s: %v", i, q.Name, c.p.name, err)
		r.lockFailed(i, q, c, sent, err, hungUp || dead)
		return nil, false
	}
	x = &xGrant{client: i, name: q.Name, fence: g.Fence, conn: q.Owner == "", via: c.p.name, c: c,
		ends: sent.Add(time.Duration(g.TTL) * time.Second), owner: q.Owner, reentrant: q.Reentrant, levels: g.Count}
	switch {
	case g.Count == 1:
	case failed > 0:
		// Known: the home granted the request and its answer was lost; the
		// proxy, serving the name itself, finds the owner holding and
		// takes a level on top (it cannot tell that grant from one the
		// owner had before).
		r.mu.Lock()
		r.notes = append(r.notes, fmt.Sprintf("known: client %d granted %s fence %d via %s with %d levels after a forward failed",
			i, q.Name, g.Fence, c.p.name, g.Count))
		r.mu.Unlock()
	default:
		r.anomaly("client %d granted %s fence %d via %s with %d levels, want 1", i, q.Name, g.Fence, c.p.name, g.Count)
	}
	if q.Owner != "" && r.again(x) {
		return x, true
	}
	r.granted(x, !(dead && x.conn))
	switch {
	case hungUp || crash:
		// Nobody reads the reply: the proxy releases a connection's lock
		// as the connection ends, and a lease whose reply it could not
		// write; a lease whose reply went out stands.
		r.logf("client %d: nobody reads fence %d", i, g.Fence)
		if x.conn || (!crash && rnd.IntN(2) == 0) {
			r.releasing(x)
			if !x.conn {
				ctx, cancel := context.WithTimeout(context.Background(), 2*r.cfg.Timeout)
				c.sess.Unlock(ctx, x.name, x.fence)
				cancel()
			}
		}
		return x, false
	case dead && x.conn:
		r.releasing(x) // the proxy is going: its connections' locks with it
		return x, false
	}
	r.reply("granted")
	return x, true
}

// again handles a lease granted to an owner that holds a grant it never
// read: the same grant back, its ttl refreshed, takes that grant's place.
func (r *crossRun) again(x *xGrant) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, h := range r.holding {
		if h.client == x.client && h.name == x.name && h.fence == x.fence {
			x.id = id
			r.holding[id] = x
			r.replies["granted again"]++
			r.logLocked("client %d granted %s fence %d again", x.client, x.name, x.fence)
			return true
		}
	}
	return false
}

// use holds client i's grant x, taken through c, a while, perhaps extends
// it, and releases it.
func (r *crossRun) use(i int, rnd *rand.Rand, c *xConn, x *xGrant, ttl int) {
	hold := time.Duration(rnd.IntN(3000)) * time.Microsecond
	switch rnd.IntN(40) {
	case 1, 2, 3, 4:
		hold = time.Duration(5+rnd.IntN(45)) * time.Millisecond
	case 0: // lapses (a one-second grant's only: longer ones stall a short run)
		if ttl == 1 {
			hold = time.Second + time.Duration(rnd.IntN(300))*time.Millisecond
		}
	}
	if !sleepOn(c, hold) && x.conn {
		return // the proxy went away: so did the connection's lock
	}
	if x.reentrant && rnd.IntN(2) == 0 {
		r.relock(i, rnd, c, x, ttl)
	}
	if rnd.IntN(8) == 0 {
		r.extend(i, rnd, c, x)
		sleepOn(c, time.Duration(rnd.IntN(3000))*time.Microsecond)
	}
	for x.levels > 1 && !x.unsure {
		r.unlockLevel(i, rnd, c, x)
	}
	r.release(i, rnd, c, x)
}

// relock takes one more level of client i's reentrant lock x, through
// c's proxy or another: the same grant, one level deeper.
func (r *crossRun) relock(i int, rnd *rand.Rand, c *xConn, x *xGrant, ttl int) {
	via, opened := r.viaOther(rnd, c)
	if opened {
		defer r.close(via)
	}
	q := lockext.Request{Name: x.name, TTL: ttl, Owner: x.owner, Reentrant: true}
	r.logf("client %d rlock %s again via %s", i, x.name, via.p.name)
	sent := time.Now()
	failed := via.p.svc.forwardFailed.Load()
	g, err := via.sess.Lock(via.ctx, q)
	failed = via.p.svc.forwardFailed.Load() - failed
	r.logf("client %d rlock %s again via %s: %d levels, fence %d, %v", i, x.name, via.p.name, g.Count, g.Fence, err)
	switch {
	case err == nil && g.Fence == x.fence:
		switch {
		case g.Count == x.levels+1, x.unsure:
		case failed > 0: // known: see lock
			r.mu.Lock()
			r.notes = append(r.notes, fmt.Sprintf("known: client %d rlock %s again via %s: %d levels after a forward failed, want %d",
				i, x.name, via.p.name, g.Count, x.levels+1))
			r.mu.Unlock()
		default:
			r.anomaly("client %d rlock %s again via %s: %d levels, want %d", i, x.name, via.p.name, g.Count, x.levels+1)
		}
		x.levels = g.Count
		r.mu.Lock()
		x.ends = sent.Add(time.Duration(g.TTL) * time.Second)
		r.mu.Unlock()
		r.reply("relocked")
	case err == nil:
		r.anomaly("client %d rlock %s again via %s: fence %d, not its grant's %d", i, x.name, via.p.name, g.Fence, x.fence)
	case errors.Is(err, lockext.ErrNotLocked):
		// A proxy serving the name itself answers so when another has
		// reserved the holder's successor (see the README's Semantics),
		// even when the home had granted the level and its answer was
		// lost (known, as with lock).
		r.reply("relock not locked")
		if failed > 0 {
			x.unsure = true
		}
	case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
		r.anomaly("client %d rlock %s again via %s: %v", i, x.name, via.p.name, err)
	default:
		r.reply("relock error")
		x.unsure = true
	}
}

// unlockLevel releases one inner level of client i's reentrant lock x.
func (r *crossRun) unlockLevel(i int, rnd *rand.Rand, c *xConn, x *xGrant) {
	via, opened := r.viaOther(rnd, c)
	if opened {
		defer r.close(via)
	}
	r.logf("client %d unlock %s fence %d level %d via %s", i, x.name, x.fence, x.levels, via.p.name)
	left, err := via.sess.Unlock(via.ctx, x.name, x.fence)
	r.logf("client %d unlock %s fence %d level %d via %s: %d %v", i, x.name, x.fence, x.levels, via.p.name, left, err)
	switch {
	case err == nil && left == x.levels-1:
		x.levels = left
		r.reply("unlocked a level")
	case err == nil:
		r.anomaly("client %d unlock %s fence %d level %d via %s: %d levels left", i, x.name, x.fence, x.levels, via.p.name, left)
		x.levels = left
		if left == 0 {
			r.releasing(x)
		}
	case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
		if time.Now().Before(x.ends) {
			r.knownDefect("client %d unlock %s fence %d level %d via %s: %v while its grant ran", i, x.name, x.fence, x.levels, via.p.name, err)
		}
		x.unsure = true
	default:
		r.reply("unlock error")
		x.unsure = true // its level may be gone: the client releases what is left
	}
}

// lockFailed checks a lock refused.
func (r *crossRun) lockFailed(i int, q lockext.Request, c *xConn, sent time.Time, err error, gone bool) {
	switch {
	case errors.Is(err, lockext.ErrNotLocked):
		r.reply("not locked")
		if !gone && q.Wait > 0 {
			r.refused(i, q.Name, c.p.name, sent)
		}
	case errors.Is(err, ErrRecovering), errors.Is(err, ErrServersDiffer):
		r.anomaly("client %d lock %s via %s: %v, and no lock server lost anything", i, q.Name, c.p.name, err)
	case errors.Is(err, lockext.ErrUnavailable):
		r.reply("unavailable")
	case errors.Is(err, lockext.ErrClosed):
		r.reply("closed")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		r.reply("cancelled")
		if !gone {
			r.anomaly("client %d lock %s via %s: %v, and nobody cancelled it", i, q.Name, c.p.name, err)
		}
	default:
		r.anomaly("client %d lock %s via %s: %v", i, q.Name, c.p.name, err)
	}
	if took := time.Since(sent); took > q.Wait+8*r.cfg.Timeout+time.Second {
		r.anomaly("client %d lock %s via %s took %s with a wait of %s", i, q.Name, c.p.name, took.Round(time.Millisecond), q.Wait)
	}
}

// viaOther returns a connection for a request through another proxy than
// c's (or c's own, when that is alive and the coin says so); opened says
// the connection is new, for the caller to close.
func (r *crossRun) viaOther(rnd *rand.Rand, c *xConn) (via *xConn, opened bool) {
	if dead, _ := r.isDead(c); !dead && rnd.IntN(2) == 0 {
		return c, false
	}
	return r.connect(rnd), true
}

// extend gives x a new ttl through c's proxy or another.
func (r *crossRun) extend(i int, rnd *rand.Rand, c *xConn, x *xGrant) {
	via, opened := r.viaOther(rnd, c)
	if opened {
		defer r.close(via)
	}
	ttl := 1 + rnd.IntN(3)
	sent := time.Now()
	r.logf("client %d extend %s fence %d to %d via %s", i, x.name, x.fence, ttl, via.p.name)
	n, err := via.sess.Extend(via.ctx, x.name, x.fence, ttl)
	r.logf("client %d extend %s fence %d via %s: %d %v", i, x.name, x.fence, via.p.name, n, err)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		r.replies["extended"]++
		x.ends = sent.Add(time.Duration(n) * time.Second)
	case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
		r.replies["extend not owner"]++
		if time.Now().Before(x.ends) {
			r.mu.Unlock()
			r.knownDefect("client %d extend %s fence %d via %s: %v while its grant ran", i, x.name, x.fence, via.p.name, err)
			r.mu.Lock()
		}
	default:
		r.replies["extend error"]++
		if e := sent.Add(time.Duration(ttl) * time.Second); e.Before(x.ends) {
			x.ends = e // it may have landed
		}
	}
}

// release ends client i's grant x, taken through c: by closing a
// connection's lock's connection, or by unlock through c's proxy or
// another, as a client reconnecting elsewhere would, perhaps twice as if
// the first reply were lost.
func (r *crossRun) release(i int, rnd *rand.Rand, c *xConn, x *xGrant) {
	r.releasing(x)
	if dead, _ := r.isDead(c); dead && x.conn {
		return // went with the proxy
	}
	if x.conn && rnd.IntN(3) == 0 {
		r.logf("client %d closes its connection to %s", i, c.p.name)
		r.close(c)
		return
	}
	var first sync.WaitGroup // an unlock whose reply was lost, still on its way
	defer first.Wait()
	for try := 0; try < 2; try++ {
		via, opened := c, false
		if try > 0 || rnd.IntN(2) == 0 {
			via, opened = r.viaOther(rnd, c)
		} else if dead, _ := r.isDead(c); dead {
			via, opened = r.connect(rnd), true
		}
		unlock := func(ctx context.Context) error {
			r.logf("client %d unlock %s fence %d via %s", i, x.name, x.fence, via.p.name)
			left, err := via.sess.Unlock(ctx, x.name, x.fence)
			for n := 0; err == nil && left > 0 && x.unsure && n < 3; n++ {
				r.logf("client %d unlock %s fence %d via %s: %d left", i, x.name, x.fence, via.p.name, left)
				left, err = via.sess.Unlock(ctx, x.name, x.fence)
			}
			r.logf("client %d unlock %s fence %d via %s: %d %v", i, x.name, x.fence, via.p.name, left, err)
			if opened {
				r.close(via)
			}
			if err == nil && left > 0 {
				r.knownDefect("client %d unlock %s fence %d via %s: %d levels left", i, x.name, x.fence, via.p.name, left)
			}
			return err
		}
		switch rnd.IntN(10) {
		case 0: // the connection drops, and the proxy goes on with the unlock
			first.Add(1)
			go func() {
				defer first.Done()
				unlock(context.WithoutCancel(via.ctx))
			}()
			time.Sleep(time.Duration(rnd.IntN(3000)) * time.Microsecond)
			continue
		case 1: // the connection drops, and the proxy gives up the unlock
			ctx, cancel := context.WithTimeout(via.ctx, time.Duration(rnd.IntN(3000))*time.Microsecond)
			unlock(ctx)
			cancel()
			continue
		}
		err := unlock(via.ctx)
		switch {
		case err == nil:
			r.reply("unlocked")
		case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
			r.reply("unlock not owner")
			if try == 0 && time.Now().Before(x.ends) {
				r.knownDefect("client %d unlock %s fence %d via %s: %v while its grant ran", i, x.name, x.fence, via.p.name, err)
			}
		case errors.Is(err, lockext.ErrUnavailable), errors.Is(err, lockext.ErrClosed),
			errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			r.reply("unlock error")
			continue
		default:
			r.anomaly("client %d unlock %s fence %d via %s: %v", i, x.name, x.fence, via.p.name, err)
		}
		if rnd.IntN(6) > 0 {
			return
		}
	}
}
