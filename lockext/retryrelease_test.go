package lockext

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// retryStore is a memStore for TestRetriedUnlockAfterEarlyHandoff: w1's
// first add (the head looking by itself) is held back until open is
// closed; the write confirming w1 as the holder is lost on its way (never
// sent).
type retryStore struct {
	*memStore
	reached, open chan struct{}
	held          atomic.Bool
}

func (s *retryStore) Add(ctx context.Context, k Key, value []byte, ttl int) (Version, error) {
	if bytes.HasSuffix(value, []byte(" o w1")) && !s.held.Swap(true) {
		close(s.reached)
		<-s.open
	}
	return s.memStore.Add(ctx, k, value, ttl)
}

func (s *retryStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	if holder, _, _ := bytes.Cut(value, []byte("\n")); bytes.HasSuffix(holder, []byte(" o w1")) {
		return nil, errDown // the confirmation, lost
	}
	return s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
}

// A holder's unlock is sent twice at once (a client that retried it): both
// releases wait for the write on its way, the reserved head looking by
// itself. The one
// that goes first hands the lock to the reserved successor ahead of the
// write that says so, and that write is lost: the record still names the
// holder and its successor. The other release must see that the grant was
// handed on here; written over that record, its handoff to the next waiter
// granted the lock a second time while the successor held it.
func TestRetriedUnlockAfterEarlyHandoff(t *testing.T) {
	store := &retryStore{memStore: newMemStore(), reached: make(chan struct{}), open: make(chan struct{})}
	m := testManager(store)
	ctx := context.Background()
	h, err := m.Lock(ctx, req("k", 10, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan lockResult, 2)
	for _, owner := range []string{"w1", "w2"} {
		go func() {
			g, err := m.Lock(ctx, req("k", 10, 5*time.Second, owner))
			got <- lockResult{g, err}
		}()
		waitFor(t, func() bool { return m.Stats().Waiters > 0 && owner == "w1" || m.Stats().Waiters == 2 })
	}
	waitFor(t, func() bool {
		rec, ok := store.record(t, "k")
		return ok && rec.next != nil && rec.next.owner == "w1"
	})
	<-store.reached // w1, reserved, looks by itself: a write on its way
	released := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := m.Unlock(ctx, "k", h.Fence)
			released <- err
		}()
	}
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.keys["k"].handing == 2 // both releases wait for the write
	})
	close(store.open)
	first := <-got
	if first.err != nil || first.g.Owner != "w1" {
		t.Fatalf("the first grant: %+v, %v; want w1's", first.g, first.err)
	}
	<-released
	<-released
	select {
	case second := <-got:
		t.Fatalf("%s granted while %s's grant ran (%+v, %v)", second.g.Owner, first.g.Owner, second.g, second.err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := m.Unlock(ctx, "k", first.g.Fence); err != nil {
		t.Fatalf("w1's unlock: %v", err)
	}
	if second := <-got; second.err != nil || second.g.Owner != "w2" {
		t.Fatalf("after w1's unlock: %+v, %v; want w2's grant", second.g, second.err)
	}
}
