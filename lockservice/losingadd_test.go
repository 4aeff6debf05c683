package lockservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// An add that lost is on the replicas that took it until it is undone,
// which happens when the refusals have come (or never, if the undo
// fails), and its requester may read it there. With one replica out and
// the grant that refused the add on another, the two that answer
// disagree, and the higher fence, the add's, names the requester. Taken
// for a grant of its own and written back, that value went over the grant
// on the other replica (an older fence, so taken for stale), and the lock
// was granted twice. (Found by TestLockChaos/replicas3 as a lock refused
// for seconds after a lock server was flushed: each failed write back
// restored the value that was never granted, with a fresh ttl, on the
// replica that held the grant, and clients were told "recovering".)
func TestLosingAddIsNoGrant(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := onThree(t, f)
	ctx := context.Background()
	first, err := s.NewSession().Lock(ctx, lockext.Request{Name: "k", TTL: 30, Owner: "first"})
	if err != nil {
		t.Fatal(err)
	}
	const item = "__memcachedlock:k"
	within(time.Second, func() bool { return f["c:1"].has(item) }) // the grant's add may reach c after its majority
	held := f["c:1"].value(item)
	if held == nil {
		t.Fatal("c never took first's grant")
	}
	// second's add, refused by a and c, is still on b; then a goes down.
	f["b:1"].put(item, fmt.Appendf(nil, "%d x 1 o second", first.Fence+1), 1<<40)
	f["a:1"].set(true, 0)
	if g, err := tryLock(s, "k", "second"); !errors.Is(err, lockext.ErrNotLocked) {
		t.Errorf("second asked again while first held the lock: %+v %v, want not locked", g, err)
	}
	if v := f["c:1"].value(item); !bytes.Equal(v, held) {
		t.Errorf("first's grant on c was written over with %q", v)
	}
}
