package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// The eleven faults of issue 9, one regression test each. Every test holds
// a lock for the longest ttl (faultTTL) and then, until that ttl has run
// out as measured from when its lock command was sent, asks for the same
// lock through every proxy: any LOCKED is a second grant. The stall cases
// (9-11) instead ask with a wait far below the old ttl, and must get the
// lock within it.

const (
	faultTTL    = 3 // seconds: --lock-ttl-max, so a recovery lasts 4 s
	markerKey   = proxy.DefaultLockPrefix
	faultTTLStr = "3"
)

func faultConfig(servers []ring.Server) proxy.Config {
	return proxy.Config{Servers: servers, Timeout: 300 * time.Millisecond, LockTTL: faultTTL, LockTTLMax: faultTTL}
}

// holdLock takes name for owner through addr and returns the fence and
// when the grant's ttl ends at the latest, counted from the moment the
// command was sent.
func holdLock(t *testing.T, addr, name, owner string) (fence string, until time.Time) {
	t.Helper()
	c := testmc.Dial(t, addr)
	sent := time.Now()
	got := c.RoundTrip("lock " + name + " " + faultTTLStr + " 0 " + owner)
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock %s through %s: %q", name, addr, got)
	}
	return strings.Fields(got)[1], sent.Add(faultTTL * time.Second)
}

// neverGranted asks for name through each proxy in turn, without waiting,
// until the holder's ttl has run out, and fails on any grant. It returns
// how many answers were "lock server recovering".
func neverGranted(t *testing.T, name string, until time.Time, proxies ...string) (recovering int) {
	t.Helper()
	conns := make([]*testmc.Conn, len(proxies))
	for i, p := range proxies {
		conns[i] = testmc.Dial(t, p)
	}
	for i := 0; time.Now().Before(until); i++ {
		c := conns[i%len(conns)]
		got := c.RoundTrip("lock " + name + " " + faultTTLStr + " 0 intruder")
		switch {
		case strings.HasPrefix(got, "LOCKED "):
			t.Fatalf("%s granted again through %s while the first holder's ttl still ran (%s left): %q",
				name, proxies[i%len(proxies)], time.Until(until).Round(time.Millisecond), got)
		case got == "SERVER_ERROR lock server recovering":
			recovering++
		case strings.HasPrefix(got, "NOT_LOCKED "), strings.HasPrefix(got, "SERVER_ERROR "):
		default:
			t.Fatalf("lock %s: %q", name, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return recovering
}

// warm makes each proxy adopt its lock servers now, before a fault: a
// proxy started with LockFresh trusts a server without a marker at its
// first look, whenever that is.
func warm(t *testing.T, proxies ...string) {
	t.Helper()
	for _, p := range proxies {
		if got := testmc.Dial(t, p).RoundTrip("lockinfo warm"); got != "NOT_FOUND" {
			t.Fatalf("lockinfo through %s: %q", p, got)
		}
	}
}

// markerGone reports whether the lock server's marker is missing.
func markerGone(t *testing.T, mc string) bool {
	return ask(t, mc, "mg "+markerKey+" v\r\n", "EN", "VA", "SERVER_ERROR") == "EN\r\n"
}

// 1. flush_all sent straight to the lock server: every proxy notices at
// its next write, and so does one started after the flush.
func TestLockFault1DirectFlush(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	pb, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb)
	_, until := holdLock(t, pa, "k", "holder")
	if got := ask(t, c[0].Addr, "flush_all\r\n", "OK"); got != "OK\r\n" {
		t.Fatal(got)
	}
	pc, _ := startProxyStrict(t, faultConfig(c.servers(t))) // never saw the server before the flush
	if neverGranted(t, "k", until, pb, pa, pc) == 0 {
		t.Fatal("never answered 'lock server recovering' after the flush")
	}
	waitLocked(t, testmc.Dial(t, pb), "lock k 1 0 later")
}

// 2. Once a proxy has seen its lock server lose its state, a release
// does not hand the lock on: the waiter queued behind the holder is
// refused, and so is everybody else.
func TestLockFault2NoHandoffDuringRecovery(t *testing.T) {
	t.Parallel()
	pa, pb, c, holder, fence, waiter, until := flushBehindQueue(t)
	for !strings.HasPrefix(statValue(t, pa, "proxy_lock_server:"+c[0].Addr+":state"), "recovering_until_") {
		time.Sleep(10 * time.Millisecond) // the marker watch looks several times a second
	}
	holder.RoundTrip("unlock k " + fence)
	if got := waiter.Line(); strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("the release handed the lock on during the recovery: %q", got)
	}
	neverGranted(t, "k", until, pa, pb)
}

// 2b. A release that comes before the proxy has seen the loss may still
// hand the lock to the successor it reserved while the server was intact
// (an early handoff, made before memcached is written): then nobody else
// gets the lock until that grant too has run out, since the recovery
// outlasts it.
func TestLockFault2bEarlyHandoffOutlastedByRecovery(t *testing.T) {
	t.Parallel()
	pa, pb, _, holder, fence, waiter, until := flushBehindQueue(t)
	released := time.Now()
	holder.RoundTrip("unlock k " + fence)
	if got := waiter.Line(); strings.HasPrefix(got, "LOCKED ") {
		until = released.Add(faultTTL * time.Second)
		t.Logf("early handoff during the recovery: %q", got)
	}
	neverGranted(t, "k", until, pa, pb)
}

// flushBehindQueue has a holder take k through pa and a waiter queue
// behind it there, and then flushes the lock server. until is when the
// holder's ttl ends.
func flushBehindQueue(t *testing.T) (pa, pb string, c cluster, holder *testmc.Conn, fence string, waiter *testmc.Conn, until time.Time) {
	c = startCluster(t, 1)
	cfg := faultConfig(c.servers(t))
	cfg.LockPoll = time.Hour // the waiter tries only when the release wakes it
	pa, _ = startProxy(t, cfg)
	pb, _ = startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb)
	holder = testmc.Dial(t, pa)
	sent := time.Now()
	got := holder.RoundTrip("lock k " + faultTTLStr + " 0 holder")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	waiter = testmc.Dial(t, pa)
	waiter.Send("lock k " + faultTTLStr + " 2500 waiter\r\n")
	waitStat(t, pa, "proxy_lock_waiters", "1")
	ask(t, c[0].Addr, "flush_all\r\n", "OK")
	return pa, pb, c, holder, strings.Fields(got)[1], waiter, sent.Add(faultTTL * time.Second)
}

