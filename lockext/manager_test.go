package lockext

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testManager(store Store) *Manager {
	return New(store, Config{Prefix: "L:", MaxTTL: 60, MaxWait: time.Minute, Poll: 20 * time.Millisecond, EarlyHandoff: true})
}

func req(name string, ttl int, wait time.Duration, owner string) Request {
	return Request{Name: name, TTL: ttl, Wait: wait, Owner: owner}
}

// N clients on two managers (two proxies) sharing one store: never two
// holders at once, and every grant's fence is above the one before.
func TestMutualExclusion(t *testing.T) {
	store := newMemStore()
	managers := []*Manager{testManager(store), testManager(store)}
	var holders, maxHolders atomic.Int32
	var lastFence atomic.Uint64
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := managers[i%2].NewSession()
			defer s.Close(context.Background())
			for j := 0; j < 30; j++ {
				g, err := s.Lock(context.Background(), req("k", 10, 10*time.Second, ""))
				if err != nil {
					t.Error(err)
					return
				}
				if n := holders.Add(1); n > maxHolders.Load() {
					maxHolders.Store(n)
				}
				if prev := lastFence.Swap(g.Fence); prev >= g.Fence {
					t.Errorf("fence %d after %d", g.Fence, prev)
				}
				time.Sleep(50 * time.Microsecond)
				holders.Add(-1)
				if _, err := s.Unlock(context.Background(), "k", g.Fence); err != nil {
					t.Error(err)
				}
			}
		}(i)
	}
	wg.Wait()
	if maxHolders.Load() != 1 {
		t.Fatalf("%d holders at once", maxHolders.Load())
	}
	for _, m := range managers {
		if n := len(m.keys); n != 0 {
			t.Errorf("%d key states left behind", n)
		}
	}
}

// Waiters on one manager are granted in the order they came.
func TestFIFOOrder(t *testing.T) {
	m := testManager(newMemStore())
	holder := m.NewSession()
	g, err := holder.Lock(context.Background(), req("k", 10, 0, ""))
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := m.NewSession()
			g, err := s.Lock(context.Background(), req("k", 10, 10*time.Second, ""))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			s.Unlock(context.Background(), "k", g.Fence)
		}(i)
		waitFor(t, func() bool { return m.Stats().Waiters == uint64(i+1) })
	}
	holder.Unlock(context.Background(), "k", g.Fence)
	wg.Wait()
	for i, got := range order {
		if got != i {
			t.Fatalf("granted in order %v", order)
		}
	}
	if st := m.Stats(); st.Handoffs != 8 {
		t.Errorf("%d handoffs, want 8: each release hands straight to the next waiter", st.Handoffs)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

// A cancelled head waiter leaves, and the next one is served.
func TestCancelledHeadDoesNotBlockQueue(t *testing.T) {
	m := testManager(newMemStore())
	holder := m.NewSession()
	g, _ := holder.Lock(context.Background(), req("k", 10, 0, ""))
	ctx, cancel := context.WithCancel(context.Background())
	headDone := make(chan error)
	go func() {
		_, err := m.NewSession().Lock(ctx, req("k", 10, 10*time.Second, ""))
		headDone <- err
	}()
	waitFor(t, func() bool { return m.Stats().Waiters == 1 })
	secondDone := make(chan Grant)
	go func() {
		g, err := m.NewSession().Lock(context.Background(), req("k", 10, 10*time.Second, ""))
		if err != nil {
			t.Error(err)
		}
		secondDone <- g
	}()
	waitFor(t, func() bool { return m.Stats().Waiters == 2 })
	cancel()
	if err := <-headDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	holder.Unlock(context.Background(), "k", g.Fence)
	if g2 := <-secondDone; g2.Fence <= g.Fence {
		t.Fatalf("second waiter's fence %d not above %d", g2.Fence, g.Fence)
	}
}

// The race between a waiter's timeout and a handoff, many times over:
// every grant made is either returned or released, never lost.
func TestTimeoutVersusHandoff(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	for i := 0; i < 200; i++ {
		h := m.NewSession()
		g, err := h.Lock(context.Background(), req("k", 10, 0, ""))
		if err != nil {
			t.Fatal(err)
		}
		w := m.NewSession()
		done := make(chan error)
		go func() {
			g2, err := w.Lock(context.Background(), req("k", 10, time.Duration(i%5)*100*time.Microsecond, ""))
			if err == nil {
				_, err = w.Unlock(context.Background(), "k", g2.Fence)
			} else if errors.Is(err, ErrNotLocked) {
				err = nil
			}
			done <- err
		}()
		time.Sleep(time.Duration(i%7) * 50 * time.Microsecond)
		if _, err := h.Unlock(context.Background(), "k", g.Fence); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// Free again: nothing leaked a grant.
		g3, err := m.NewSession().Lock(context.Background(), req("k", 10, 0, ""))
		if err != nil {
			t.Fatalf("round %d: lock not free afterwards: %v", i, err)
		}
		m.Unlock(context.Background(), "k", g3.Fence)
	}
}

func TestReentrantAndModes(t *testing.T) {
	m := testManager(newMemStore())
	s := m.NewSession()
	ctx := context.Background()
	r := Request{Name: "k", TTL: 10, Owner: "me", Reentrant: true}
	g1, err := s.Lock(ctx, r)
	if err != nil || g1.Count != 1 {
		t.Fatal(g1, err)
	}
	g2, err := s.Lock(ctx, r)
	if err != nil || g2.Count != 2 || g2.Fence != g1.Fence {
		t.Fatalf("second rlock: %+v %v", g2, err)
	}
	if _, err := s.Lock(ctx, req("k", 10, 0, "me")); !errors.Is(err, ErrModeMismatch) {
		t.Fatalf("lock over own rlock: %v", err)
	}
	if _, err := s.Lock(ctx, Request{Name: "k", TTL: 10, Owner: "other", Reentrant: true}); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("rlock by another owner: %v", err)
	}
	if left, err := s.Unlock(ctx, "k", g1.Fence); left != 1 || err != nil {
		t.Fatalf("first unlock: %d %v", left, err)
	}
	if _, err := s.Unlock(ctx, "k", g1.Fence+1); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("unlock with a wrong fence: %v", err)
	}
	if left, err := s.Unlock(ctx, "k", g1.Fence); left != 0 || err != nil {
		t.Fatalf("last unlock: %d %v", left, err)
	}
	if _, err := s.Unlock(ctx, "k", g1.Fence); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unlock of a free lock: %v", err)
	}
}

