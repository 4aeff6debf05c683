package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockext"
)

// Fault tests for the early handoff: a waiter queued behind a holder on
// the same proxy is written into the holder's record as its successor,
// and the holder's release hands the lock over before memcached is
// written. Faults strike between that reservation and the release.

// lockItem reads name's lock item straight from the lock server mc: its
// value, or "" when there is none.
func lockItem(t *testing.T, mc, name string) string {
	t.Helper()
	nc, err := net.Dial("tcp", mc)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second)) // bounds a hang only
	fmt.Fprintf(nc, "mg %s%s v\r\n", markerKey, name)
	br := bufio.NewReader(nc)
	head, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(head)
	if len(f) == 1 && f[0] == "EN" {
		return ""
	}
	if len(f) < 2 || f[0] != "VA" {
		t.Fatalf("mg %s: %q", name, head)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("mg %s: %q", name, head)
	}
	value := make([]byte, n+2)
	if _, err := io.ReadFull(br, value); err != nil {
		t.Fatal(err)
	}
	return string(value[:n])
}

// waitReserved waits until name's lock item names a successor (a second
// line) whose owner is owner.
func waitReserved(t *testing.T, mc, name, owner string) {
	t.Helper()
	for i := 0; ; i++ {
		_, next, ok := strings.Cut(lockItem(t, mc, name), "\n")
		if ok && strings.HasSuffix(next, " "+owner) {
			return
		}
		if i == 500 {
			t.Fatalf("%s: no successor %s reserved in the lock item", name, owner)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pause stops mc (SIGSTOP) until the returned resume is called, or the
// test ends.
func pause(t *testing.T, mc *testmc.Memcached) (resume func()) {
	mc.Pause()
	resume = sync.OnceFunc(mc.Resume)
	t.Cleanup(resume)
	return resume
}

// earlyPair starts one lock server and two proxies in front of it with
// early handoff on, both having adopted the server.
func earlyPair(t *testing.T) (c cluster, pa, pb string) {
	c = startCluster(t, 1)
	pa, _ = startProxy(t, faultConfig(c.servers(t)))
	pb, _ = startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb)
	return c, pa, pb
}

// earlyQueue has holder take k through pa for faultTTL and waiter queue
// behind it there, and waits until the waiter is reserved as the
// holder's successor in memcached.
func earlyQueue(t *testing.T, c cluster, pa string) (holder *testmc.Conn, fence string, waiter *testmc.Conn) {
	t.Helper()
	holder = testmc.Dial(t, pa)
	got := holder.RoundTrip("lock k " + faultTTLStr + " 0 holder")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	waiter = testmc.Dial(t, pa)
	waiter.Send("lock k " + faultTTLStr + " 2500 waiter\r\n")
	waitReserved(t, c[0].Addr, "k", "waiter")
	return holder, strings.Fields(got)[1], waiter
}

// 12. The lock server pauses between the reservation and the release: the
// release hands over at once and the write that confirms it times out. The
// successor's grant works (extend, unlock) once the server is back, nobody
// else gets the lock meanwhile, and the lock is free after its unlock.
func TestLockFault12EarlyHandoffServerPaused(t *testing.T) {
	t.Parallel()
	c, pa, pb := earlyPair(t)
	holder, fence, waiter := earlyQueue(t, c, pa)

	resume := pause(t, c[0])
	released := time.Now()
	holder.Send("unlock k " + fence + "\r\n")
	got := waiter.Line()
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("no early handoff while the server was paused (store could not vouch?): %q", got)
	}
	until := released.Add(faultTTL * time.Second) // the successor's grant ends no sooner
	next := strings.Fields(got)[1]
	if got := holder.Line(); got != "UNLOCKED 0" {
		t.Fatalf("holder's unlock: %q", got)
	}
	neverGranted(t, "k", released.Add(500*time.Millisecond), pa, pb)
	resume()

	neverGranted(t, "k", until.Add(-1500*time.Millisecond), pb, pa)
	if got := waiter.RoundTrip("extend k " + next + " " + faultTTLStr); got != "EXTENDED "+faultTTLStr {
		t.Fatalf("successor's extend after the pause: %q", got)
	}
	if got := waiter.RoundTrip("unlock k " + next); got != "UNLOCKED 0" {
		t.Fatalf("successor's unlock after the pause: %q", got)
	}
	if got := testmc.Dial(t, pb).RoundTrip("lock k 1 0 later"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock after the successor's unlock: %q", got)
	}
	if n := statValue(t, pa, "proxy_lock_handoffs_early"); n != "1" {
		t.Fatalf("proxy_lock_handoffs_early %s, want 1", n)
	}
}

// 12b. As 12, with a second waiter queued behind the successor that leaves
// while the server is paused. The confirmation named it as the next
// successor, and so may the writes that reach the server once it runs
// again: the lock must still be free once the successor unlocks, not held
// for the leaver's ttl.
func TestLockFault12bEarlyHandoffServerPausedNextLeaves(t *testing.T) {
	t.Parallel()
	c, pa, pb := earlyPair(t)
	holder, fence, waiter := earlyQueue(t, c, pa)
	leaver := testmc.Dial(t, pa)
	leaver.Send("lock k " + faultTTLStr + " 2500 leaver\r\n")
	waitStat(t, pa, "proxy_lock_waiters", "2")

	resume := pause(t, c[0])
	holder.Send("unlock k " + fence + "\r\n")
	got := waiter.Line()
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("no early handoff while the server was paused (store could not vouch?): %q", got)
	}
	next := strings.Fields(got)[1]
	if got := holder.Line(); got != "UNLOCKED 0" {
		t.Fatalf("holder's unlock: %q", got)
	}
	leaver.NetConn.Close()
	waitStat(t, pa, "proxy_lock_waiters", "0")
	resume()

	if got := waiter.RoundTrip("unlock k " + next); got != "UNLOCKED 0" {
		t.Fatalf("successor's unlock after the pause: %q", got)
	}
	if got := testmc.Dial(t, pb).RoundTrip("lock k 1 0 later"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock after the successor's unlock (the leaver's reservation holds it?): %q; item %q", got, lockItem(t, c[0].Addr, "k"))
	}
}