// 3. An ordinary flush_all through one proxy (lock servers are the cache
// servers) is noticed by the other proxies too.
func TestLockFault3FlushThroughAnotherProxy(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 2)
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	pb, _ := startProxy(t, faultConfig(c.servers(t)))
	pc, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb, pc)
	_, until := holdLock(t, pa, "k", "holder")
	if got := ask(t, pc, "flush_all\r\n", "OK", "SERVER_ERROR"); got != "OK\r\n" {
		t.Fatal(got)
	}
	if neverGranted(t, "k", until, pb, pa) == 0 {
		t.Fatal("never answered 'lock server recovering' after the flush")
	}
}

// 4. A delayed flush_all counts from when it fires: a lock granted before
// it fires is not granted again after.
func TestLockFault4DelayedFlush(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	pb, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb)
	if got := ask(t, c[0].Addr, "flush_all 2\r\n", "OK"); got != "OK\r\n" {
		t.Fatal(got)
	}
	_, until := holdLock(t, pa, "k", "holder")
	for !markerGone(t, c[0].Addr) {
		if time.Now().After(until) {
			t.Fatal("the delayed flush did not fire within the holder's ttl")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if neverGranted(t, "k", until, pb, pa) == 0 {
		t.Fatal("never answered 'lock server recovering' after the delayed flush fired")
	}
}

// 5. A lock server restarts empty: proxies that knew it notice at their
// next write, and a proxy started after the restart, which has nothing to
// compare with, recovers too.
func TestLockFault5RestartedServerAndNewProxy(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa)
	_, until := holdLock(t, pa, "k", "holder")
	c[0].Restart(t)
	pn, _ := startProxyStrict(t, faultConfig(c.servers(t)))
	if neverGranted(t, "k", until, pn, pa) == 0 {
		t.Fatal("never answered 'lock server recovering' after the restart")
	}
}

// 5b. The same with only the new proxy asking, so that nothing but its own
// adoption of the restarted server stands between it and a second grant.
func TestLockFault5NewProxyAlone(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa)
	_, until := holdLock(t, pa, "k", "holder")
	c[0].Restart(t)
	pn, _ := startProxyStrict(t, faultConfig(c.servers(t)))
	neverGranted(t, "k", until, pn)
}