// The same owner asking again gets its grant back: a lost reply is harmless.
func TestSameOwnerGetsSameGrant(t *testing.T) {
	store := newMemStore()
	a, b := testManager(store), testManager(store)
	g1, err := a.NewSession().Lock(context.Background(), req("k", 10, 0, "zeo1:1:1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Manager{a, b} { // through this proxy, and another
		g2, err := m.NewSession().Lock(context.Background(), req("k", 20, 0, "zeo1:1:1"))
		if err != nil || g2.Fence != g1.Fence || g2.Count != 1 || g2.TTL != 20 {
			t.Fatalf("same owner again: %+v %v", g2, err)
		}
	}
}

func TestFencesGrowAfterStateIsLost(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g1, _ := m.NewSession().Lock(context.Background(), req("k", 10, 0, "a"))
	store.deleteAll() // evicted, or the server restarted
	g2, err := testManager(store).NewSession().Lock(context.Background(), req("k", 10, 0, "b"))
	if err != nil || g2.Fence <= g1.Fence {
		t.Fatalf("fence after state loss: %d then %d (%v)", g1.Fence, g2.Fence, err)
	}
	if _, err := m.Unlock(context.Background(), "k", g1.Fence); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("old holder's unlock after the state was lost and retaken: %v", err)
	}
}

func TestExtend(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, _ := m.NewSession().Lock(context.Background(), req("k", 10, 0, "a"))
	if ttl, err := m.Extend(context.Background(), "k", g.Fence, 50); ttl != 50 || err != nil {
		t.Fatalf("extend: %d %v", ttl, err)
	}
	// Through another manager, which has no cached state.
	if ttl, err := testManager(store).Extend(context.Background(), "k", g.Fence, 1); ttl != 1 || err != nil {
		t.Fatalf("shorten elsewhere: %d %v", ttl, err)
	}
	if _, err := m.Extend(context.Background(), "k", g.Fence+1, 5); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("extend with a wrong fence: %v", err)
	}
	// Our cached cas is stale now; unlock must still work.
	if left, err := m.Unlock(context.Background(), "k", g.Fence); left != 0 || err != nil {
		t.Fatalf("unlock after extend elsewhere: %d %v", left, err)
	}
}

