package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockclient"
	"github.com/memcachedlock/memcachedlock/proxy"
)

func dialLock(t *testing.T, addr string) *lockclient.Client {
	t.Helper()
	c, err := lockclient.Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// N clients over two proxies increment a plain counter in memcached (get,
// then set: not atomic) under one lock: no update may be lost.
func TestLockMutualExclusionAcrossProxies(t *testing.T) {
	c := startCluster(t, 2)
	p1, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	p2, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	n := counterUnderLock(t, []string{p1, p2}, 8, 2*time.Second)
	t.Logf("%d increments under the lock through two proxies, none lost", n)
}

// Waiters queued on one proxy get the lock in the order they asked, and
// each release hands over at once: the poll interval is an hour here, so
// a grant that waited for a poll would never come.
func TestLockOrderAndHandoff(t *testing.T) {
	c := startCluster(t, 1)
	addr, srv := startProxy(t, proxy.Config{Servers: c.servers(t), LockPoll: time.Hour})
	holder := dialLock(t, addr)
	g, err := holder.Lock(context.Background(), "k", lockclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		lc := dialLock(t, addr)
		go func(i int) {
			defer wg.Done()
			g, err := lc.Lock(context.Background(), "k", lockclient.Options{Wait: 20 * time.Second})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			lc.Unlock(context.Background(), g)
		}(i)
		waitStat(t, addr, "proxy_lock_waiters", strconv.Itoa(i+1))
	}
	holder.Unlock(context.Background(), g)
	wg.Wait()
	if fmt.Sprint(order) != "[0 1 2 3 4 5]" {
		t.Fatalf("granted in order %v", order)
	}
	if got := statValue(t, addr, "proxy_lock_handoffs"); got != "6" {
		t.Errorf("proxy_lock_handoffs %s, want 6", got)
	}
	_ = srv
}

func statValue(t *testing.T, addr, name string) string {
	t.Helper()
	for _, l := range strings.Split(ask(t, addr, "stats\r\n", "END"), "\r\n") {
		if f := strings.Fields(l); len(f) == 3 && f[1] == name {
			return f[2]
		}
	}
	return ""
}

// waitStat waits until a stat has a value; 15 s bounds a hang (a proxy's
// registration outlives it by up to 5 s).
func waitStat(t *testing.T, addr, name, want string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if statValue(t, addr, name) == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("stat %s never became %s", name, want)
}

// The transcript of PROTOCOL.md 2.4, typed as telnet would.
func TestLockTelnetTranscript(t *testing.T) {
	c := startCluster(t, 2)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	conn := testmc.Dial(t, addr)
	locked := conn.RoundTrip("lock catalog 30 5000 zeo1:4711:140230")
	var fence uint64
	if _, err := fmt.Sscanf(locked, "LOCKED %d 30 1", &fence); err != nil {
		t.Fatalf("lock: %q", locked)
	}
	if got := conn.RoundTrip("lockinfo catalog"); !regexpMatch(`^LOCK `+strconv.FormatUint(fence, 10)+` (29|30) 1 zeo1:4711:140230 0$`, got) {
		t.Fatalf("lockinfo: %q", got)
	}
	other := testmc.Dial(t, addr)
	if got := other.RoundTrip("lock catalog 30 0 zeo2:99:1"); !regexpMatch(`^NOT_LOCKED (29|30)$`, got) {
		t.Fatalf("lock by another owner: %q", got)
	}
	f := strconv.FormatUint(fence, 10)
	for _, step := range [][2]string{
		{"extend catalog " + f + " 1", "EXTENDED 1"},
		{"unlock catalog " + f, "UNLOCKED 0"},
		{"unlock catalog " + f, "NOT_FOUND"},
		{"lock catalog 30 0 a b", "CLIENT_ERROR usage: lock <key> [<ttl> [<wait_ms> [<owner>]]]"},
		{"lock catalog noreply", "CLIENT_ERROR noreply not allowed"},
		{"lock catalog 0", "CLIENT_ERROR ttl must be 1 to 300"},
		{"lock catalog 30 999999999", "CLIENT_ERROR wait_ms must be 0 to 300000"},
		{"rlock catalog 30 0", "CLIENT_ERROR usage: rlock <key> <ttl> <wait_ms> <owner>"},
		{"unlock catalog x", "CLIENT_ERROR invalid fence"},
		{"lockinfo catalog", "NOT_FOUND"},
		{"lock " + strings.Repeat("k", 251), "CLIENT_ERROR bad command line format"},
	} {
		if got := conn.RoundTrip(step[0]); got != step[1] {
			t.Errorf("%s: got %q, want %q", step[0], got, step[1])
		}
	}
}

func TestLockReentrantAndModes(t *testing.T) {
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	conn := testmc.Dial(t, addr)
	first := conn.RoundTrip("rlock r 30 0 me")
	fence := strings.Fields(first)[1]
	for _, step := range [][2]string{
		{"rlock r 30 0 me", "LOCKED " + fence + " 30 2"},
		{"rlock r 30 0 me", "LOCKED " + fence + " 30 3"},
		{"lock r 30 0 me", "CLIENT_ERROR lock is held in another mode"},
		{"rlock r 30 0 you", "NOT_LOCKED 30"},
		{"unlock r 1", "NOT_OWNER"},
		{"unlock r " + fence, "UNLOCKED 2"},
		{"unlock r " + fence, "UNLOCKED 1"},
		{"unlock r " + fence, "UNLOCKED 0"},
		{"unlock r " + fence, "NOT_FOUND"},
	} {
		if got := conn.RoundTrip(step[0]); got != step[1] {
			t.Errorf("%s: got %q, want %q", step[0], got, step[1])
		}
	}
}

// A lease whose owner vanished is free when its ttl runs out; extend
// lengthens and shortens it.
func TestLockTTLAndExtend(t *testing.T) {
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	owner := testmc.Dial(t, addr)
	fence := strings.Fields(owner.RoundTrip("lock lease 1 0 gone:1:1"))[1]
	owner.RoundTrip("extend lease " + fence + " 100")
	if got := testmc.Dial(t, addr).RoundTrip("lockinfo lease"); !regexpMatch(` (99|100) 1 gone:1:1 0$`, got) {
		t.Fatalf("after extend to 100: %q", got)
	}
	if got := owner.RoundTrip("extend lease " + fence + " 1"); got != "EXTENDED 1" {
		t.Fatalf("shorten: %q", got)
	}
	owner.NetConn.Close() // a lease outlives its connection; only the ttl frees it
	waiter := testmc.Dial(t, addr)
	if got := waiter.RoundTrip("lock lease 30 5000 next:1:1"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("waiting for an expiring lease: %q", got)
	}
	if got := waiter.RoundTrip("unlock lease " + fence); got != "NOT_OWNER" {
		t.Fatalf("the expired grant's fence: %q", got)
	}
	if got := waiter.RoundTrip("extend lease " + fence + " 5"); got != "NOT_OWNER" {
		t.Fatalf("extend with the expired grant's fence: %q", got)
	}
}

// An ownerless lock is freed when its connection drops; a waiter whose
// connection drops leaves the queue.
func TestLockConnectionOwnership(t *testing.T) {
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	holder := testmc.Dial(t, addr)
	if got := holder.RoundTrip("lock conn"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	waiter := testmc.Dial(t, addr)
	waiter.Send("lock conn 30 60000\r\n")
	waitStat(t, addr, "proxy_lock_waiters", "1")
	waiter.NetConn.Close()
	waitStat(t, addr, "proxy_lock_waiters", "0")
	if got := testmc.Dial(t, addr).RoundTrip("lockinfo conn"); !regexpMatch(`^LOCK \d+ \d+ 1 conn:\S+ 0$`, got) {
		t.Fatalf("lockinfo: %q", got)
	}
	holder.NetConn.Close()
	next := testmc.Dial(t, addr)
	if got := next.RoundTrip("lock conn 30 5000"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("after the holder's connection closed: %q", got)
	}
}

// Fences grow across proxies, after the lock state is deleted behind the
// proxy's back, and after memcached restarts.
func TestLockFencesKeepGrowing(t *testing.T) {
	c := startCluster(t, 1)
	// A short longest ttl: after the restart below, new locks are refused
	// until every earlier grant could have expired.
	p1, _ := startProxy(t, proxy.Config{Servers: c.servers(t), LockTTL: 1, LockTTLMax: 1})
	p2, _ := startProxy(t, proxy.Config{Servers: c.servers(t), LockTTL: 1, LockTTLMax: 1})
	var last uint64
	take := func(addr, why string) {
		t.Helper()
		lc := dialLock(t, addr)
		var g lockclient.Grant
		var err error
		for i := 0; i < 100; i++ {
			g, err = lc.Lock(context.Background(), "fenced", lockclient.Options{TTL: time.Second, TryOnce: true, Owner: "o"})
			if err == nil || !strings.Contains(err.Error(), "recovering") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: %v", why, err)
		}
		if g.Fence <= last {
			t.Fatalf("%s: fence %d not above %d", why, g.Fence, last)
		}
		last = g.Fence
		lc.Unlock(context.Background(), g)
	}
	take(p1, "first grant")
	take(p2, "through the other proxy")
	take(p1, "back through the first")
	lc := dialLock(t, p1)
	g, err := lc.Lock(context.Background(), "fenced", lockclient.Options{TTL: time.Second, Owner: "x", TryOnce: true})
	if err != nil {
		t.Fatal(err)
	}
	memcache.New(c[0].Addr).Delete("__memcachedlock:fenced")
	if _, err := lc.Unlock(context.Background(), g); !errors.Is(err, lockclient.ErrNotFound) {
		t.Fatalf("unlock after the state was deleted: %v", err)
	}
	last = g.Fence
	take(p2, "after the state was deleted")
	c[0].Restart(t)
	for _, p := range []string{p1, p2} {
		for i := 0; i < 100; i++ { // until the proxies have reconnected
			if _, err := dialLock(t, p).Info(context.Background(), "x"); errors.Is(err, lockclient.ErrNotFound) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	take(p2, "after memcached restarted")
	take(p1, "after memcached restarted, other proxy")
}

// With its lock server down, a lock is refused, never granted elsewhere.
func TestLockServerDown(t *testing.T) {
	c := startCluster(t, 2)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t), Timeout: 200 * time.Millisecond})
	// Find a name whose lock lives on server 1, then stop server 1.
	names := keysOn(t, c.servers(t), 1, 1)
	c[1].Stop()
	conn := testmc.Dial(t, addr)
	for _, cmd := range []string{"lock " + names[0] + " 30 500", "lockinfo " + names[0], "unlock " + names[0] + " 1"} {
		if got := conn.RoundTrip(cmd); got != "SERVER_ERROR lock server unavailable" {
			t.Fatalf("%s with its server down: %q", cmd, got)
		}
	}
	// Nothing was written to the other server.
	if it, err := memcache.New(c[0].Addr).Get("__memcachedlock:" + names[0]); err == nil {
		t.Fatalf("lock state appeared on another server: %q", it.Value)
	}
	// Locks that live on the healthy server still work.
	if got := conn.RoundTrip("lock " + keysOn(t, c.servers(t), 0, 1)[0] + " 30 0"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock on the healthy server: %q", got)
	}
}

// Ordinary commands cannot touch lock state.
func TestLockStateIsReserved(t *testing.T) {
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	conn := testmc.Dial(t, addr)
	conn.RoundTrip("lock mine")
	for _, cmd := range []string{"get __memcachedlock:mine", "delete __memcachedlock:mine", "touch __memcachedlock:mine 1"} {
		if got := conn.RoundTrip(cmd); got != "CLIENT_ERROR key is reserved for locks" {
			t.Errorf("%s: %q", cmd, got)
		}
	}
}

// Shutdown ends waits with SERVER_ERROR and releases connection locks.
func TestLockShutdown(t *testing.T) {
	c := startCluster(t, 1)
	addr, srv := startProxy(t, proxy.Config{Servers: c.servers(t)})
	holder := testmc.Dial(t, addr)
	holder.RoundTrip("lock s")
	waiter := testmc.Dial(t, addr)
	waiter.Send("lock s 30 60000\r\n")
	waitStat(t, addr, "proxy_lock_waiters", "1")
	go srv.Shutdown(context.Background())
	if got := waiter.Line(); got != "SERVER_ERROR proxy shutting down" {
		t.Fatalf("waiter at shutdown: %q", got)
	}
	// The holder's connection-owned lock is gone from memcached.
	for i := 0; i < 200; i++ {
		if _, err := memcache.New(c[0].Addr).Get("__memcachedlock:s"); errors.Is(err, memcache.ErrCacheMiss) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("connection-owned lock still in memcached after shutdown")
}

// A lock server that restarts, or is flushed, lost its lock items: new
// locks on it are refused until every earlier grant could have expired, so
// a holder that does not know it lost its lock never sees it granted twice.
func TestLockServerRestartAndFlush(t *testing.T) {
	c := startCluster(t, 1)
	first, _ := startProxy(t, proxy.Config{Servers: c.servers(t), LockTTL: 2, LockTTLMax: 2})
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t), LockTTL: 2, LockTTLMax: 2})
	holder := testmc.Dial(t, first) // the holder is on another proxy: this one has nothing cached
	if got := holder.RoundTrip("lock held 2 0 first:1:1"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	c[0].Restart(t)
	other := testmc.Dial(t, addr)
	refused := false
	for i := 0; i < 100 && !refused; i++ {
		got := other.RoundTrip("lock held 2 0 second:1:1")
		if strings.HasPrefix(got, "LOCKED ") {
			t.Fatalf("granted again right after the lock server restarted: %q", got)
		}
		refused = got == "SERVER_ERROR lock server recovering"
		time.Sleep(10 * time.Millisecond)
	}
	if !refused {
		t.Fatal("never refused with 'lock server recovering' after the restart")
	}
	// After the longest ttl the server is trusted again.
	waitLocked(t, other, "lock held 2 0 second:1:1")
	other.RoundTrip("unlock held " + strings.Fields(other.RoundTrip("lockinfo held"))[1])

	// Our own flush_all removes lock items too.
	if got := holder.RoundTrip("lock flushed 2 0 a:1:1"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	if got := other.RoundTrip("flush_all"); got != "OK" { // through the proxy that is asked next
		t.Fatal(got)
	}
	if got := other.RoundTrip("lock flushed 2 0 b:1:1"); got != "SERVER_ERROR lock server recovering" {
		t.Fatalf("lock after flush_all: %q", got)
	}
	waitLocked(t, other, "lock flushed 2 0 b:1:1")
}

func waitLocked(t *testing.T, c *testmc.Conn, cmd string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		got := c.RoundTrip(cmd)
		if strings.HasPrefix(got, "LOCKED ") {
			return
		}
		if got != "SERVER_ERROR lock server recovering" {
			t.Fatalf("%s: %q", cmd, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: still recovering", cmd)
}

// An uncontended lock and unlock cost two memcached round trips: the add
// that takes it, with the read of the marker behind it in the same write,
// and the compare-and-delete that frees it. (A lock server that may evict
// also answers a stats behind the add; this one runs with -M.)
func TestLockUncontendedIsTwoRoundTrips(t *testing.T) {
	c := cluster{testmc.Start(t, "-M")}
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	conn := testmc.Dial(t, addr)
	fence := strings.Fields(conn.RoundTrip("lock fast 30 0"))[1] // the marker is written by now
	conn.RoundTrip("unlock fast " + fence)
	serverStats := func() map[string]int {
		out := map[string]int{}
		for _, l := range strings.Split(ask(t, c[0].Addr, "stats\r\n", "END"), "\r\n") {
			if f := strings.Fields(l); len(f) == 3 {
				n, _ := strconv.Atoi(f[2])
				out[f[1]] = n
			}
		}
		return out
	}
	before := serverStats()
	for i := 0; i < 10; i++ {
		fence := strings.Fields(conn.RoundTrip("lock fast 30 0"))[1]
		if got := conn.RoundTrip("unlock fast " + fence); got != "UNLOCKED 0" {
			t.Fatal(got)
		}
	}
	after := serverStats()
	// Besides, the proxy renews its registration once a second (a read and
	// a write); stats itself is not counted in these.
	renewals := after["uptime"] - before["uptime"] + 1
	sets, gets, deletes := after["cmd_set"]-before["cmd_set"], after["cmd_get"]-before["cmd_get"], after["delete_hits"]-before["delete_hits"]
	if deletes != 10 || sets < 10 || sets > 10+renewals || gets < 10 || gets > 10+renewals ||
		after["cmd_touch"] != before["cmd_touch"] || after["delete_misses"] != before["delete_misses"] {
		t.Fatalf("10 lock+unlock cost sets %d, marker reads %d, deletes %d (with up to %d registry renewals); want 10 of each",
			sets, gets, deletes, renewals)
	}
}

// A flush_all that did not go through this proxy (an operator, another
// proxy) is noticed from memcached's cmd_flush within about a second.
func TestLockServerFlushedElsewhere(t *testing.T) {
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t), LockTTL: 2, LockTTLMax: 2})
	conn := testmc.Dial(t, addr)
	if got := conn.RoundTrip("lock elsewhere 2 0 a:1:1"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	time.Sleep(1500 * time.Millisecond) // the watcher has read cmd_flush once
	if err := memcache.New(c[0].Addr).FlushAll(); err != nil {
		t.Fatal(err)
	}
	refused := false
	for i := 0; i < 60 && !refused; i++ {
		got := conn.RoundTrip("lock other 2 0 b:1:1")
		refused = got == "SERVER_ERROR lock server recovering"
		if strings.HasPrefix(got, "LOCKED ") {
			conn.RoundTrip("unlock other " + strings.Fields(got)[1])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !refused {
		t.Fatal("a flush_all sent straight to memcached was never noticed")
	}
	waitLocked(t, conn, "lock other 2 0 b:1:1")
}
