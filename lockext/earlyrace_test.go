package lockext

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// gatedStore is a memStore whose first compare-and-swap of a value that
// gate picks blocks, once done, until open is closed: a write that has
// reached memcached and whose reply is still on its way.
type gatedStore struct {
	*memStore
	gate    func(value []byte) bool
	reached chan struct{}
	open    chan struct{}
	fired   atomic.Bool
}

func (s *gatedStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	ver, err := s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
	if err == nil && s.gate(value) && !s.fired.Swap(true) {
		close(s.reached)
		<-s.open
	}
	return ver, err
}

// The new holder of an early handoff extends its grant while the write
// confirming the handoff, which names the next waiter as its successor,
// is on its way. That waiter then leaves: the successor must still be
// known for this process's own, so that the holder's release frees the
// lock instead of handing it to a waiter that is gone.
func TestExtendDuringConfirmThenSuccessorLeaves(t *testing.T) {
	store := newMemStore()
	gs := &gatedStore{memStore: store, reached: make(chan struct{}), open: make(chan struct{}),
		gate: func(v []byte) bool {
			return bytes.Contains(v, []byte(" leaver")) && bytes.Contains(v, []byte(" waiter\n"))
		}}
	m := testManager(gs)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	leaverCtx, leave := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := m.Lock(leaverCtx, req("k", 30, time.Minute, "leaver"))
		left <- err
	}()
	waitFor(t, func() bool { return m.Stats().Waiters == 2 })

	released := unlockInBackground(m, "k", g.Fence)
	next := <-waited
	if next.err != nil {
		t.Fatal(next.err)
	}
	<-gs.reached // the confirmation is in the store, its reply not yet back
	if _, err := m.Extend(context.Background(), "k", next.g.Fence, 20); err != nil {
		t.Fatalf("extend by the new holder: %v", err)
	}
	close(gs.open)
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	leave()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("leaver: %v", err)
	}
	if _, err := m.Unlock(context.Background(), "k", next.g.Fence); err != nil {
		t.Fatal(err)
	}
	if rec, ok := store.record(t, "k"); ok {
		t.Fatalf("lock not free after its holder's release: held by %q", rec.owner)
	}
}

// The confirmation of an early handoff fails (the lock server is down, or
// the proxy dies before writing it), so the record still names the old
// holder with the new one as its successor. The new holder, reaching
// another process, is still the holder there: its fence, known only to
// the grantee, says the handoff happened. Its extend and unlock work, and
// the unlock frees the lock.
func TestSuccessorHoldsElsewhereBeforeConfirmation(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	next := handOverUnconfirmed(t, m, store, g, waited)
	if rec, _ := store.record(t, "k"); rec.owner != "holder" || rec.next == nil || rec.next.fence != next.g.Fence {
		t.Fatalf("the confirmation was written although the store was down: %+v", rec)
	}
	other := testManager(store)
	if _, err := other.Extend(context.Background(), "k", next.g.Fence, 20); err != nil {
		t.Fatalf("extend through another process: %v", err)
	}
	if _, err := other.Unlock(context.Background(), "k", next.g.Fence); err != nil {
		t.Fatalf("unlock through another process: %v", err)
	}
	if _, err := other.Lock(context.Background(), req("k", 10, 0, "later")); err != nil {
		t.Fatalf("after the unlock: %v", err)
	}
}