// 6. A lock server that also holds cache data evicts: its next lock is
// refused, whether or not the lock items themselves were evicted.
func TestLockFault6Eviction(t *testing.T) {
	t.Parallel()
	c := cluster{testmc.Start(t, "-m", "8")}
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	pb, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb)
	_, until := holdLock(t, pa, "k", "holder")
	conn := testmc.Dial(t, pa)
	value := strings.Repeat("x", 400<<10)
	for i := 0; statInt(t, c[0].Addr, "evictions") == 0; i++ {
		if i == 200 {
			t.Fatal("no eviction after 80 MB of cache traffic into an 8 MB memcached")
		}
		if got := conn.RoundTrip(fmt.Sprintf("set fill:%d 0 0 %d\r\n%s", i, len(value), value)); got != "STORED" {
			t.Fatalf("set: %q", got)
		}
	}
	if got := testmc.Dial(t, pb).RoundTrip("lock other " + faultTTLStr + " 0 x"); got != "SERVER_ERROR lock server recovering" {
		t.Fatalf("lock after an eviction: %q", got)
	}
	neverGranted(t, "k", until, pb, pa)
}

func statInt(t *testing.T, addr, name string) int {
	for _, l := range strings.Split(ask(t, addr, "stats\r\n", "END"), "\r\n") {
		if f := strings.Fields(l); len(f) == 3 && f[1] == name {
			n, _ := strconv.Atoi(f[2])
			return n
		}
	}
	return 0
}

// 7. A reload with a new server list keeps the lock ring; a proxy started
// with the new list refuses locks on the servers it shares with the old
// one, since their markers name the old list.
func TestLockFault7ServerListChange(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	old, all := c.servers(t)[:2], c.servers(t)
	pa, srv := startProxy(t, faultConfig(old))
	// A name that the old ring and the new one place on the same server.
	name := ""
	for _, k := range keysOn(t, old, 0, 50) {
		if pickServer(t, all, k) == 0 {
			name = k
			break
		}
	}
	fence, _ := holdLock(t, pa, name, "holder")
	if err := srv.Reload(all, ring.Ketama, "md5"); err != nil {
		t.Fatal(err)
	}
	conn := testmc.Dial(t, pa)
	if got := conn.RoundTrip("lockinfo " + name); !strings.HasPrefix(got, "LOCK "+fence+" ") {
		t.Fatalf("lockinfo after the reload: %q", got)
	}
	if got := conn.RoundTrip("lock " + name + " " + faultTTLStr + " 0 other"); !strings.HasPrefix(got, "NOT_LOCKED ") {
		t.Fatalf("lock after the reload: %q", got)
	}
	pn, _ := startProxy(t, faultConfig(all))
	if got := testmc.Dial(t, pn).RoundTrip("lock " + name + " " + faultTTLStr + " 0 other"); got != "SERVER_ERROR lock servers differ between proxies" {
		t.Fatalf("lock through a proxy with another lock server list: %q", got)
	}
}

// 7b. A proxy with a longer lock server list places some names on a server
// the others do not use: it must not grant those either while it knows
// that its peers work from another list.
func TestLockFault7NameOnNewServer(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	old, all := c.servers(t)[:2], c.servers(t)
	pa, _ := startProxy(t, faultConfig(old))
	name, shared := "", ""
	for _, k := range keysOn(t, old, 0, 200) {
		switch pickServer(t, all, k) {
		case 2:
			name = k
		case 0:
			shared = k
		}
	}
	if name == "" || shared == "" {
		t.Fatal("no names found on the servers wanted")
	}
	_, until := holdLock(t, pa, name, "holder")
	pn, _ := startProxy(t, faultConfig(all))
	// pn learns that the servers it shares with pa name another list.
	if got := testmc.Dial(t, pn).RoundTrip("lock " + shared + " 1 0 x"); got != "SERVER_ERROR lock servers differ between proxies" {
		t.Fatalf("lock on a shared server: %q", got)
	}
	neverGranted(t, name, until, pn)
}

func pickServer(t *testing.T, servers []ring.Server, name string) int {
	r, err := ring.New(servers, ring.Ketama, "md5")
	if err != nil {
		t.Fatal(err)
	}
	return r.Pick([]byte(name))
}

// 8. memcached's clock ticks once a second, so a grant of ttl seconds is
// written to live ttl+1: it may outlive its ttl, never fall short of it.
func TestLockFault8ItemOutlivesTTL(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	pa, _ := startProxy(t, faultConfig(c.servers(t)))
	conn := testmc.Dial(t, pa)
	best := 0
	for i := 0; i < 5 && best < 2; i++ {
		name := fmt.Sprintf("short%d", i)
		if got := conn.RoundTrip("lock " + name + " 1 0 o"); !strings.HasPrefix(got, "LOCKED ") {
			t.Fatal(got)
		}
		got := ask(t, c[0].Addr, "mg "+markerKey+name+" t\r\n", "HD", "EN")
		ttl, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(got), "HD t"))
		if err != nil {
			t.Fatalf("mg of the lock item: %q", got)
		}
		best = max(best, ttl)
	}
	if best < 2 {
		t.Fatalf("a lock of 1 s is an item that lives %d s: it can end before its ttl", best)
	}
}

