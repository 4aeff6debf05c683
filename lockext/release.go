package lockext

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"time"
)

// Unlock releases one level of the grant with the given fence and returns
// the levels left; 0 means the lock is free, or already handed to the next
// waiter here.
func (m *Manager) Unlock(ctx context.Context, name string, fence uint64) (int, error) {
	return m.release(ctx, name, fence, false)
}

// Release drops every level of the grant with the given fence: the end of
// the connection that held it.
func (m *Manager) Release(ctx context.Context, name string, fence uint64) error {
	_, err := m.release(ctx, name, fence, true)
	return err
}

// release drops one level, or every level when all is set. The levels
// left keep the grant's own remaining lifetime.
func (m *Manager) release(ctx context.Context, name string, fence uint64, all bool) (int, error) {
	return m.withGrant(ctx, name, fence, func(st *keyState, cur current) (int, error) {
		if cur.rec.count > 1 && !all {
			cur.rec.count--
			ver, err := m.store.CompareAndSwap(ctx, st.key, cur.rec.encode(), cur.rec.itemTTL(cur.ttl), cur.ver)
			if err == nil {
				m.granted(st, cur.rec, ver, cur.ttl)
			}
			return cur.rec.count, err
		}
		return 0, m.handOn(ctx, st, cur)
	})
}

// current is a grant as withGrant found it: its record (with the
// successor it names, if any), the version it has in memcached and its
// remaining seconds.
type current struct {
	rec record
	ver Version
	ttl int
	// reply, when set, makes the release that of an undelivered reply
	// (see Undelivered): made only while that reply is the latest.
	reply uint64
}

// withGrant runs change on the current grant with the given fence: the
// version this process left when it holds the grant, else (or when that
// turns out stale) read afresh. change reports ErrStoreExists or
// ErrStoreMiss when the item changed under it; it is then read again and
// change retried. A grant read in force every time whose change fails
// every time (replicas split, none of their states on a majority) is
// still its holder's: the answer is unavailable, never NOT_OWNER.
func (m *Manager) withGrant(ctx context.Context, name string, fence uint64, change func(st *keyState, cur current) (int, error)) (int, error) {
	m.mu.Lock()
	st := m.state(name)
	if st.handedOn == fence {
		m.forget(st)
		m.mu.Unlock()
		return 0, ErrNotOwner
	}
	var cur current
	if h := st.held; h != nil && h.rec.fence == fence && h.live() {
		cur = current{rec: h.rec, ver: h.ver, ttl: max(int(time.Until(h.expires).Seconds()+0.999), 1)}
	}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.forget(st)
		m.mu.Unlock()
	}()
	for tries := 0; tries < 8; tries++ {
		if cur.ver == nil {
			it, err := m.store.Get(ctx, st.key)
			if errors.Is(err, ErrStoreMiss) {
				m.dropHeld(st, fence)
				return 0, ErrNotFound
			}
			if err != nil {
				return 0, unavailable(err)
			}
			rec, err := decodeRecord(it.Value)
			if err != nil {
				return 0, err
			}
			m.mu.Lock()
			held, ttl := st.inForce(rec, it.TTL)
			m.mu.Unlock()
			if n := rec.next; n != nil && n.fence == fence && held.fence != fence {
				// The successor was handed the lock ahead of the write
				// that names it the holder (see handOver), and that write
				// has not come: only the grantee knows its fence.
				held, ttl = n.holder(), n.ttl
				if it.TTL >= 0 {
					ttl = min(it.TTL, n.ttl)
				}
			}
			if held.fence != fence && it.Disputed {
				// The store's copies disagree, none of them on a majority:
				// another grant named by one of them (a contender's add
				// not yet undone, say) is no proof that this one has ended.
				return 0, errNoMajorityRead
			}
			if held.fence != fence {
				m.dropHeld(st, fence)
				return 0, ErrNotOwner
			}
			rec = held
			// Written back, the grant keeps its own end.
			cur = current{rec: rec, ver: it.Version, ttl: max(ttl, 1)}
		}
		n, err := change(st, cur)
		if errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss) {
			cur.ver = nil // changed behind our back (extended elsewhere, expired): read again
			continue
		}
		if errors.Is(err, ErrNotOwner) {
			return 0, err
		}
		if err != nil {
			return 0, unavailable(err)
		}
		return n, nil
	}
	return 0, errChangedEveryTry
}