// The new holder of an early handoff takes its reentrant lock again while
// the write confirming the handoff is on its way: it gets the next level
// of its own grant, rather than queueing behind the next waiter, which
// waits for that grant to end.
func TestReentrantAgainDuringConfirm(t *testing.T) {
	store := newMemStore()
	gs := &gatedStore{memStore: store, reached: make(chan struct{}), open: make(chan struct{}),
		gate: func(v []byte) bool {
			return bytes.Contains(v, []byte(" other")) && bytes.Contains(v, []byte(" waiter\n"))
		}}
	m := testManager(gs)
	g, err := m.Lock(context.Background(), req("k", 10, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan lockResult, 1)
	go func() {
		r := req("k", 30, time.Minute, "waiter")
		r.Reentrant = true
		g, err := m.Lock(context.Background(), r)
		waited <- lockResult{g, err}
	}()
	waitFor(t, func() bool { rec, ok := store.record(t, "k"); return ok && rec.next != nil })
	otherCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Lock(otherCtx, req("k", 30, time.Minute, "other"))
	waitFor(t, func() bool { return m.Stats().Waiters == 2 })

	released := unlockInBackground(m, "k", g.Fence)
	next := <-waited
	if next.err != nil {
		t.Fatal(next.err)
	}
	<-gs.reached
	again := make(chan lockResult, 1)
	go func() {
		r := req("k", 30, 2*time.Second, "waiter")
		r.Reentrant = true
		g, err := m.Lock(context.Background(), r)
		again <- lockResult{g, err}
	}()
	// The request has reached the manager: served, queued, or waiting for
	// the confirmation to end.
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(again) == 1 || m.Stats().Waiters == 2 || m.keys["k"].tried != nil
	})
	close(gs.open)
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if r := <-again; r.err != nil || r.g.Fence != next.g.Fence || r.g.Count != 2 {
		t.Fatalf("reentrant lock again by the holder: %+v %v", r.g, r.err)
	}
}

// failingStore is a memStore whose first compare-and-swap of a value that
// fail picks fails as a server that cannot be reached would.
type failingStore struct {
	*memStore
	fail  func(value []byte) bool
	fired atomic.Bool
}

func (s *failingStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	if s.fail(value) && !s.fired.Swap(true) {
		return nil, errDown
	}
	return s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
}

// handOverUnconfirmed releases the holder's grant g on m, whose head
// waiter's result comes on waited, while the store is down: the release
// hands over early, and the write confirming it fails. It returns the
// waiter's result, the successor's grant.
func handOverUnconfirmed(t *testing.T, m *Manager, store *memStore, g Grant, waited chan lockResult) lockResult {
	t.Helper()
	store.setDown(true)
	defer store.setDown(false)
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	next := <-waited
	if next.err != nil {
		t.Fatal(next.err)
	}
	return next
}

