package lockext

import (
	"context"
	"errors"
	"time"
)

// Undelivered gives back what the reply g of this Manager handed out, its
// line having failed to reach the client: a new grant, or the level a
// reentrant lock added (an Again reply hands out nothing new, and is never
// given back). Nobody then holds a lock they do not know of.
//
// It does so only while g is still the latest reply made for its grant
// (Grant.Reply; any change made to the grant since counts as one) and the
// grant is still held here, at the version this Manager left in the store.
// Otherwise the grant is kept (ErrKept) and stands until its holder
// releases it or its ttl runs out: a later reply, to the owner asking
// again on another connection, may have told the holder of it, and so may
// a change made through another process (the owner asking again through a
// proxy that serves the name itself). The check and the release are made
// under m.mu, between this Manager's own writes on the name (see
// keyState.trying), so that the owner asking again at the same time either
// finds the grant being released, and queues, or keeps it. It returns the
// levels left.
func (m *Manager) Undelivered(ctx context.Context, g Grant) (int, error) {
	if g.Again || g.By != m.cfg.Instance { // reply numbers are the maker's own
		return 0, ErrKept
	}
	m.mu.Lock()
	st := m.keys[g.Name]
	for {
		if st == nil || !st.latest(g.Fence, g.Reply) || st.held.releasing {
			m.mu.Unlock()
			return 0, ErrKept
		}
		if !st.trying {
			break
		}
		tried := st.whenTried()
		m.mu.Unlock()
		select {
		case <-tried:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		m.mu.Lock()
	}
	h := st.held
	cur := current{rec: h.rec, ver: h.ver, ttl: max(int(time.Until(h.expires).Seconds()+0.999), 1), reply: g.Reply}
	if cur.rec.count > 1 {
		st.trying = true // the write below is the next on the name
	}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.forget(st)
		m.mu.Unlock()
	}()
	var err error
	if cur.rec.count > 1 {
		err = m.dropLevel(ctx, st, h, cur)
	} else {
		err = m.handOn(ctx, st, cur)
	}
	switch {
	case errors.Is(err, ErrStoreExists), errors.Is(err, ErrStoreMiss):
		// Changed through another process: it may have been given to its
		// owner again there. Not read afresh, as Unlock would.
		return 0, ErrKept
	case err != nil:
		return 0, unavailable(err)
	}
	return cur.rec.count - 1, nil
}

// dropLevel writes cur, the grant h held here, back one level shallower,
// at the version h left; the caller has set st.trying.
func (m *Manager) dropLevel(ctx context.Context, st *keyState, h *holding, cur current) error {
	cur.rec.count--
	ver, err := m.store.CompareAndSwap(ctx, st.key, cur.rec.encode(), cur.rec.itemTTL(cur.ttl), cur.ver)
	m.mu.Lock()
	switch {
	case err == nil && st.held == h:
		st.held = newHolding(cur.rec, ver, cur.ttl)
		st.replied = 0 // given back: no reply made so far is the latest
	case errors.Is(err, ErrStoreExists), errors.Is(err, ErrStoreMiss):
		if st.held == h {
			m.stale(st, h)
		}
	}
	m.mu.Unlock()
	m.afterWrite(ctx, st, 0)
	return err
}

// latest reports whether reply is the latest reply made for the grant
// with the given fence, and that grant is still held here and runs; m.mu
// must be held.
func (st *keyState) latest(fence, reply uint64) bool {
	h := st.held
	return h != nil && h.rec.fence == fence && st.replied == reply && h.live()
}