// errNoMajorityRead: see withGrant.
var errNoMajorityRead = fmt.Errorf("%w: its lock servers disagree on who holds it", ErrUnavailable)

// errChangedEveryTry: see withGrant.
var errChangedEveryTry = fmt.Errorf("%w: the grant could not be changed (its lock servers disagree)", ErrUnavailable)

// handOn frees the grant cur: to the successor its record names, else
// straight to the head waiter here when there is one, else by deleting
// the item.
func (m *Manager) handOn(ctx context.Context, st *keyState, cur current) error {
	// A count, not a flag: the new holder may release (and hand on again)
	// before this release has finished.
	m.mu.Lock()
	if cur.reply != 0 && !st.latest(cur.rec.fence, cur.reply) {
		m.mu.Unlock()
		return ErrKept
	}
	st.handing++
	if h := st.held; h != nil && h.rec.fence == cur.rec.fence {
		h.releasing = true
	}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		st.handing--
		m.wakeHead(st)
		m.mu.Unlock()
	}()
	for {
		m.mu.Lock()
		if st.trying {
			// A write of this process is on its way (the head looking by
			// itself or reserving, or a handoff's confirmation): let it
			// finish, then hand over. Writing meanwhile would have the two
			// changes meet on the replicas in different orders, and a name
			// whose replicas disagree needs all of them to decide.
			tried := st.whenTried()
			m.mu.Unlock()
			select {
			case <-tried:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if n := cur.rec.next; n != nil && st.held != nil && st.held.rec.fence == n.fence {
			// The successor this grant's record names holds the lock here:
			// another release of this very grant (a retried unlock) that
			// waited for the same write has handed it over, ahead of the
			// write that says so. Until that write lands the record still
			// names this grant, and a write over it would grant the lock a
			// second time.
			m.mu.Unlock()
			return ErrNotOwner
		}
		if cur.reply != 0 {
			// A later reply for the grant (its owner asked again while the
			// write above was on its way) keeps it. Checked once: from here
			// on the release is made, and passed on should a waiter leave.
			if !st.latest(cur.rec.fence, cur.reply) {
				m.mu.Unlock()
				return ErrKept
			}
			cur.reply = 0
		}
		// covered: the item outlives a grant made now to the successor it
		// names, since it was written to live that successor's ttl past
		// the end of a grant that still runs. (Past that end, memcached's
		// whole seconds may still show the item naming the holder.)
		//
		// Only the grant released is forgotten: another one held here may
		// be the successor's, handed over by an earlier release of this
		// very grant (a retry, both waiting for the same write), and
		// known nowhere else until its confirmation lands.
		covered := false
		if h := st.held; h != nil && h.rec.fence == cur.rec.fence {
			cur.rec, cur.ver = h.rec, h.ver // that write may have been to this grant
			covered = h.live()
			st.held = nil
		}
		next := cur.rec.next
		if next != nil && !m.ours(next) {
			// Another process reserved the lock for one of its waiters:
			// the release is that waiter's grant, which its process finds
			// when it looks, unless the waiter has come here meanwhile (its
			// home changed).
			m.mu.Unlock()
			ver, err := m.store.CompareAndSwap(ctx, st.key, next.holder().encode(), next.ttl, cur.ver)
			if err == nil {
				m.grantHere(st, next, ver)
			}
			return err
		}
		if len(st.queue) == 0 {
			// Nobody to hand to (a successor of ours has left): free the lock.
			m.mu.Unlock()
			return m.store.CompareAndDelete(ctx, st.key, cur.ver)
		}
		w := st.queue[0]
		if next != nil && w.writtenFor(next.fence) && covered && m.kept(st.key, cur.ver) {
			st.handedOn = cur.rec.fence
			m.handOver(ctx, st, next, cur.ver)
			return nil
		}
		req := &w.req
		rec := record{fence: m.nextFence(st), mode: mode(req), count: 1, kind: req.kind, owner: req.owner}
		rec.next = m.nextSuccessor(st, 1)
		w.wrote(rec.fence)
		m.mu.Unlock()

		newVer, err := m.store.CompareAndSwap(ctx, st.key, rec.encode(), rec.itemTTL(req.TTL), cur.ver)
		if err != nil {
			return err
		}
		cur.rec, cur.ver = rec, newVer
		g := m.granted(st, rec, newVer, req.TTL)
		m.mu.Lock()
		if len(st.queue) > 0 && st.queue[0] == w {
			// The waiter is still there: the grant is its. Had it left in the
			// meantime, the loop passes the grant on to the next one.
			m.give(st, 0, g)
			m.mu.Unlock()
			// The new holder's reply is the lock's latency; the releaser's
			// own reply and waking the next head can wait. Yielding runs the
			// goroutine just woken here and now instead of after them.
			runtime.Gosched()
			return nil
		}
		m.mu.Unlock()
	}
}

// grantHere gives s's grant, just written in as the holder at version v,
// to a waiter here that asked for it, if one does, as a look of its own
// in memcached would (attempt: ours already).
func (m *Manager) grantHere(st *keyState, s *successor, v Version) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, w := range st.queue {
		if !s.is(&w.req) || s.mode != mode(&w.req) {
			continue
		}
		st.held = newHolding(s.holder(), v, s.ttl)
		m.give(st, i, m.reply(st, st.held.grant(st.key.Name, s.ttl)))
		return
	}
}