// 13. The lock server restarts empty between the reservation and the
// release. A release before the proxy has seen the loss may still hand
// over early (the store vouched for the reservation a moment ago); then
// nobody gets the lock until that grant has run out, through the proxy
// that handed over, another one that knew the server, or one started after
// the restart. Compare 2b, a flush.
func TestLockFault13EarlyHandoffServerRestarted(t *testing.T) {
	t.Parallel()
	c, pa, pb := earlyPair(t)
	holderSent := time.Now()
	holder, fence, waiter := earlyQueue(t, c, pa)
	until := holderSent.Add(faultTTL * time.Second)

	c[0].Restart(t)
	released := time.Now()
	got := holder.RoundTrip("unlock k " + fence)
	t.Logf("holder's unlock after the restart: %q", got)
	if got := waiter.Line(); strings.HasPrefix(got, "LOCKED ") {
		until = released.Add(faultTTL * time.Second)
		t.Logf("early handoff across the restart: %q", got)
		if n := statValue(t, pa, "proxy_lock_handoffs_early"); n != "1" {
			t.Fatalf("proxy_lock_handoffs_early %s, want 1", n)
		}
	}
	pn, _ := startProxyStrict(t, faultConfig(c.servers(t)))
	neverGranted(t, "k", until, pa, pb, pn)
	waitLocked(t, testmc.Dial(t, pb), "lock k 1 0 later")
}

// 14. With three lock replicas, one pauses between the reservation and the
// release: the other two vouch for the reservation, so the release hands
// over at once. Nobody else gets the lock while the successor holds it,
// its unlock through another proxy works once the replica is back, and the
// lock is free after.
func TestLockFault14EarlyHandoffReplicaPaused(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	cfg := faultConfig(c.servers(t))
	cfg.LockReplicas = 3
	pa, _ := startProxy(t, cfg)
	pb, _ := startProxy(t, cfg)
	warm(t, pa, pb)
	holder, fence, waiter := earlyQueue(t, c, pa)

	resume := pause(t, c[2])
	released := time.Now()
	if got := holder.RoundTrip("unlock k " + fence); got != "UNLOCKED 0" {
		t.Fatalf("holder's unlock: %q", got)
	}
	got := waiter.Line()
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("waiter: %q", got)
	}
	next := strings.Fields(got)[1]
	if n := statValue(t, pa, "proxy_lock_handoffs_early"); n != "1" {
		t.Fatalf("proxy_lock_handoffs_early %s, want 1", n)
	}
	neverGranted(t, "k", released.Add(time.Second), pb, pa)
	resume()
	neverGranted(t, "k", released.Add(1500*time.Millisecond), pb, pa)
	if got := testmc.Dial(t, pb).RoundTrip("unlock k " + next); got != "UNLOCKED 0" {
		t.Fatalf("successor's unlock through another proxy: %q", got)
	}
	waitLocked(t, testmc.Dial(t, pa), "lock k 1 0 later")
}

