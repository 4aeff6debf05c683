package lockservice

import (
	"context"
	"errors"
	"testing"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// Two proxies serve one reentrant lease (their views of the name's home
// differ, or its home is out of reach): one took it, the other a second
// level. Both levels are released through the first, and the lock is free
// on every replica; then the second proxy, which still remembers its
// level, is asked to unlock it. The grant is gone: writing its level back
// where the replicas hold nothing would bring it back to life, holding
// the free lock for a holder that has left. Found by TestCrossStress (a
// last unlock answered UNLOCKED 1 after UNLOCKED 0).
func TestReleasedGrantNotWrittenBack(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	one := newTestService(t, f, 3, 5, "a:1", "b:1", "c:1")
	two := newTestService(t, f, 3, 5, "a:1", "b:1", "c:1")
	ctx := context.Background()
	req := lockext.Request{Name: "k", TTL: 5, Owner: "o", Reentrant: true}
	g, err := one.NewSession().Lock(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if g2, err := two.NewSession().Lock(ctx, req); err != nil || g2.Count != 2 || g2.Fence != g.Fence {
		t.Fatalf("a second level through the other proxy: %+v %v", g2, err)
	}
	for want := 1; want >= 0; want-- {
		if left, err := one.NewSession().Unlock(ctx, "k", g.Fence); err != nil || left != want {
			t.Fatalf("unlock through the first: %d left, %v; want %d", left, err, want)
		}
	}
	left, err := two.NewSession().Unlock(ctx, "k", g.Fence)
	if err == nil {
		t.Errorf("unlock of a released grant through the proxy that remembers it: %d left, want NOT_FOUND", left)
	} else if !errors.Is(err, lockext.ErrNotFound) && !errors.Is(err, lockext.ErrNotOwner) {
		t.Errorf("unlock of a released grant: %v, want NOT_FOUND", err)
	}
	if _, err := tryLock(one, "k", "next"); err != nil {
		t.Fatalf("the free lock, taken by another owner: %v", err)
	}
}