// kept reports whether the store surely still holds v; see Keeper.
func (m *Manager) kept(k Key, v Version) bool {
	keeper, ok := m.store.(Keeper)
	return !ok || keeper.Kept(k, v)
}

// nextSuccessor is the successor to name in a record written now: the
// waiter that will be the head once the first skip have the lock, if it
// waits at all; m.mu must be held.
func (m *Manager) nextSuccessor(st *keyState, skip int) *successor {
	if !m.cfg.EarlyHandoff || len(st.queue) <= skip || st.queue[skip].req.Wait <= 0 {
		return nil
	}
	return m.successorOf(st, st.queue[skip])
}

// handOver gives the lock to the head waiter, the successor next that the
// released grant's record names, before memcached hears of it: the item
// lives long enough to cover that grant already (see successor). It then
// writes the successor in as the holder, with the next head as its own
// successor; the new holder's release waits for that write. m.mu is held
// on entry and released.
func (m *Manager) handOver(ctx context.Context, st *keyState, next *successor, reservation Version) {
	rec := next.holder()
	h := newHolding(rec, reservation, next.ttl)
	h.early = true
	st.held = h
	m.give(st, 0, m.reply(st, h.grant(st.key.Name, next.ttl)))
	m.early.Add(1)
	rec.next = m.nextSuccessor(st, 0)
	st.trying = true
	m.mu.Unlock()
	runtime.Gosched() // the new holder's reply first, as above
	m.confirm(context.WithoutCancel(ctx), st, h, rec, next.ttl)
	m.afterWrite(ctx, st, 1)
}

// confirm writes the grant h, made ahead of memcached, in place of the
// record that reserved it. Should the record have changed meanwhile, it
// looks why: a changed holder's record still naming h's successor is
// written again; h's grant already there (another process handed the
// release on) is taken as it is.
func (m *Manager) confirm(ctx context.Context, st *keyState, h *holding, rec record, ttl int) {
	ver := h.ver
	for tries := 0; tries < 8; tries++ {
		newVer, err := m.store.CompareAndSwap(ctx, st.key, rec.encode(), rec.itemTTL(ttl), ver)
		if err == nil {
			m.mu.Lock()
			if st.held == h {
				h.rec, h.ver, h.early = rec, newVer, false
			}
			m.mu.Unlock()
			break
		}
		if !errors.Is(err, ErrStoreExists) && !errors.Is(err, ErrStoreMiss) {
			break // the reservation still covers h: its release writes over it
		}
		it, err := m.store.Get(ctx, st.key)
		if err != nil {
			break
		}
		there, err := decodeRecord(it.Value)
		if err != nil {
			break
		}
		if there.next != nil && there.next.fence == h.rec.fence {
			ver = it.Version
			continue
		}
		m.mu.Lock()
		if st.held == h {
			if there.fence == h.rec.fence {
				h.rec, h.ver, h.early = there, it.Version, false
			} else {
				st.held = nil // h has been released through another process since
			}
		}
		m.mu.Unlock()
		break
	}
}