// 15. The longest grants the configuration allows, a holder's and a
// reserved successor's together, fit in memcached's relative expiry (30
// days; beyond it memcached reads a date, long past, and the item is gone
// at once): the reservation keeps the holder's grant, and its waiter is
// not given the lock.
func TestLockEarlyLongestTTLs(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	cfg := faultConfig(c.servers(t))
	cfg.LockTTLMax = lockext.MaxTTL
	pa, _ := startProxy(t, cfg)
	pb, _ := startProxy(t, cfg)
	warm(t, pa, pb)
	longest := strconv.Itoa(lockext.MaxTTL)
	holder := testmc.Dial(t, pa)
	if got := holder.RoundTrip("lock k " + longest + " 0 holder"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	waiter := testmc.Dial(t, pa)
	waiter.Send("lock k " + longest + " 600 waiter\r\n")
	waitReserved(t, c[0].Addr, "k", "waiter")
	if got := waiter.Line(); !strings.HasPrefix(got, "NOT_LOCKED ") {
		t.Fatalf("waiter behind a holder of %s s: %q", longest, got)
	}
	if got := testmc.Dial(t, pb).RoundTrip("lock k 10 0 intruder"); !strings.HasPrefix(got, "NOT_LOCKED ") {
		t.Fatalf("intruder: %q", got)
	}
}

// 16. The name's home, a proxy process of its own, is killed between an
// early handoff to a waiter forwarded from another proxy and the write
// that confirms it (the lock server is paused, so that write hangs). The
// item still names the successor: nobody is granted the lock while the
// successor's grant runs, its unlock through the surviving proxy works,
// and the lock is free after it.
func TestLockFault16HomeKilledBeforeConfirm(t *testing.T) {
	t.Parallel()
	bin := buildCLI(t)
	c := startCluster(t, 1)
	pb, srv := startProxy(t, faultConfig(c.servers(t)))
	home := testmc.FreeAddr(t)
	cmd := startCLIProxy(t, bin, home, "--servers", c.addrs()[0], "--timeout", "300ms",
		"--lock-ttl", faultTTLStr, "--lock-ttl-max", faultTTLStr)
	t.Cleanup(func() { cmd.Process.Kill() })
	waitStat(t, pb, "proxy_lock_proxies", "2")
	waitStat(t, home, "proxy_lock_proxies", "2")
	name := homedAt(srv, "k16", home)
	holder := testmc.Dial(t, home)
	got := holder.RoundTrip("lock " + name + " " + faultTTLStr + " 0 holder")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	fence := strings.Fields(got)[1]
	waiter := testmc.Dial(t, pb) // forwarded to the home
	waiter.Send("lock " + name + " " + faultTTLStr + " 2500 successor\r\n")
	waitReserved(t, c[0].Addr, name, "successor")

	resume := pause(t, c[0])
	released := time.Now()
	holder.Send("unlock " + name + " " + fence + "\r\n")
	got = waiter.Line()
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("no early handoff: %q", got)
	}
	next := strings.Fields(got)[1]
	until := released.Add(faultTTL * time.Second) // the successor's grant ends no sooner
	cmd.Process.Kill()
	cmd.Wait()
	resume()

	neverGranted(t, name, until.Add(-time.Second), pb)
	if got := waiter.RoundTrip("unlock " + name + " " + next); got != "UNLOCKED 0" {
		t.Fatalf("successor's unlock through the surviving proxy: %q", got)
	}
	waitLocked(t, testmc.Dial(t, pb), "lock "+name+" 1 2000 later")
}

// 17. The name's home shuts down (a proxy replaced) with two waiters
// queued behind a lease, the first reserved as its successor. Every waiter
// leaves at once; whichever leaves last writes the departed successor out
// of the lock item, so that the holder's release through the other proxy
// frees the lock rather than handing it to a waiter that has gone.
func TestLockFault17HomeShutdownWithTwoWaiters(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	pa, srv := startProxy(t, faultConfig(c.servers(t)))
	pb, _ := startProxy(t, faultConfig(c.servers(t)))
	warm(t, pa, pb)
	waitStat(t, pa, "proxy_lock_proxies", "2")
	waitStat(t, pb, "proxy_lock_proxies", "2")
	name := homedAt(srv, "k17", pa)
	got := testmc.Dial(t, pa).RoundTrip("lock " + name + " " + faultTTLStr + " 0 holder")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	fence := strings.Fields(got)[1]
	var waiters []*testmc.Conn // kept: a connection collected would close, and its wait end
	for i, w := range []string{"first", "second"} {
		waiters = append(waiters, testmc.Dial(t, pa))
		waiters[i].Send("lock " + name + " " + faultTTLStr + " 2500 " + w + "\r\n")
		waitStat(t, pa, "proxy_lock_waiters", strconv.Itoa(i+1)) // in this order
	}
	waitReserved(t, c[0].Addr, name, "first")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	srv.Shutdown(ctx)
	cancel()
	if _, next, ok := strings.Cut(lockItem(t, c[0].Addr, name), "\n"); ok {
		t.Fatalf("after the home's shutdown the lock item still names a successor: %q", next)
	}
	other := testmc.Dial(t, pb)
	if got := other.RoundTrip("unlock " + name + " " + fence); got != "UNLOCKED 0" {
		t.Fatalf("holder's unlock through the other proxy: %q", got)
	}
	if got := other.RoundTrip("lock " + name + " 1 0 next"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock after the holder's release: %q (held for a waiter that left?)", got)
	}
	runtime.KeepAlive(waiters)
}
