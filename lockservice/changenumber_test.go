package lockservice

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// storeOnThree is the store of a service over three fake lock servers,
// each name on the given number of them, and the key of name k.
func storeOnThree(t *testing.T, replicas int) (map[string]*fakeMC, *store, lockext.Key) {
	f := fakes("a:1", "b:1", "c:1")
	s := newTestService(t, f, replicas, 30, "a:1", "b:1", "c:1")
	return f, s.store, lockext.Key{Name: "k", Item: "__memcachedlock:k"}
}

// A change of a version the item has moved on from must fail, even when
// the item holds the same bytes again: an extend rewrites a grant as it
// was (a new ttl only), and an rlock level taken and released elsewhere
// puts back the bytes before it. A proxy that passes the grant on from
// the version before would otherwise hand on a lock its owner has just
// renewed through another proxy: two holders. A replica's cas moves with
// every write, but a replica that missed one is caught up by what it
// holds, so every replica must be checked, not just the cas.
func TestChangeOfAnOlderVersionFailsOnTheSameBytes(t *testing.T) {
	for _, n := range []int{1, 3} {
		_, st, k := storeOnThree(t, n)
		ctx := context.Background()
		granted := []byte("7 x 1 o owner")
		v1, err := st.Add(ctx, k, granted, 10)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.CompareAndSwap(ctx, k, granted, 20, v1); err != nil { // the owner's extend
			t.Fatal(err)
		}
		if err := st.CompareAndDelete(ctx, k, v1); !errors.Is(err, lockext.ErrStoreExists) {
			t.Errorf("%d replicas: a release of the version before the extend: %v, want ErrStoreExists", n, err)
		}
		_, err = st.CompareAndSwap(ctx, k, []byte("8 x 1 o next"), 10, v1)
		if !errors.Is(err, lockext.ErrStoreExists) {
			t.Errorf("%d replicas: a change of the version before the extend: %v, want ErrStoreExists", n, err)
		}
	}
}

// A replica that missed a change holds an earlier state; when that has the
// same bytes as the state a change replaces, it is behind, and is caught
// up with the others. So is one whose item a proxy older than the change
// numbers wrote (no number: its bytes decide).
func TestReplicaBehindOnTheSameBytesIsCaughtUp(t *testing.T) {
	f, st, k := storeOnThree(t, 3)
	ctx := context.Background()
	granted := []byte("7 x 1 o owner")
	v1, err := st.Add(ctx, k, granted, 10)
	if err != nil {
		t.Fatal(err)
	}
	// Every replica took the add: one that takes it only now would be
	// added to by the extend, which counts as no vote for it.
	within(time.Second, func() bool { return f["a:1"].has(k.Item) && f["b:1"].has(k.Item) && f["c:1"].has(k.Item) })
	f["c:1"].set(true, 0) // c misses the extend
	v2, err := st.CompareAndSwap(ctx, k, granted, 20, v1)
	if err != nil {
		t.Fatal(err)
	}
	f["c:1"].set(false, 0)
	f["a:1"].set(true, 0) // the next change needs c
	next := []byte("8 x 1 o next")
	if _, err := st.CompareAndSwap(ctx, k, next, 10, v2); err != nil {
		t.Fatalf("a change with one replica down and one a change behind: %v", err)
	}
	if got := f["c:1"].value(k.Item); !bytes.Equal(got, next) {
		t.Errorf("the replica behind holds %q, want %q", got, next)
	}

	// Items without a change number, as an older proxy writes them.
	f["a:1"].set(false, 0)
	for _, mc := range f {
		mc.put(k.Item, granted, 1<<40)
	}
	var it lockext.Item
	within(time.Second, func() bool { it, err = st.Get(ctx, k); return err == nil }) // a answers again
	if err != nil {
		t.Fatal(err)
	}
	f["a:1"].put(k.Item, granted, 1<<41) // rewritten since, by the older proxy
	if _, err := st.CompareAndSwap(ctx, k, next, 10, it.Version); err != nil {
		t.Errorf("a change over items an older proxy wrote: %v", err)
	}
}

// A grant written by a proxy older than the change numbers carries none;
// once a newer proxy changes it (an extend), it does. A version read
// before that, without a number, is of a state that is gone, even though
// the bytes are the same again: a change of it must fail, as it fails
// for a numbered one. Compared by bytes because the version has no
// number, it succeeded on every replica: the double grant the numbers
// prevent, for every grant that outlives the upgrade of its proxies.
func TestChangeOfAnUnnumberedVersionFailsOnceNumbered(t *testing.T) {
	for _, n := range []int{1, 3} {
		f, st, k := storeOnThree(t, n)
		ctx := context.Background()
		granted := []byte("7 x 1 o owner")
		for _, mc := range f {
			mc.put(k.Item, granted, 1<<40) // as an older proxy wrote it: no number
		}
		it, err := st.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.CompareAndSwap(ctx, k, granted, 20, it.Version); err != nil { // the owner's extend
			t.Fatal(err)
		}
		_, err = st.CompareAndSwap(ctx, k, []byte("8 x 1 o next"), 10, it.Version)
		if !errors.Is(err, lockext.ErrStoreExists) {
			t.Errorf("%d replicas: a change of the unnumbered version before the extend: %v, want ErrStoreExists", n, err)
		}
	}
}