// afterWrite ends a write that releases wait for; handing counts the
// caller's own release, if it is one. If the successor this process
// reserved has left and nobody waits here any more, it first writes that
// successor out of the record, so that the lock is free when its grant
// ends rather than a successor's ttl later. (A release waiting meanwhile
// frees the lock itself; a head waiting meanwhile reserves itself. Should
// the write fail, the successor, named by this process, is still known
// for one that left: a release through here frees the lock, and once the
// grant has run out attempt takes it over.)
func (m *Manager) afterWrite(ctx context.Context, st *keyState, handing int) {
	for {
		m.mu.Lock()
		h := st.held
		if h == nil || !m.abandoned(st, h.rec.next) || len(st.queue) > 0 || st.handing > handing {
			m.endTry(st)
			m.wakeHead(st) // it does not try or reserve while a write is on its way
			m.mu.Unlock()
			return
		}
		rec := h.rec
		rec.next = nil
		holdTTL := max(int(math.Ceil(time.Until(h.expires).Seconds())), 1)
		m.mu.Unlock()
		ver, err := m.store.CompareAndSwap(ctx, st.key, rec.encode(), holdTTL, h.ver)
		m.mu.Lock()
		if err != nil {
			m.endTry(st)
			m.mu.Unlock()
			return
		}
		if st.held == h {
			h.rec, h.ver = rec, ver
		}
		m.mu.Unlock()
	}
}

// wakeHead sends the head waiter round again; m.mu must be held.
func (m *Manager) wakeHead(st *keyState) {
	if len(st.queue) > 0 {
		signal(st.queue[0].wake)
	}
}

func (m *Manager) dropHeld(st *keyState, fence uint64) {
	m.mu.Lock()
	if st.held != nil && st.held.rec.fence == fence {
		st.held = nil
	}
	m.mu.Unlock()
}

// Extend sets the remaining lifetime of the grant with the given fence.
// Waiters here look again at once: a shorter grant ends sooner.
//
// A grant whose successor another process reserved is not shortened here:
// that process hands the lock over early until the end of the grant it
// knows of, and the item must outlive the early grant (see successor).
// The holder is told the seconds its grant keeps. (Extends reach the
// reserving process, the name's home, unless the home cannot be reached.)
func (m *Manager) Extend(ctx context.Context, name string, fence uint64, ttl int) (int, error) {
	if ttl < 1 || ttl > m.cfg.MaxTTL {
		return 0, fmt.Errorf("%w: ttl must be 1 to %d", ErrBadRequest, m.cfg.MaxTTL)
	}
	return m.withGrant(ctx, name, fence, func(st *keyState, cur current) (int, error) {
		keep := ttl
		if n := cur.rec.next; n != nil && !m.ours(n) {
			keep = max(ttl, cur.ttl)
		}
		ver, err := m.store.CompareAndSwap(ctx, st.key, cur.rec.encode(), cur.rec.itemTTL(keep), cur.ver)
		if err != nil {
			return 0, err
		}
		m.granted(st, cur.rec, ver, keep)
		m.mu.Lock()
		m.wakeHead(st)
		m.mu.Unlock()
		return keep, nil
	})
}

// Info describes the current grant of a name.
type Info struct {
	Grant
	Waiters int // waiting in this process
}

// Info reads the current grant of name from memcached.
func (m *Manager) Info(ctx context.Context, name string) (Info, error) {
	key := Key{Name: name, Item: itemKey(m.cfg.Prefix, name)}
	it, err := m.store.Get(ctx, key)
	if errors.Is(err, ErrStoreMiss) {
		return Info{}, ErrNotFound
	}
	if err != nil {
		return Info{}, unavailable(err)
	}
	rec, err := decodeRecord(it.Value)
	if err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	st := m.keys[name]
	if st == nil {
		st = &keyState{} // nothing known here beyond the record
	}
	rec, ttl := st.inForce(rec, it.TTL)
	waiters := len(st.queue)
	m.mu.Unlock()
	owner := rec.owner
	if rec.kind == kindConn {
		owner = "conn:" + owner
	}
	return Info{Grant: Grant{Name: name, Fence: rec.fence, TTL: ttl, Count: rec.count, Owner: owner}, Waiters: waiters}, nil
}
