package lockservice

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// heldConn is a lock server as one proxy reaches it: the first batch
// that contains match waits, before it reaches the server, until open is
// closed (a write slow on its way, on this proxy's connection only).
type heldConn struct {
	Conn
	match   []byte
	reached chan struct{}
	open    chan struct{}
	once    sync.Once
}

func (c *heldConn) Exchange(ctx context.Context, batch, reply []byte) ([]byte, error) {
	if bytes.Contains(batch, c.match) {
		c.once.Do(func() {
			close(c.reached)
			<-c.open
		})
	}
	return c.Conn.Exchange(ctx, batch, reply)
}

// An add on its way counts every replica that took it, however long ago.
// A replica that took it must keep it until its writer has decided, even
// when its fence is older than a write that won meanwhile: the add may
// still win, once that write's grant has ended. Here a proxy's add lands
// on b at once and on a only after another proxy has granted the lock,
// written over b (older fence), and released it: the add was granted on
// a alone while it counted a and b, and a third proxy then took the lock
// on b and c while it ran. (Found by TestCrossStress: the first holder was
// told NOT_OWNER by its unlock.)
func TestAnAddOnItsWayKeepsItsReplicas(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	const item = "__memcachedlock:k"
	ctx := context.Background()
	// Timeouts far longer than the test takes: the add's answers must come
	// within its vote window.
	config := func() Config {
		cfg := testConfig(t, 3, 30, "a:1", "b:1", "c:1")
		cfg.Timeout = 5 * time.Second
		return cfg
	}
	home := startService(t, f, config())

	// The first grant is on a and c only: its add to b is held back until
	// the test ends.
	t.Cleanup(f["b:1"].stallOn(func(b []byte) bool { return bytes.Contains(b, []byte(" o first\r\n")) }))
	first, err := tryLock(home, "k", "first")
	if err != nil {
		t.Fatal(err)
	}

	slow := &heldConn{Conn: f["a:1"], match: []byte(" o late\r\n"), reached: make(chan struct{}), open: make(chan struct{})}
	late, err := New(config(), func(addr string) Conn {
		if addr == "a:1" {
			return slow
		}
		return f[addr]
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(late.Close)
	type result struct {
		g   lockext.Grant
		err error
	}
	added := make(chan result, 1)
	go func() {
		g, err := tryLock(late, "k", "late")
		added <- result{g, err}
	}()
	<-slow.reached
	waitFor(t, func() bool { return bytes.Contains(f["b:1"].value(item), []byte(" o late")) })

	// Meanwhile the home hands the lock on to a waiter, which releases it.
	next := make(chan result, 1)
	go func() {
		g, err := home.NewSession().Lock(ctx, lockext.Request{Name: "k", TTL: 30, Wait: time.Minute, Owner: "next"})
		next <- result{g, err}
	}()
	waitFor(t, func() bool { return home.Stats().Waiters == 1 })
	if _, err := home.NewSession().Unlock(ctx, "k", first.Fence); err != nil {
		t.Fatal(err)
	}
	n := <-next
	if n.err != nil {
		t.Fatal(n.err)
	}
	if _, err := home.NewSession().Unlock(ctx, "k", n.g.Fence); err != nil {
		t.Fatal(err)
	}

	close(slow.open) // the add reaches a, free by now
	r := <-added
	if r.err != nil {
		t.Fatalf("the add on its way: %v", r.err)
	}
	third := startService(t, f, config())
	if g, err := tryLock(third, "k", "third"); !errors.Is(err, lockext.ErrNotLocked) {
		t.Fatalf("a second grant (fence %d) while the add's (fence %d) runs: %v", g.Fence, r.g.Fence, err)
	}
	if _, err := late.NewSession().Unlock(ctx, "k", r.g.Fence); err != nil {
		t.Fatalf("the add's holder's unlock: %v", err)
	}
}

// waitFor waits until cond holds, failing the test after a while.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 1000 {
			t.Fatal("condition not met")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