// A holder releases just after its own ttl ran out, while the item, whose
// whole seconds run a little longer, still names it. An early handoff then
// would make a grant that the item, written for the holder's seconds plus
// the successor's, does not cover to its end; should the write confirming
// it fail, another process could take the lock before that grant ends.
// The handoff is made early only while the holder's grant runs.
func TestNoEarlyHandoffAfterTheHoldersTTL(t *testing.T) {
	store := newMemStore()
	m := testManager(&failingStore{memStore: store,
		fail: func(v []byte) bool { return bytes.HasSuffix(bytes.SplitN(v, []byte("\n"), 2)[0], []byte(" waiter")) }})
	g, err := m.Lock(context.Background(), req("k", 1, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	granted := time.Now()
	waited := make(chan lockResult, 1)
	go func() {
		g, err := m.Lock(context.Background(), req("k", 2, time.Minute, "waiter"))
		waited <- lockResult{g, err}
	}()
	waitFor(t, func() bool { rec, ok := store.record(t, "k"); return ok && rec.next != nil })
	time.Sleep(time.Until(granted.Add(1200 * time.Millisecond))) // the holder's second is over; the item says otherwise
	released := time.Now()
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Logf("release: %v", err)
	}
	var until time.Time
	select {
	case r := <-waited:
		if r.err == nil {
			until = released.Add(2 * time.Second)
			t.Logf("successor granted at the release: %+v", r.g)
		}
	case <-time.After(100 * time.Millisecond):
	}
	other := testManager(store)
	for time.Now().Before(until) {
		if g, err := other.Lock(context.Background(), req("k", 1, 0, "intruder")); err == nil {
			t.Fatalf("granted through another process %v before the successor's grant ended: %+v", time.Until(until), g)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The write confirming an early handoff fails, so the record still names
// the old holder with the new one as its successor. The successor is this
// process's holder now, not a reservation of a waiter that has gone: a
// waiter that queues next must not take it over once the old holder's
// time is up, and the old holder releasing again through this process
// must not free the lock or hand it on.
func TestUnconfirmedEarlyHandoffIsNotAbandoned(t *testing.T) {
	for _, again := range []bool{false, true} {
		store := newMemStore()
		m := testManager(store)
		g, waited := holdAndQueue(t, m, "k", 1, time.Minute)
		waitFor(t, func() bool { rec, ok := store.record(t, "k"); return ok && rec.next != nil })
		handOverUnconfirmed(t, m, store, g, waited)
		if again {
			// The old holder's second release: the record still names it.
			m.Unlock(context.Background(), "k", g.Fence)
		}
		// Past the poll interval, the next waiter's first turn is a look in
		// the store, not a reservation.
		time.Sleep(3 * m.cfg.Poll)
		_, err := m.Lock(context.Background(), req("k", 10, 2*time.Second, "next"))
		if !errors.Is(err, ErrNotLocked) {
			t.Fatalf("released again %v: a waiter queued behind the successor's grant: %v", again, err)
		}
	}
}

// The write confirming an early handoff fails, so the record still names
// the old holder. The old holder's owner asking for the lock again, through
// the process that handed over or through another one, is not the holder
// asking again: the successor holds the lock.
func TestOldHolderAgainAfterUnconfirmedEarlyHandoff(t *testing.T) {
	for _, elsewhere := range []bool{false, true} {
		store := newMemStore()
		m := testManager(store)
		g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
		handOverUnconfirmed(t, m, store, g, waited)
		through := m
		if elsewhere {
			through = testManager(store)
		} else if info, err := m.Info(context.Background(), "k"); err != nil || info.Owner != "waiter" {
			t.Fatalf("lockinfo through the process that handed over: %+v %v", info, err)
		}
		if g, err := through.Lock(context.Background(), req("k", 10, 0, "holder")); !errors.Is(err, ErrNotLocked) {
			t.Fatalf("elsewhere %v: the old holder asking again: %+v %v", elsewhere, g, err)
		}
	}
}

// The holder asks again for its lock (same owner) while its waiter's
// reservation is on its way: it gets its grant back, refreshed, rather
// than losing the compare-and-swap to the reservation and queueing behind
// the waiter, which waits for that very grant.
func TestHolderAgainDuringReservation(t *testing.T) {
	store := newMemStore()
	gs := &gatedStore{memStore: store, reached: make(chan struct{}), open: make(chan struct{}),
		gate: func(v []byte) bool { return bytes.HasSuffix(v, []byte(" waiter")) && bytes.Contains(v, []byte("\n")) }}
	m := testManager(gs)
	g, err := m.Lock(context.Background(), req("k", 10, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	waiterCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Lock(waiterCtx, req("k", 30, time.Minute, "waiter"))
	<-gs.reached // the reservation is in the store, its reply not yet back
	again := make(chan lockResult, 1)
	go func() {
		g, err := m.Lock(context.Background(), req("k", 10, 0, "holder"))
		again <- lockResult{g, err}
	}()
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(again) == 1 || m.keys["k"].tried != nil
	})
	close(gs.open)
	if r := <-again; r.err != nil || r.g.Fence != g.Fence {
		t.Fatalf("the holder asking again: %+v %v", r.g, r.err)
	}
}

// As above with a second waiter queued behind the successor: the one that
// leaves last is not the successor, yet it leaves the queue empty with a
// successor of ours named that has gone, and writes it out. (Only the
// successor itself used to, and a shutdown, whose waiters all leave at
// once, left the lock held in a departed waiter's name.)
func TestCloseWithTwoWaitersWritesOutTheSuccessor(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	second := queueBehind(t, m, "k", "second")
	m.Close()
	for _, c := range []chan lockResult{waited, second} {
		if err := (<-c).err; !errors.Is(err, ErrClosed) {
			t.Fatalf("waiter: %v", err)
		}
	}
	other := testManager(store)
	if _, err := other.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Lock(context.Background(), req("k", 10, 0, "next")); err != nil {
		t.Fatalf("after the holder's release through another process: %v", err)
	}
}
