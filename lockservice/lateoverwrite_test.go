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
	s := newTestService(t, f, 3, 30, "a:1", "b:1", "c:1")
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
	for i := 0; i < 50 && bytes.Equal(f["c:1"].value(item), one); i++ {
		time.Sleep(10 * time.Millisecond) // time for the late refusal to be handled
	}
	if v := f["c:1"].value(item); !bytes.Equal(v, one) {
		t.Errorf("the refusing replica holds %q, want the newer %q", v, one)
	}

	f["a:1"].set(true, 0)
	other := newTestService(t, f, 3, 30, "a:1", "b:1", "c:1") // knows nothing of the grant
	if left, err := other.NewSession().Unlock(ctx, "k", g.Fence); err != nil || left != 0 {
		t.Fatalf("the last level's unlock with one replica down: %d levels left, %v", left, err)
	}
}