// 9. The holder asks again through a second proxy, then releases or
// shortens its grant through the first (or a third): a waiter on the
// second gets the lock within a wait far below the old ttl.
func TestLockFault9StaleHintOnAnotherProxy(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	cfg := faultConfig(c.servers(t))
	cfg.LockTTLMax = 60
	pa, _ := startProxy(t, cfg)
	pb, _ := startProxy(t, cfg)
	pc, _ := startProxy(t, cfg)
	for _, tc := range []struct {
		name, release, wait string
	}{
		{"unlocked", "unlock %s %s", "1000"},
		{"shortened", "extend %s %s 1", "4000"},
		{"unlocked-elsewhere", "unlock %s %s", "1000"},
	} {
		first := testmc.Dial(t, pa)
		got := first.RoundTrip("lock " + tc.name + " 30 0 owner")
		if !strings.HasPrefix(got, "LOCKED ") {
			t.Fatal(got)
		}
		fence := strings.Fields(got)[1]
		if again := testmc.Dial(t, pb).RoundTrip("lock " + tc.name + " 30 0 owner"); strings.Fields(again)[1] != fence {
			t.Fatalf("%s: the owner asking again through another proxy: %q, first %q", tc.name, again, got)
		}
		releaser := first
		if tc.name == "unlocked-elsewhere" {
			releaser = testmc.Dial(t, pc)
		}
		if got := releaser.RoundTrip(fmt.Sprintf(tc.release, tc.name, fence)); !strings.HasPrefix(got, "UNLOCKED 0") && !strings.HasPrefix(got, "EXTENDED 1") {
			t.Fatalf("%s: %q", tc.name, got)
		}
		if got := testmc.Dial(t, pb).RoundTrip("lock " + tc.name + " 30 " + tc.wait + " waiter"); !strings.HasPrefix(got, "LOCKED ") {
			t.Fatalf("%s: a waiter on the proxy that repeated the grant: %q (the old ttl was 30 s)", tc.name, got)
		}
	}
}

// 10. A holder shortens its grant: the waiters on the same proxy get the
// lock when the new ttl ends, not the old one.
func TestLockFault10ExtendShorterWakesWaiters(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	cfg := faultConfig(c.servers(t))
	cfg.LockTTLMax = 60
	pa, _ := startProxy(t, cfg)
	holder := testmc.Dial(t, pa)
	got := holder.RoundTrip("lock k 30 0 holder")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	waiter := testmc.Dial(t, pa)
	waiter.Send("lock k 30 5000 waiter\r\n")
	waitStat(t, pa, "proxy_lock_waiters", "1")
	if got := holder.RoundTrip("extend k " + strings.Fields(got)[1] + " 1"); got != "EXTENDED 1" {
		t.Fatal(got)
	}
	if got := waiter.Line(); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("waiter after the holder shortened its grant to 1 s: %q (the old ttl was 30 s)", got)
	}
}

// 11. Of an rlock taken twice through one proxy, one level is released
// through another: the level left keeps the grant's own ttl, not the
// longest one.
func TestLockFault11PartialRLockUnlockKeepsTTL(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	cfg := faultConfig(c.servers(t))
	cfg.LockTTLMax = 60
	pa, _ := startProxy(t, cfg)
	pb, _ := startProxy(t, cfg)
	pc, _ := startProxy(t, cfg)
	a := testmc.Dial(t, pa)
	a.RoundTrip("rlock r 2 0 owner")
	got := a.RoundTrip("rlock r 2 0 owner")
	if !strings.HasPrefix(got, "LOCKED ") || strings.Fields(got)[3] != "2" {
		t.Fatal(got)
	}
	if got := testmc.Dial(t, pb).RoundTrip("unlock r " + strings.Fields(got)[1]); got != "UNLOCKED 1" {
		t.Fatal(got)
	}
	if got := testmc.Dial(t, pb).RoundTrip("lockinfo r"); !regexpMatch(`^LOCK \d+ [0-2] 1 owner `, got) {
		t.Fatalf("lockinfo after one level was released elsewhere: %q (grant of 2 s)", got)
	}
	if got := testmc.Dial(t, pc).RoundTrip("rlock r 2 5000 other"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("another owner waiting 5 s for an rlock of 2 s: %q", got)
	}
}
