package lockservice

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// A write that won its majority, refused late by a slow replica, must not
// then write its value over what that replica holds by then: another
// process may have changed the grant since (here, released a level of an
// rlock). Written back, the state that is gone stands on that replica; two
// such replicas are a majority for a change based on it, and with one
// replica down the holder was told the wrong number of levels. (Found by
// TestCrossStress: an rlock's last unlock answered UNLOCKED 1.)
func TestLateRefusalKeepsANewerChange(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := onThree(t, f)
	ctx := context.Background()
	sess := s.NewSession()
	req := lockext.Request{Name: "k", TTL: 30, Owner: "o", Reentrant: true}
	g, err := sess.Lock(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if g, err = sess.Lock(ctx, req); err != nil || g.Count != 2 {
		t.Fatalf("second level: %+v %v", g, err)
	}
	const item = "__memcachedlock:k"
	two := f["a:1"].value(item)
	one := bytes.Replace(two, []byte(" r 2 "), []byte(" r 1 "), 1)
	within(time.Second, func() bool { // the second level's write, on the replica that took it late
		return bytes.Equal(f["b:1"].value(item), two) && bytes.Equal(f["c:1"].value(item), two)
	})
	time.Sleep(10 * time.Millisecond) // and its outcome noted

	// c's copy is rewritten behind the service's back (a new cas, the same
	// value), so that it refuses the extend; and c answers only later.
	f["c:1"].put(item, two, 1<<40)
	gate := f["c:1"].hold()
	if _, err := sess.Extend(ctx, "k", g.Fence, 20); err != nil {
		t.Fatal(err)
	}
	// Another process releases the inner level, on every replica.
	for i, n := range []string{"a:1", "b:1", "c:1"} {
		f[n].put(item, one, 1<<41+uint64(i))
	}
	close(gate)
	// Time for the late refusal to be handled: a write over c would show.
	within(500*time.Millisecond, func() bool { return !bytes.Equal(f["c:1"].value(item), one) })
	if v := f["c:1"].value(item); !bytes.Equal(v, one) {
		t.Errorf("the refusing replica holds %q, want the newer %q", v, one)
	}

	f["a:1"].set(true, 0)
	other := onThree(t, f) // knows nothing of the grant
	if left, err := other.NewSession().Unlock(ctx, "k", g.Fence); err != nil || left != 0 {
		t.Fatalf("the last level's unlock with one replica down: %d levels left, %v", left, err)
	}
}

// A grant's add reaches one replica late, after the grant was released:
// the release found that replica empty and counted it released. The add
// landing then must be undone, or it stands there for the grant's ttl,
// and with another replica down no new grant can find a majority.
func TestLateAddAfterTheReleaseIsUndone(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := onThree(t, f)
	const item = "__memcachedlock:k"
	resume := f["c:1"].stallOn(func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("ms "+item)) && bytes.Contains(b, []byte(" o first\r\n"))
	})
	defer resume()
	first, err := s.NewSession().Lock(context.Background(), lockext.Request{Name: "k", TTL: 30, Owner: "first"})
	if err != nil {
		t.Fatal(err)
	}
	f["b:1"].set(true, 0)
	if _, err := s.NewSession().Unlock(context.Background(), "k", first.Fence); err != nil {
		t.Fatal(err)
	}
	resume()                                                        // the add lands on c now
	within(time.Second, func() bool { return f["c:1"].has(item) })  // the add landing
	within(time.Second, func() bool { return !f["c:1"].has(item) }) // and being undone
	if v := f["c:1"].value(item); v != nil {
		t.Fatalf("the released grant's late add stands on c: %q", v)
	}
	if _, err := tryLock(s, "k", "second"); err != nil {
		t.Fatalf("a new grant with one replica down: %v", err)
	}
}
