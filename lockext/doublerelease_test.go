package lockext

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// stepStore is a memStore with two faults a test sets up by value: the
// first compare-and-swap that hold picks blocks, once done, until open is
// closed (a write that has reached memcached and whose reply is on its
// way); the first that fail picks fails without landing.
type stepStore struct {
	*memStore
	hold    func(value []byte) bool
	fail    func(value []byte) bool
	reached chan struct{}
	open    chan struct{}
	held    atomic.Bool
	failed  atomic.Bool
}

func (s *stepStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	if s.fail(value) && !s.failed.Swap(true) {
		return nil, errDown
	}
	ver, err := s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
	if err == nil && s.hold(value) && !s.held.Swap(true) {
		close(s.reached)
		<-s.open
	}
	return ver, err
}

// firstLineEnds reports whether a lock item's first line, its holder,
// ends with suffix.
func firstLineEnds(v []byte, suffix string) bool {
	return bytes.HasSuffix(bytes.SplitN(v, []byte("\n"), 2)[0], []byte(suffix))
}

// The holder's unlock reaches the name's home twice at once (a client
// whose connection dropped sends it again through another proxy, and both
// are forwarded home) while a write of the home is on its way: the head
// waiter's reservation. Both releases wait for it; the first hands the
// lock to the reserved successor before writing, and the write confirming
// that fails. The second release is of a grant that has ended: it must
// neither free the lock nor hand it on while the successor holds it.
func TestDoubleReleaseDuringReservation(t *testing.T) {
	store := newMemStore()
	ss := &stepStore{memStore: store, reached: make(chan struct{}), open: make(chan struct{}),
		hold: func(v []byte) bool { return firstLineEnds(v, " holder") && bytes.Contains(v, []byte("\n")) },
		fail: func(v []byte) bool { return firstLineEnds(v, " waiter") }}
	m := testManager(ss)
	g, waited := holdAndQueue(t, m, "k", 10, time.Minute)
	<-ss.reached // the reservation is in the store, its reply not yet back
	released := []chan error{unlockInBackground(m, "k", g.Fence), unlockInBackground(m, "k", g.Fence)}
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.keys["k"].handing == 2
	})
	close(ss.open)
	next := <-waited
	if next.err != nil {
		t.Fatal(next.err)
	}
	unlocked := 0
	for i, r := range released {
		switch err := <-r; {
		case err == nil:
			unlocked++
		case !errors.Is(err, ErrNotOwner) && !errors.Is(err, ErrNotFound):
			t.Errorf("release %d: %v", i, err)
		}
	}
	if unlocked != 1 {
		t.Errorf("one grant released %d times", unlocked)
	}
	if !ss.failed.Load() {
		t.Fatal("the confirmation of the early handoff was not written")
	}
	if g, err := testManager(store).Lock(context.Background(), req("k", 10, 0, "intruder")); err == nil {
		t.Fatalf("granted to another while the successor holds fence %d: %+v", next.g.Fence, g)
	}
	if g, err := m.Lock(context.Background(), req("k", 10, 0, "intruder")); err == nil {
		t.Fatalf("granted to another through the home while the successor holds fence %d: %+v", next.g.Fence, g)
	}
}

// The holder extends its grant through another process (its reservation
// record stays, at a new version), then unlocks through the home, which
// hands the lock to the reserved successor before writing; the write
// confirming that fails. The next waiter's reservation then finds the
// record changed: the home must not forget the successor's grant, nor
// take the lock over for that waiter once the old holder's time is up.
func TestExtendElsewhereThenEarlyHandoffUnconfirmed(t *testing.T) {
	store := newMemStore()
	fs := &failingStore{memStore: store, fail: func(v []byte) bool { return firstLineEnds(v, " waiter") }}
	m := testManager(fs)
	g, waited := queueReserved(t, m, store, "k", 1, time.Minute)
	if _, err := testManager(store).Extend(context.Background(), "k", g.Fence, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	handed := time.Now()
	next := <-waited
	if next.err != nil {
		t.Fatal(next.err)
	}
	if !fs.fired.Load() {
		t.Fatal("the confirmation of the early handoff was not written")
	}
	// The old holder's second is over within the wait.
	if g, err := m.Lock(context.Background(), req("k", 10, 3*time.Second, "third")); err == nil {
		t.Fatalf("granted to another %s after the handoff, while the successor holds fence %d for %d s: %+v",
			time.Since(handed).Round(time.Millisecond), next.g.Fence, next.g.TTL, g)
	}
}

// beforeStore is a memStore whose compare-and-swaps that fail picks all
// fail without landing, and whose first that wait picks blocks, before it
// lands, until open is closed (a write on its way).
type beforeStore struct {
	*memStore
	fail, wait func(value []byte) bool
	reached    chan struct{}
	open       chan struct{}
	waited     atomic.Bool
}

func (s *beforeStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	if s.fail(value) {
		return nil, errDown
	}
	if s.wait(value) && !s.waited.Swap(true) {
		close(s.reached)
		<-s.open
	}
	return s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
}

// The write confirming an early handoff fails, and the successor releases
// its grant. While that release hands the lock to the next waiter, the old
// holder's unlock comes again (a retry) to the same process. The retry is
// of a grant handed on already: NOT_OWNER. The successor's own unlock is
// the one that hands the lock on, and answers UNLOCKED.
func TestRetriedUnlockWhileTheSuccessorReleases(t *testing.T) {
	store := newMemStore()
	bs := &beforeStore{memStore: store, reached: make(chan struct{}), open: make(chan struct{}),
		fail: func(v []byte) bool { return firstLineEnds(v, " waiter") },
		wait: func(v []byte) bool { return firstLineEnds(v, " third") }}
	m := testManager(bs)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	third := queueBehind(t, m, "k", "third")
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	next := <-waited
	if next.err != nil {
		t.Fatal(next.err)
	}
	released := unlockInBackground(m, "k", next.g.Fence)
	<-bs.reached // the successor's release is handing the lock to "third"
	if _, err := m.Unlock(context.Background(), "k", g.Fence); !errors.Is(err, ErrNotOwner) {
		t.Errorf("the old holder's retried unlock: %v, want NOT_OWNER (its grant was handed on)", err)
	}
	close(bs.open)
	if err := <-released; err != nil {
		t.Errorf("the successor's unlock: %v", err)
	}
	if r := <-third; r.err != nil {
		t.Fatal(r.err)
	}
}
