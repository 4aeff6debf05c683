package lockext

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// record reads the lock item of name as the store holds it now.
func (s *memStore) record(t *testing.T, name string) (record, bool) {
	t.Helper()
	it, err := s.Get(context.Background(), Key{Name: name, Item: itemKey("L:", name)})
	if errors.Is(err, ErrStoreMiss) {
		return record{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(it.Value)
	if err != nil {
		t.Fatal(err)
	}
	return rec, true
}

// lockResult is how a Lock call in a goroutine ended.
type lockResult struct {
	g   Grant
	err error
}

// holdAndQueue has "holder" take name on m for holdTTL seconds, and
// "waiter" (ttl 30) queue behind it for up to wait.
func holdAndQueue(t *testing.T, m *Manager, name string, holdTTL int, wait time.Duration) (holder Grant, waited chan lockResult) {
	t.Helper()
	g, err := m.Lock(context.Background(), req(name, holdTTL, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	waited = make(chan lockResult, 1)
	go func() {
		g, err := m.Lock(context.Background(), req(name, 30, wait, "waiter"))
		waited <- lockResult{g, err}
	}()
	return g, waited
}

// unlockInBackground unlocks name's grant fence on m on a goroutine of its
// own; the channel gets its result.
func unlockInBackground(m *Manager, name string, fence uint64) chan error {
	released := make(chan error, 1)
	go func() {
		_, err := m.Unlock(context.Background(), name, fence)
		released <- err
	}()
	return released
}

// queueBehind has owner queue for name on m (ttl 30, a minute's wait) and
// returns once it waits.
func queueBehind(t *testing.T, m *Manager, name, owner string) chan lockResult {
	t.Helper()
	waiting := m.Stats().Waiters
	done := make(chan lockResult, 1)
	go func() {
		g, err := m.Lock(context.Background(), req(name, 30, time.Minute, owner))
		done <- lockResult{g, err}
	}()
	waitFor(t, func() bool { return m.Stats().Waiters > waiting })
	return done
}

// queueReserved is holdAndQueue, returning once the waiter is written in
// as the successor.
func queueReserved(t *testing.T, m *Manager, store *memStore, name string, holdTTL int, wait time.Duration) (holder Grant, waited chan lockResult) {
	t.Helper()
	g, waited := holdAndQueue(t, m, name, holdTTL, wait)
	waitFor(t, func() bool {
		rec, ok := store.record(t, name)
		return ok && rec.next != nil && rec.next.owner == "waiter"
	})
	return g, waited
}

// The head waiter behind a grant of this process is written in as its
// successor while the grant runs, and the release hands over before it
// writes; the record then names the new holder.
func TestEarlyHandoff(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	if err := (<-waited).err; err != nil {
		t.Fatal(err)
	}
	if n := m.Stats().EarlyHandoffs; n != 1 {
		t.Fatalf("%d early handoffs, want 1", n)
	}
	waitFor(t, func() bool {
		rec, ok := store.record(t, "k")
		return ok && rec.owner == "waiter" && rec.next == nil
	})
}

// A store that cannot vouch for what it holds gets no early handoffs.
func TestNoEarlyHandoffWithoutKeeper(t *testing.T) {
	store := newMemStore()
	m := testManager(doubtingStore{store})
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	if err := (<-waited).err; err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.EarlyHandoffs != 0 || st.Handoffs != 1 {
		t.Fatalf("%+v: want one handoff, written before it was made", st)
	}
}

// doubtingStore is a Keeper that never vouches: a lock server that may
// have restarted since it was last seen.
type doubtingStore struct{ *memStore }

func (doubtingStore) Kept(Key, Version) bool { return false }

// A successor that leaves the queue, its wait run out or its process
// closing, is written out of the record: the holder's release, even
// through another process, then frees the lock for anybody at once rather
// than hand it to a waiter that is gone.
func TestReservedWaiterLeaves(t *testing.T) {
	for _, tc := range []struct {
		how   string
		wait  time.Duration
		leave func(m *Manager)
		err   error
	}{
		{"its wait runs out", 100 * time.Millisecond, func(*Manager) {}, ErrNotLocked},
		{"its process closes", time.Minute, (*Manager).Close, ErrClosed},
	} {
		store := newMemStore()
		m := testManager(store)
		g, waited := queueReserved(t, m, store, "k", 10, tc.wait)
		tc.leave(m)
		if err := (<-waited).err; !errors.Is(err, tc.err) {
			t.Fatalf("%s: waiter: %v", tc.how, err)
		}
		waitFor(t, func() bool { rec, ok := store.record(t, "k"); return ok && rec.next == nil })
		other := testManager(store)
		if _, err := other.Unlock(context.Background(), "k", g.Fence); err != nil {
			t.Fatalf("%s: %v", tc.how, err)
		}
		if _, err := other.Lock(context.Background(), req("k", 10, 0, "next")); err != nil {
			t.Fatalf("%s: after the holder's release through another process: %v", tc.how, err)
		}
	}
}

// A successor that left while the lock server was down stays named in the
// record; once the holder's grant has run out the lock is still free to
// this process, which knows the successor has gone, not held for the
// successor's ttl.
func TestAbandonedReservationAfterTheGrantRunsOut(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	_, waited := queueReserved(t, m, store, "k", 1, time.Minute)
	store.setDown(true)
	m.Close() // the waiter leaves; writing it out of the record fails
	<-waited
	store.setDown(false)
	if rec, _ := store.record(t, "k"); rec.next == nil {
		t.Fatal("the successor was written out although the store was down")
	}
	m.mu.Lock()
	m.closed = false
	m.mu.Unlock()
	time.Sleep(2100 * time.Millisecond) // the holder's second, and memcached's rounding
	if _, err := m.Lock(context.Background(), req("k", 10, 0, "next")); err != nil {
		t.Fatalf("after the holder's grant ran out: %v", err)
	}
}

// The holder released through another process: that one hands the lock
// to the successor the record names, whose own process then finds it;
// nobody else gets it meanwhile.
func TestReleaseElsewhereGoesToTheSuccessor(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	other := testManager(store)
	if _, err := other.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Lock(context.Background(), req("k", 10, 0, "intruder")); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("intruder: %v", err)
	}
	if err := (<-waited).err; err != nil {
		t.Fatal(err)
	}
	if rec, _ := store.record(t, "k"); rec.owner != "waiter" {
		t.Fatalf("record names %q", rec.owner)
	}
}

// A holder that releases twice, through its own process (an early
// handoff) and then through another, is told the second time that its
// grant is gone, and the successor keeps the lock.
func TestDoubleReleaseAfterEarlyHandoff(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	if err := (<-waited).err; err != nil {
		t.Fatal(err)
	}
	other := testManager(store)
	if _, err := other.Unlock(context.Background(), "k", g.Fence); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("second release: %v", err)
	}
	if _, err := other.Lock(context.Background(), req("k", 10, 0, "intruder")); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("intruder: %v", err)
	}
}

// Records with a successor survive encoding, and inForce names the
// successor only once the holder's time is surely up.
func TestRecordWithSuccessor(t *testing.T) {
	r := record{fence: 10, mode: modeExclusive, count: 1, kind: kindConn, owner: "a:1",
		next: &successor{fence: 11, mode: modeReentrant, kind: kindOwner, ttl: 30, by: "p1", owner: "b"}}
	b := r.encode()
	if !bytes.Equal(b, []byte("10 x 1 c a:1\n11 r o 30 p1 b")) {
		t.Fatalf("%q", b)
	}
	got, err := decodeRecord(b)
	if err != nil || got.fence != 10 || got.next == nil || *got.next != *r.next {
		t.Fatalf("%+v %v", got, err)
	}
	for _, c := range []struct{ ttl, fence, left int }{{35, 10, 5}, {30, 10, 0}, {29, 11, 29}, {-1, 10, -1}} {
		in, left := got.inForce(c.ttl)
		if in.fence != uint64(c.fence) || left != c.left {
			t.Errorf("item ttl %d: fence %d with %d s, want %d with %d", c.ttl, in.fence, left, c.fence, c.left)
		}
	}
	if r.itemTTL(5) != 35 {
		t.Error(r.itemTTL(5))
	}
	for _, bad := range []string{"10 x 1 c a\n9 x c 30 p1 b", "10 x 1 c a\n11 x c 0 p1 b", "10 x 1 c a\n11 x c 30 p1", "10 x 1 c a\n11 x c 30  b"} {
		if _, err := decodeRecord([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

// The write that reserves a successor lands but its reply is lost, and
// the successor leaves: the record names a successor this process does not
// remember writing. It is still known for this process's (by), so the
// holder's release frees the lock rather than handing it to nobody.
func TestReservationWithLostReply(t *testing.T) {
	store := newMemStore()
	lossy := &lossyStore{memStore: store}
	m := testManager(lossy)
	g, err := m.Lock(context.Background(), req("k", 10, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	lossy.loseNextSwap.Store(true)
	if _, err := m.Lock(context.Background(), req("k", 30, 100*time.Millisecond, "waiter")); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("waiter: %v", err)
	}
	if rec, _ := store.record(t, "k"); rec.next == nil || rec.next.owner != "waiter" {
		t.Fatalf("the reservation did not land: %+v", rec)
	}
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	if _, err := testManager(store).Lock(context.Background(), req("k", 10, 0, "next")); err != nil {
		t.Fatalf("after the release: %v", err)
	}
}

// lossyStore applies one compare-and-swap, when armed, and reports it
// failed: a reply lost on the way back.
type lossyStore struct {
	*memStore
	loseNextSwap atomic.Bool
}

func (s *lossyStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	ver, err := s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
	if err == nil && s.loseNextSwap.CompareAndSwap(true, false) {
		return nil, errDown
	}
	return ver, err
}

// The holder is released through another process while the successor its
// record names has come to wait there too (its home changed): that process
// writes the successor in as the holder and hands the waiter its grant
// (a handoff), rather than leaving it to find it at its next look.
func TestReleaseElsewhereGrantsTheSuccessorWaitingThere(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	other := New(store, Config{Prefix: "L:", MaxTTL: 60, MaxWait: time.Minute, Poll: time.Hour, EarlyHandoff: true})
	there := make(chan Grant, 1)
	go func() {
		g, err := other.Lock(context.Background(), req("k", 30, time.Minute, "waiter"))
		if err != nil {
			t.Error(err)
		}
		there <- g
	}()
	waitFor(t, func() bool { return other.Stats().Waiters == 1 })
	if _, err := other.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	rec, _ := store.record(t, "k")
	if got := <-there; got.Fence != rec.fence || rec.owner != "waiter" {
		t.Fatalf("granted fence %d; the record names %q with fence %d", got.Fence, rec.owner, rec.fence)
	}
	if n := other.Stats().Handoffs; n != 1 {
		t.Fatalf("%d handoffs through the other process, want 1: the waiter there found its grant by itself", n)
	}
	if err := (<-waited).err; err != nil {
		t.Fatal(err)
	}
}

// An extend through another process than the one that reserved the
// successor does not shorten the item: that process may hand over early
// until the end of the grant it knows of, and the item must outlive the
// early grant. Shortened, it would expire while the successor held the
// lock, and the next waiter's add would take it a second time.
func TestExtendElsewhereDoesNotShortenAReservation(t *testing.T) {
	store := newMemStore()
	home, other := testManager(store), testManager(store)
	g, _ := queueReserved(t, home, store, "k", 10, time.Minute)
	n, err := other.Extend(context.Background(), "k", g.Fence, 1)
	if err != nil {
		t.Fatal(err)
	}
	if n < 9 {
		t.Errorf("EXTENDED %d: the holder is told a grant shorter than the one the item keeps", n)
	}
	it, err := store.Get(context.Background(), Key{Name: "k", Item: itemKey("L:", "k")})
	if err != nil {
		t.Fatal(err)
	}
	if it.TTL < 9+30 {
		t.Fatalf("item lives %d s after an extend elsewhere; the early grant the home may still make needs 10+30", it.TTL)
	}
	// Through the home itself, which knows the grant's end, it shortens.
	if n, err := home.Extend(context.Background(), "k", g.Fence, 2); err != nil || n != 2 {
		t.Fatalf("extend through the home: %d, %v", n, err)
	}
}