func TestSessionCloseReleasesItsLocks(t *testing.T) {
	m := testManager(newMemStore())
	s := m.NewSession()
	s.Lock(context.Background(), req("a", 10, 0, ""))
	s.Lock(context.Background(), req("b", 10, 0, ""))
	s.Lock(context.Background(), req("lease", 10, 0, "owner"))
	s.Close(context.Background())
	for _, name := range []string{"a", "b"} {
		if _, err := m.NewSession().Lock(context.Background(), req(name, 10, 0, "x")); err != nil {
			t.Errorf("%s still held after its session closed: %v", name, err)
		}
	}
	if _, err := m.NewSession().Lock(context.Background(), req("lease", 10, 0, "x")); !errors.Is(err, ErrNotLocked) {
		t.Errorf("a lease must outlive the session: %v", err)
	}
}

func TestStoreDown(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	store.setDown(true)
	if _, err := m.NewSession().Lock(context.Background(), req("k", 10, time.Second, "")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("lock with the store down: %v", err)
	}
	if _, err := m.Unlock(context.Background(), "k", 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unlock with the store down: %v", err)
	}
}

func TestCloseEndsWaits(t *testing.T) {
	m := testManager(newMemStore())
	m.NewSession().Lock(context.Background(), req("k", 10, 0, "x"))
	done := make(chan error)
	go func() {
		_, err := m.NewSession().Lock(context.Background(), req("k", 10, time.Minute, ""))
		done <- err
	}()
	waitFor(t, func() bool { return m.Stats().Waiters == 1 })
	m.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("wait after Close: %v", err)
	}
}

// Only the head waiter looks at a lock held elsewhere; the rest sleep.
func TestOnlyHeadPolls(t *testing.T) {
	store := newMemStore()
	other := testManager(store)
	other.NewSession().Lock(context.Background(), req("k", 10, 0, "elsewhere"))
	m := testManager(store)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 50; i++ {
		go m.NewSession().Lock(ctx, req("k", 10, time.Minute, ""))
	}
	waitFor(t, func() bool { return m.Stats().Waiters == 50 })
	before := store.opCount()
	time.Sleep(200 * time.Millisecond)
	// The head polls at most every 20ms (two ops a look): about 20 ops, not 50 waiters' worth.
	if ops := store.opCount() - before; ops > 60 {
		t.Fatalf("%d store operations in 200ms with 50 waiters", ops)
	}
}

// A holder that releases the moment its grant arrives, while the release
// that handed it over is still finishing: every release must find its own
// grant. (Overlapping hand-ons once let the first one's end clear the
// second one's guard, so the head tried memcached meanwhile and a release
// answered NOT_OWNER for a grant it held.)
func TestReleaseRightAfterHandoff(t *testing.T) {
	m := testManager(newMemStore())
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := m.NewSession()
			defer s.Close(context.Background())
			for j := 0; j < 300; j++ {
				g, err := s.Lock(context.Background(), req("k", 10, 10*time.Second, ""))
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := s.Unlock(context.Background(), "k", g.Fence); err != nil {
					t.Errorf("unlock of grant %d: %v", g.Fence, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A waiter whose request is cancelled (its client hung up, or the proxy
// that forwarded it said cancel) while the lock is held through another
// process must not take the lock when it wakes: nobody would receive the
// grant, and a lease would stand for its whole ttl. Here the lock comes
// free just as the request is cancelled, as the waiter goes to sleep.
func TestCancelledWaiterDoesNotTakeAFreedLock(t *testing.T) {
	store := newMemStore()
	other, m := testManager(store), testManager(store)
	g, err := other.Lock(context.Background(), req("k", 30, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := req("k", 30, time.Minute, "gone")
	r.OnWait = func() {
		if _, err := other.Unlock(context.Background(), "k", g.Fence); err != nil {
			t.Error(err)
		}
		cancel()
	}
	if got, err := m.Lock(ctx, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %+v %v, want context.Canceled", got, err)
	}
	if rec, ok := store.record(t, "k"); ok {
		t.Fatalf("the lock is held by %q after its only waiter was cancelled", rec.owner)
	}
}
