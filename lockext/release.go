package lockext

import (
	"context"
	"errors"
	"time"
)

// Unlock releases one level of the grant with the given fence and returns
// the levels left; 0 means the lock is free, or already handed to the next
// waiter here.
func (m *Manager) Unlock(ctx context.Context, name string, fence uint64) (int, error) {
	return m.release(ctx, name, fence, false)
}

// release drops one level, or every level when all is set.
func (m *Manager) release(ctx context.Context, name string, fence uint64, all bool) (int, error) {
	return m.withGrant(ctx, name, fence, func(st *keyState, cur record, cas uint64) (int, error) {
		if cur.count > 1 && !all {
			cur.count--
			ttl := m.heldTTL(st, fence)
			newCAS, err := m.store.CompareAndSwap(ctx, st.key, cur.encode(), ttl, cas)
			if err == nil {
				m.granted(st, cur, newCAS, ttl)
			}
			return cur.count, err
		}
		return 0, m.handOn(ctx, st, cas)
	})
}

// withGrant runs change on the current grant with the given fence and the
// cas it has in memcached: the cas this process left when it holds the
// grant, else (or when that turns out stale) read afresh. change reports
// ErrStoreExists or ErrStoreMiss when the item changed under it; it is then
// read again and change retried.
func (m *Manager) withGrant(ctx context.Context, name string, fence uint64, change func(st *keyState, cur record, cas uint64) (int, error)) (int, error) {
	m.mu.Lock()
	st := m.state(name)
	var cur record
	var cas uint64
	if h := st.held; h != nil && h.rec.fence == fence {
		cur, cas = h.rec, h.cas
	}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.forget(st)
		m.mu.Unlock()
	}()
	for tries := 0; tries < 8; tries++ {
		if cas == 0 {
			it, err := m.store.Get(ctx, st.key)
			if errors.Is(err, ErrStoreMiss) {
				m.dropHeld(st, fence)
				return 0, ErrNotFound
			}
			if err != nil {
				return 0, unavailable(err)
			}
			if cur, err = decodeRecord(it.Value); err != nil {
				return 0, err
			}
			if cur.fence != fence {
				return 0, ErrNotOwner
			}
			cas = it.CAS
		}
		n, err := change(st, cur, cas)
		if errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss) {
			cas = 0 // changed behind our back (extended elsewhere, expired): read again
			continue
		}
		if err != nil {
			return 0, unavailable(err)
		}
		return n, nil
	}
	return 0, ErrNotOwner
}

// handOn frees the lock whose current cas is cas: straight to the head
// waiter here when there is one, else by deleting the item.
func (m *Manager) handOn(ctx context.Context, st *keyState, cas uint64) error {
	m.mu.Lock()
	st.handing = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		st.handing = false
		if len(st.queue) > 0 {
			signal(st.queue[0].wake)
		}
		m.mu.Unlock()
	}()
	for {
		m.mu.Lock()
		st.held = nil
		if len(st.queue) == 0 || st.trying {
			// Nobody to hand to, or the head is busy trying by itself: free
			// the lock and let the deferred signal send the head round again.
			m.mu.Unlock()
			return m.store.CompareAndDelete(ctx, st.key, cas)
		}
		w := st.queue[0]
		req := w.req
		rec := record{fence: m.nextFence(st), mode: mode(req), count: 1, kind: req.kind, owner: req.owner}
		m.mu.Unlock()

		newCAS, err := m.store.CompareAndSwap(ctx, st.key, rec.encode(), req.TTL, cas)
		if err != nil {
			return err
		}
		cas = newCAS
		g := m.granted(st, rec, newCAS, req.TTL)
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
			return nil
		}
		m.mu.Unlock()
	}
}

// heldTTL is the ttl to write back when only the count changes.
func (m *Manager) heldTTL(st *keyState, fence uint64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := st.held; h != nil && h.rec.fence == fence {
		return max(int(time.Until(h.expires).Seconds()+0.5), 1)
	}
	return m.cfg.MaxTTL
}

func (m *Manager) dropHeld(st *keyState, fence uint64) {
	m.mu.Lock()
	if st.held != nil && st.held.rec.fence == fence {
		st.held = nil
	}
	m.mu.Unlock()
}

// Extend sets the remaining lifetime of the grant with the given fence.
func (m *Manager) Extend(ctx context.Context, name string, fence uint64, ttl int) (int, error) {
	if ttl < 1 || ttl > m.cfg.MaxTTL {
		return 0, ErrBadRequest
	}
	return m.withGrant(ctx, name, fence, func(st *keyState, cur record, cas uint64) (int, error) {
		newCAS, err := m.store.CompareAndSwap(ctx, st.key, cur.encode(), ttl, cas)
		if err != nil {
			return 0, err
		}
		m.granted(st, cur, newCAS, ttl)
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
