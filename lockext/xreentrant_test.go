package lockext

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// A reentrant request reserved as the successor of a grant finds, when it
// looks, its own reservation in force: the holder's grant ran out without
// an unlock, or was unlocked through another process, which made the
// successor the holder. That is the level the request asked for, taken as
// it is, not a second level on top (which its owner would never release:
// the lock would stand for its ttl after the owner's unlock). Found by
// lockservice's TestCrossStress.
func TestReservedReentrantTakesOneLevel(t *testing.T) {
	for _, tc := range []struct {
		what      string
		holderTTL int
		elsewhere bool // the holder unlocks through another process
	}{
		{"the holder's grant runs out", 1, false},
		{"the holder unlocks through another process", 10, true},
	} {
		t.Run(tc.what, func(t *testing.T) {
			store := newMemStore()
			m, other, h, got := reentrantBehindHolder(t, store, tc.holderTTL)
			waitFor(t, func() bool { // reserved: the item names a successor
				store.mu.Lock()
				defer store.mu.Unlock()
				it, ok := store.live("L:k")
				return ok && bytes.Contains(it.value, []byte("\n"))
			})
			if tc.elsewhere {
				if _, err := other.Unlock(context.Background(), "k", h.Fence); err != nil {
					t.Fatal(err)
				}
			}
			oneLevel(t, m, <-got)
		})
	}
}

// reentrantBehindHolder has "holder" take k on a manager over store for
// holderTTL seconds, and a reentrant "next" queue behind it there. It
// returns that manager, another over the same store (another proxy), the
// holder's grant and, once it ends, the waiter's lock call.
func reentrantBehindHolder(t *testing.T, store Store, holderTTL int) (m, other *Manager, h Grant, got chan lockResult) {
	t.Helper()
	cfg := Config{Prefix: "L:", MaxTTL: 10, MaxWait: time.Minute, Poll: 5 * time.Millisecond, EarlyHandoff: true}
	cfg.Instance = "a"
	m = New(store, cfg)
	cfg.Instance = "b"
	other = New(store, cfg)
	ctx := context.Background()
	h, err := m.Lock(ctx, Request{Name: "k", TTL: holderTTL, Owner: "holder"})
	if err != nil {
		t.Fatal(err)
	}
	got = make(chan lockResult, 1)
	go func() {
		g, err := m.Lock(ctx, Request{Name: "k", TTL: 2, Wait: 10 * time.Second, Owner: "next", Reentrant: true})
		got <- lockResult{g, err}
	}()
	return m, other, h, got
}

// oneLevel checks that r granted one level, which one unlock on m releases.
func oneLevel(t *testing.T, m *Manager, r lockResult) {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.g.Count != 1 {
		t.Fatalf("the reserved reentrant waiter took the lock with %d levels, want 1", r.g.Count)
	}
	if left, err := m.Unlock(context.Background(), "k", r.g.Fence); err != nil || left != 0 {
		t.Fatalf("its one unlock: %d levels left, %v", left, err)
	}
}

// landsLostStore is a memStore whose first compare-and-swap of a value
// that lose picks lands, and its reply is lost: the caller gets an error.
type landsLostStore struct {
	*memStore
	lose  func(value []byte) bool
	fired atomic.Bool
}

func (s *landsLostStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	ver, err := s.memStore.CompareAndSwap(ctx, k, value, ttl, v)
	if err == nil && s.lose(value) && !s.fired.Swap(true) {
		return nil, errDown
	}
	return ver, err
}

// A release hands the lock to a waiter, and the write that names it the
// holder lands with its reply lost: the waiter, looking again, finds the
// grant written for it. That grant is new to it: one level, not a second
// one on top (found by lockservice's TestCrossStress), and not one it had
// already (Again), which the proxy would keep if its reply could not be
// delivered.
func TestHandedGrantTakenAsNew(t *testing.T) {
	for _, reentrant := range []bool{true, false} {
		store := &landsLostStore{memStore: newMemStore(), lose: func(v []byte) bool { return bytes.HasSuffix(v, []byte(" o next")) }}
		m := New(store, Config{Prefix: "L:", MaxTTL: 10, MaxWait: time.Minute, Poll: 5 * time.Millisecond, Instance: "a"})
		ctx := context.Background()
		h, err := m.Lock(ctx, Request{Name: "k", TTL: 10, Owner: "holder"})
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan lockResult, 1)
		go func() {
			g, err := m.Lock(ctx, Request{Name: "k", TTL: 2, Wait: 10 * time.Second, Owner: "next", Reentrant: reentrant})
			got <- lockResult{g, err}
		}()
		waitFor(t, func() bool { return m.Stats().Waits == 1 })
		if _, err := m.Unlock(ctx, "k", h.Fence); err == nil {
			t.Fatal("the handoff's reply was lost, and the unlock said nothing")
		}
		r := <-got
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.g.Count != 1 || r.g.Again {
			t.Errorf("reentrant %v: the waiter took the lock with %d levels, again %v; want 1, false", reentrant, r.g.Count, r.g.Again)
		}
	}
}

// countingStore is a landsLostStore that counts the compare-and-swaps of
// values lose picks.
type countingStore struct {
	landsLostStore
	picked atomic.Int32
}

func (s *countingStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	if s.lose(value) {
		s.picked.Add(1)
	}
	return s.landsLostStore.CompareAndSwap(ctx, k, value, ttl, v)
}

// The write that reserves a reentrant waiter as successor lands, but its
// reply is lost; the head reserves itself again, under another fence,
// which fails (the record changed). The first reservation is in force all
// the same, and a release through another process makes it the holder:
// that grant was written for this very waiter, which takes it with one
// level, not a second on top. Found by lockservice's TestCrossStress
// (a proxy leaving the registry while its head waited).
func TestEarlierReservationTakesOneLevel(t *testing.T) {
	store := &countingStore{landsLostStore: landsLostStore{memStore: newMemStore(),
		lose: func(v []byte) bool { return bytes.HasSuffix(v, []byte(" a next")) }}}
	m, other, h, got := reentrantBehindHolder(t, store, 10)
	waitFor(t, func() bool { return store.picked.Load() >= 2 }) // reserved, and again
	if _, err := other.Unlock(context.Background(), "k", h.Fence); err != nil {
		t.Fatal(err)
	}
	oneLevel(t, m, <-got)
}
