package lockext

import (
	"context"
	"errors"
	"fmt"
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
			ver, err := m.store.CompareAndSwap(ctx, st.key, cur.rec.encode(), cur.ttl, cur.ver)
			if err == nil {
				m.granted(st, cur.rec, ver, cur.ttl)
			}
			return cur.rec.count, err
		}
		return 0, m.handOn(ctx, st, cur.ver)
	})
}

// current is a grant as withGrant found it: its record, the version it
// has in memcached and its remaining seconds.
type current struct {
	rec record
	ver Version
	ttl int
}

// withGrant runs change on the current grant with the given fence: the
// version this process left when it holds the grant, else (or when that
// turns out stale) read afresh. change reports ErrStoreExists or
// ErrStoreMiss when the item changed under it; it is then read again and
// change retried.
func (m *Manager) withGrant(ctx context.Context, name string, fence uint64, change func(st *keyState, cur current) (int, error)) (int, error) {
	m.mu.Lock()
	st := m.state(name)
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
			if rec.fence != fence {
				m.dropHeld(st, fence)
				return 0, ErrNotOwner
			}
			// Written back, the grant keeps its own end.
			cur = current{rec: rec, ver: it.Version, ttl: max(it.TTL, 1)}
		}
		n, err := change(st, cur)
		if errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss) {
			cur.ver = nil // changed behind our back (extended elsewhere, expired): read again
			continue
		}
		if err != nil {
			return 0, unavailable(err)
		}
		return n, nil
	}
	return 0, ErrNotOwner
}

// handOn frees the lock whose current version is ver: straight to the head
// waiter here when there is one, else by deleting the item.
func (m *Manager) handOn(ctx context.Context, st *keyState, ver Version) error {
	// A count, not a flag: the new holder may release (and hand on again)
	// before this release has finished.
	m.mu.Lock()
	st.handing++
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
			// The head is looking in memcached by itself: let it finish,
			// then hand over. Writing meanwhile would have the two changes
			// meet on the replicas in different orders, and a name whose
			// replicas disagree needs all of them to decide.
			if st.tried == nil {
				st.tried = make(chan struct{})
			}
			tried := st.tried
			m.mu.Unlock()
			select {
			case <-tried:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		st.held = nil
		if len(st.queue) == 0 {
			// Nobody to hand to: free the lock.
			m.mu.Unlock()
			return m.store.CompareAndDelete(ctx, st.key, ver)
		}
		w := st.queue[0]
		req := &w.req
		rec := record{fence: m.nextFence(st), mode: mode(req), count: 1, kind: req.kind, owner: req.owner}
		m.mu.Unlock()

		newVer, err := m.store.CompareAndSwap(ctx, st.key, rec.encode(), req.TTL, ver)
		if err != nil {
			return err
		}
		ver = newVer
		g := m.granted(st, rec, newVer, req.TTL)
		m.mu.Lock()
		if len(st.queue) > 0 && st.queue[0] == w {
			// The waiter is still there: the grant is its. Had it left in the
			// meantime, the loop passes the grant on to the next one.
			w.grant = &g
			st.queue = st.queue[1:]
			signal(w.wake)
			m.mu.Unlock()
			m.grants.Add(1)
			m.handoffs.Add(1)
			// The new holder's reply is the lock's latency; the releaser's
			// own reply and waking the next head can wait. Yielding runs the
			// goroutine just woken here and now instead of after them.
			runtime.Gosched()
			return nil
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
func (m *Manager) Extend(ctx context.Context, name string, fence uint64, ttl int) (int, error) {
	if ttl < 1 || ttl > m.cfg.MaxTTL {
		return 0, fmt.Errorf("%w: ttl must be 1 to %d", ErrBadRequest, m.cfg.MaxTTL)
	}
	return m.withGrant(ctx, name, fence, func(st *keyState, cur current) (int, error) {
		ver, err := m.store.CompareAndSwap(ctx, st.key, cur.rec.encode(), ttl, cur.ver)
		if err != nil {
			return 0, err
		}
		m.granted(st, cur.rec, ver, ttl)
		m.mu.Lock()
		m.wakeHead(st)
		m.mu.Unlock()
		return ttl, nil
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
	waiters := 0
	if st := m.keys[name]; st != nil {
		waiters = len(st.queue)
	}
	m.mu.Unlock()
	owner := rec.owner
	if rec.kind == kindConn {
		owner = "conn:" + owner
	}
	return Info{Grant: Grant{Name: name, Fence: rec.fence, TTL: it.TTL, Count: rec.count, Owner: owner}, Waiters: waiters}, nil
}
