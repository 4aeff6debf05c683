package lockservice

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// One replica of three missed a change of holder (it was down), and then
// another is down: the two that answer disagree. The holder's extend and
// unlock must not be told NOT_OWNER because the stale replica still names
// the grant before it. Nor can they be carried out at first: the stale
// copy may as well be an add on its way, which nobody but its writer may
// write over, so no majority can be had and the answer is unavailable, as
// with two replicas down. Once the copy has stood there for longer than a
// write's vote window, its writer has decided, and it is written over:
// the holder's extend and unlock work with the other replica still down.
func TestStaleReplicaDoesNotDisownTheHolder(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := onThree(t, f)
	ctx := context.Background()
	first, err := tryLock(s, "k", "first")
	if err != nil {
		t.Fatal(err)
	}
	within(time.Second, func() bool { return f["b:1"].has("__memcachedlock:k") }) // b took the grant, if after the other two
	f["b:1"].set(true, 0)                                                         // b misses the release and the next grant
	if _, err := s.NewSession().Unlock(ctx, "k", first.Fence); err != nil {
		t.Fatal(err)
	}
	second, err := s.NewSession().Lock(ctx, lockext.Request{Name: "k", TTL: 30, Owner: "second"}) // outlives the wait below
	if err != nil {
		t.Fatal(err)
	}
	f["b:1"].set(false, 0)
	f["a:1"].set(true, 0)
	other := onThree(t, f) // knows nothing of the grant
	disowned := func(err error) bool {
		return errors.Is(err, lockext.ErrNotOwner) || errors.Is(err, lockext.ErrNotFound)
	}
	if _, err := other.NewSession().Extend(ctx, "k", second.Fence, 30); disowned(err) {
		t.Fatalf("the holder's extend with one replica down and one stale: %v", err)
	}
	within(10*time.Second, func() bool {
		_, err = other.NewSession().Extend(ctx, "k", second.Fence, 30)
		return !errors.Is(err, lockext.ErrUnavailable)
	})
	if err != nil {
		t.Fatalf("the holder's extend, the stale copy there for long, one replica down: %v", err)
	}
	if _, err := other.NewSession().Unlock(ctx, "k", second.Fence); err != nil {
		t.Fatalf("the holder's unlock, one replica down: %v", err)
	}
}

// Two replicas answer, one with the holder's grant, the other with
// another (a contender's add not yet undone, say), the third down: no
// copy is on a majority, and the one naming another grant proves nothing.
// The holder's unlock is unavailable, never NOT_OWNER.
func TestSplitReplicasDoNotDisownTheHolder(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := onThree(t, f)
	ctx := context.Background()
	g, err := tryLock(s, "k", "holder")
	if err != nil {
		t.Fatal(err)
	}
	f["b:1"].put("__memcachedlock:k", fmt.Appendf(nil, "%d x 1 o contender", g.Fence+1), 1<<40)
	f["c:1"].set(true, 0)
	other := onThree(t, f) // knows nothing of the grant
	if _, err := other.NewSession().Unlock(ctx, "k", g.Fence); errors.Is(err, lockext.ErrNotOwner) || errors.Is(err, lockext.ErrNotFound) {
		t.Fatalf("the holder's unlock, its replicas split: %v", err)
	}
}
