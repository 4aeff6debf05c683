package lockext

import (
	"context"
	"errors"
	"testing"
	"time"
)

// lockOrFail takes a lock that must be granted at once.
func lockOrFail(t *testing.T, m *Manager, r Request) Grant {
	t.Helper()
	g, err := m.Lock(context.Background(), r)
	if err != nil {
		t.Fatalf("lock %+v: %v", r, err)
	}
	return g
}

// wantHeld checks that another owner cannot take name.
func wantHeld(t *testing.T, m *Manager, name string) {
	t.Helper()
	if g, err := m.Lock(context.Background(), req(name, 10, 0, "other")); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("another owner: %+v %v, want ErrNotLocked: the lock was freed under its holder", g, err)
	}
}

// An undelivered reply is given back only while it is the latest reply for
// its grant. Its owner that asked again meanwhile (on another connection)
// knows the grant from the later reply: giving it back would free the lock
// under a holder that knows it. With no later reply, it is given back: a
// client that hung up while granted leaves no lease standing for its ttl.
func TestUndeliveredReleasedOnlyWhileLatest(t *testing.T) {
	m := testManager(newMemStore())
	first := lockOrFail(t, m, req("k", 10, 0, "o"))
	again := lockOrFail(t, m, req("k", 10, 0, "o"))
	if !again.Again || again.Reply <= first.Reply || again.By != first.By {
		t.Fatalf("asked again: %+v after %+v", again, first)
	}
	if _, err := m.Undelivered(context.Background(), first); !errors.Is(err, ErrKept) {
		t.Fatalf("undelivered after a later reply: %v, want ErrKept", err)
	}
	wantHeld(t, m, "k")

	lone := lockOrFail(t, m, req("lone", 10, 0, "o"))
	if left, err := m.Undelivered(context.Background(), lone); err != nil || left != 0 {
		t.Fatalf("undelivered, no later reply: %d %v", left, err)
	}
	if _, err := m.Lock(context.Background(), req("lone", 10, 0, "other")); err != nil {
		t.Fatalf("after an undelivered grant was given back: %v", err)
	}
}

// A reentrant lock's undelivered level is given back alone, and only while
// no later level was added.
func TestUndeliveredLevel(t *testing.T) {
	m := testManager(newMemStore())
	r := req("k", 10, 0, "o")
	r.Reentrant = true
	first := lockOrFail(t, m, r)
	second := lockOrFail(t, m, r)
	if left, err := m.Undelivered(context.Background(), second); err != nil || left != 1 {
		t.Fatalf("undelivered second level: %d %v, want 1 left", left, err)
	}
	wantHeld(t, m, "k")
	third := lockOrFail(t, m, r)
	if third.Count != 2 {
		t.Fatalf("a level again: %+v", third)
	}
	if _, err := m.Undelivered(context.Background(), first); !errors.Is(err, ErrKept) {
		t.Fatalf("undelivered first level after later ones: %v, want ErrKept", err)
	}
	if left, err := m.Unlock(context.Background(), "k", first.Fence); err != nil || left != 1 {
		t.Fatalf("unlock: %d %v", left, err)
	}
	wantHeld(t, m, "k")
}

// The owner asks again through another process (a proxy serving the name
// itself, its home out of reach), which renews the grant in the store: the
// home, which made the undelivered reply, must not give it back.
func TestUndeliveredAfterAgainElsewhere(t *testing.T) {
	store := newMemStore()
	home, other := testManager(store), testManager(store)
	first := lockOrFail(t, home, req("k", 10, 0, "o"))
	if g := lockOrFail(t, other, req("k", 10, 0, "o")); g.Fence != first.Fence || !g.Again {
		t.Fatalf("asked again elsewhere: %+v", g)
	}
	if _, err := home.Undelivered(context.Background(), first); !errors.Is(err, ErrKept) {
		t.Fatalf("undelivered after the owner got it back elsewhere: %v, want ErrKept", err)
	}
	wantHeld(t, home, "k")
	if _, err := other.Undelivered(context.Background(), first); !errors.Is(err, ErrKept) {
		t.Fatalf("undelivered at a manager that did not make the reply: %v, want ErrKept", err)
	}
	wantHeld(t, other, "k")
}

// The owner asks again while the undelivered reply's release is decided:
// its request renews the grant in the store (a write on its way) when the
// release comes. The release waits for that write and then finds a later
// reply: the grant is kept.
func TestUndeliveredWhileAskedAgain(t *testing.T) {
	ss := &stepStore{memStore: newMemStore(), reached: make(chan struct{}), open: make(chan struct{}),
		hold: func(v []byte) bool { return firstLineEnds(v, " o") }, fail: func([]byte) bool { return false }}
	m := testManager(ss)
	first := lockOrFail(t, m, req("k", 10, 0, "o"))
	asked := make(chan Grant, 1)
	go func() {
		g, _ := m.Lock(context.Background(), req("k", 10, 0, "o"))
		asked <- g
	}()
	<-ss.reached // the renewal is in the store, its reply on its way
	released := make(chan error, 1)
	go func() {
		_, err := m.Undelivered(context.Background(), first)
		released <- err
	}()
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.keys["k"].tried != nil // the release waits for the write
	})
	close(ss.open)
	if g := <-asked; !g.Again || g.Fence != first.Fence {
		t.Fatalf("asked again: %+v", g)
	}
	if err := <-released; !errors.Is(err, ErrKept) {
		t.Fatalf("undelivered, its owner given the grant again meanwhile: %v, want ErrKept", err)
	}
	wantHeld(t, m, "k")
}

// An early grant (handed to the reserved successor before the store was
// written) whose reply cannot be delivered is given back too: its lock
// goes to the next waiter rather than stand for its ttl.
func TestUndeliveredEarlyGrant(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	holder, waited := queueReserved(t, m, store, "k", 10, time.Minute)
	if _, err := m.Unlock(context.Background(), "k", holder.Fence); err != nil {
		t.Fatal(err)
	}
	got := <-waited
	if got.err != nil || m.Stats().EarlyHandoffs != 1 {
		t.Fatalf("handed over: %+v, %d early", got, m.Stats().EarlyHandoffs)
	}
	if _, err := m.Undelivered(context.Background(), got.g); err != nil {
		t.Fatalf("undelivered early grant: %v", err)
	}
	if _, err := m.Lock(context.Background(), req("k", 10, 0, "other")); err != nil {
		t.Fatalf("after the early grant was given back: %v", err)
	}
}
