package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
)

// Each write of a grant numbers its state, in the lock item's flags on
// every lock server: the number that tells a lock server holding the same
// bytes again (an extend, a level taken and released) from one that
// missed the change (lockservice's
// TestChangeOfAnOlderVersionFailsOnTheSameBytes shows what it prevents).
// Here on real memcached, through a proxy with three replicas.
func TestLockItemsCarryTheirChangeNumber(t *testing.T) {
	c := startCluster(t, 3)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t), LockReplicas: 3})
	cl := testmc.Dial(t, addr)
	direct := make([]*testmc.Conn, len(c))
	for i, m := range c {
		direct[i] = testmc.Dial(t, m.Addr)
	}
	// expect waits until every lock server holds the item at change want:
	// a write counts once two of the three took it.
	expect := func(step, want string) {
		t.Helper()
		var got []string
		for try := 0; try < 500; try++ {
			got = got[:0]
			for _, d := range direct {
				got = append(got, d.RoundTrip("mg "+proxy.DefaultLockPrefix+"n f"))
			}
			if strings.Count(strings.Join(got, ","), "HD f"+want) == len(direct) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("after %s the lock servers hold %q, want HD f%s on each", step, got, want)
	}
	fence := strings.Fields(cl.RoundTrip("rlock n 30 0 me"))[1]
	expect("the grant", "1")
	if got := cl.RoundTrip("extend n " + fence + " 60"); !strings.HasPrefix(got, "EXTENDED ") {
		t.Fatalf("extend: %q", got)
	}
	expect("an extend (the same value)", "2")
	if got := cl.RoundTrip("rlock n 30 0 me"); !strings.HasPrefix(got, "LOCKED "+fence+" ") {
		t.Fatalf("a second level: %q", got)
	}
	expect("a second level", "3")
	if got := cl.RoundTrip("unlock n " + fence); got != "UNLOCKED 1" {
		t.Fatalf("unlock of a level: %q", got)
	}
	expect("a level released (the value of the grant before it)", "4")
}
