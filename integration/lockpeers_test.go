package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockclient"
	"github.com/memcachedlock/memcachedlock/proxy"
)

// proxies starts n proxies in front of the same servers and waits until
// each knows all of them, so that they agree on every name's home.
func proxies(t *testing.T, n int, cfg proxy.Config) ([]string, []*proxy.Server) {
	t.Helper()
	addrs := make([]string, n)
	srvs := make([]*proxy.Server, n)
	for i := range addrs {
		addrs[i], srvs[i] = startProxy(t, cfg)
	}
	for _, a := range addrs {
		waitStat(t, a, "proxy_lock_proxies", strconv.Itoa(n))
	}
	return addrs, srvs
}

// lockInfoWaiters is the waiter count lockinfo reports: the home's queue.
func lockInfoWaiters(t *testing.T, addr, name string) int {
	f := strings.Fields(ask(t, addr, "lockinfo "+name+"\r\n", "LOCK", "NOT_FOUND", "SERVER_ERROR", "CLIENT_ERROR"))
	if len(f) != 6 || f[0] != "LOCK" {
		return -1
	}
	n, _ := strconv.Atoi(f[5])
	return n
}

// Waiters on two proxies that ask in turn get the lock in turn: they all
// queue at the name's home, and with the poll interval at an hour only a
// handoff can grant.
func TestLockFIFOAcrossProxies(t *testing.T) {
	c := startCluster(t, 1)
	addrs, _ := proxies(t, 2, proxy.Config{Servers: c.servers(t), LockPoll: time.Hour})
	holder := dialLock(t, addrs[0])
	g, err := holder.Lock(context.Background(), "k", lockclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		lc := dialLock(t, addrs[i%2])
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
		for try := 0; lockInfoWaiters(t, addrs[0], "k") != i+1; try++ {
			if try == 500 {
				t.Fatalf("waiter %d never queued at the home", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	holder.Unlock(context.Background(), g)
	wg.Wait()
	if fmt.Sprint(order) != "[0 1 2 3 4 5]" {
		t.Fatalf("granted in order %v", order)
	}
}

// counterUnderLock has workers on the given proxies increment a plain
// memcached counter (get, then set) under one lock for d; it fails the test
// if an update was lost, and returns how many were made.
func counterUnderLock(t *testing.T, addrs []string, workers int, d time.Duration) int64 {
	t.Helper()
	mc := memcache.New(addrs[0])
	if err := mc.Set(&memcache.Item{Key: "counter", Value: []byte("0")}); err != nil {
		t.Fatal(err)
	}
	var done atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			addr := addrs[w%len(addrs)]
			lc := dialLock(t, addr)
			cache := memcache.New(addr)
			for time.Now().Before(stop) {
				g, err := lc.Lock(context.Background(), "counter-lock", lockclient.Options{TTL: 10 * time.Second, Wait: 10 * time.Second})
				if err != nil {
					t.Error(err)
					return
				}
				it, err := cache.Get("counter")
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(string(it.Value))
				cache.Set(&memcache.Item{Key: "counter", Value: []byte(strconv.Itoa(n + 1))})
				done.Add(1)
				if _, err := lc.Unlock(context.Background(), g); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	it, err := mc.Get("counter")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(it.Value); got != strconv.FormatInt(done.Load(), 10) {
		t.Fatalf("counter %s after %d locked increments: updates were lost", got, done.Load())
	}
	return done.Load()
}

func TestLockMutualExclusionFourProxies(t *testing.T) {
	c := startCluster(t, 3)
	addrs, srvs := proxies(t, 4, proxy.Config{Servers: c.servers(t), LockReplicas: 3})
	n := counterUnderLock(t, addrs, 8, 2*time.Second)
	var forwarded uint64
	for _, s := range srvs {
		forwarded += s.Stats().Locks.ForwardedIn
	}
	t.Logf("%d increments through four proxies, three replicas, none lost; %d requests forwarded to the home", n, forwarded)
	if forwarded == 0 {
		t.Error("no request was forwarded to the name's home")
	}
}

// A proxy that other proxies cannot reach (its advertised address is
// wrong) costs speed, not safety: its peers serve the names themselves.
// (Each has an address of its own: of two entries at one address, only
// the one renewed last is anybody's home.)
func TestLockPeersUnreachable(t *testing.T) {
	c := startCluster(t, 1)
	a1, s1 := startProxy(t, proxy.Config{Servers: c.servers(t), Advertise: testmc.FreeAddr(t)})
	a2, s2 := startProxy(t, proxy.Config{Servers: c.servers(t), Advertise: testmc.FreeAddr(t)})
	waitStat(t, a1, "proxy_lock_proxies", "2")
	n := counterUnderLock(t, []string{a1, a2}, 4, time.Second)
	failed := s1.Stats().Locks.ForwardFailed + s2.Stats().Locks.ForwardFailed
	if failed == 0 {
		t.Fatal("no forward failed: the unreachable homes were never tried")
	}
	t.Logf("%d increments with every home unreachable (%d forwards fell back), none lost", n, failed)
}

// A proxy listening on a wildcard address, without --advertise, takes
// forwarded lock commands at its host's address on the route to the lock
// servers: here, loopback, where a second proxy forwards to it.
func TestLockWildcardListenerAdvertisesItsRoute(t *testing.T) {
	c := startCluster(t, 1)
	srv, err := proxy.New(proxy.Config{Servers: c.servers(t), LockFresh: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	want := net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	other, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	waitStat(t, other, "proxy_lock_proxies", "2")
	waitStat(t, want, "proxy_lock_proxies", "2") // both place names alike
	name := ""
	for i := 0; i < 1000 && name == ""; i++ {
		if n := fmt.Sprintf("w-%d", i); srv.LockHome(n) == want {
			name = n
		}
	}
	if name == "" {
		homes := map[string]int{}
		for i := 0; i < 1000; i++ {
			homes[srv.LockHome(fmt.Sprintf("w-%d", i))]++
		}
		t.Fatalf("no name is homed at %s (homes: %v)", want, homes)
	}
	cl := testmc.Dial(t, other)
	fence := strings.Fields(cl.RoundTrip("lock " + name + " 30 0"))[1]
	if got := cl.RoundTrip("unlock " + name + " " + fence); got != "UNLOCKED 0" {
		t.Fatalf("unlock: %q", got)
	}
	if srv.Stats().Locks.ForwardedIn == 0 {
		t.Error("no lock command reached the wildcard proxy from the other")
	}
}

// When a name's home proxy goes away, waiters queued there from other
// proxies carry on: their proxies serve the name themselves, then agree on
// a new home.
func TestLockHomeProxyGoes(t *testing.T) {
	c := startCluster(t, 1)
	addrs, srvs := proxies(t, 3, proxy.Config{Servers: c.servers(t), Timeout: 300 * time.Millisecond})
	home := srvs[0].LockHome("k")
	var others []string
	var homeSrv *proxy.Server
	for i, a := range addrs {
		if a == home {
			homeSrv = srvs[i]
		} else {
			others = append(others, a)
		}
	}
	if homeSrv == nil {
		t.Fatalf("home %q is none of %v", home, addrs)
	}
	holder := dialLock(t, others[0])
	g, err := holder.Lock(context.Background(), "k", lockclient.Options{TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	waiter := dialLock(t, others[1])
	go func() {
		g, err := waiter.Lock(context.Background(), "k", lockclient.Options{Wait: 20 * time.Second})
		if err == nil {
			_, err = waiter.Unlock(context.Background(), g)
		}
		got <- err
	}()
	for try := 0; lockInfoWaiters(t, others[0], "k") != 1; try++ {
		if try == 500 {
			t.Fatal("the waiter never queued at the home")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	homeSrv.Shutdown(ctx)
	cancel()
	if _, err := holder.Unlock(context.Background(), g); err != nil {
		t.Fatalf("unlock after the home went: %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the waiter queued at the home that went: %v", err)
	}
}

// A proxy killed (kill -9) while its client waits at a name's home, and one
// killed just as the home handed the lock to its client: the first's
// waiter leaves the home's queue; the second's grant, a connection lock of
// a client gone with its proxy, is released as soon as the home finds the
// proxy gone (its address refuses connections), not at the end of its
// 30 s ttl: the next waiter gets the lock.
func TestLockPeerKilled(t *testing.T) {
	bin := buildCLI(t)
	c := startCluster(t, 1)
	home, homeSrv := startProxy(t, proxy.Config{Servers: c.servers(t), Timeout: time.Second})
	// setUp starts a peer proxy, a holder at the home of a name homed
	// there (among the two), and a waiter for it through the peer.
	setUp := func() (signal func(syscall.Signal), name string, holder *testmc.Conn, fence string, waiter *testmc.Conn) {
		listen := testmc.FreeAddr(t)
		cmd := startCLIProxy(t, bin, listen, "--servers", c.addrs()[0], "--timeout", "1s")
		t.Cleanup(func() { cmd.Process.Kill() }) // before its SIGTERM and wait: it may be stopped
		waitStat(t, home, "proxy_lock_proxies", "2")
		waitStat(t, listen, "proxy_lock_proxies", "2")
		name = homedAt(homeSrv, fmt.Sprintf("k%d", len(t.Name())), home)
		holder = testmc.Dial(t, home)
		got := holder.RoundTrip("lock " + name + " 30 0")
		if !strings.HasPrefix(got, "LOCKED ") {
			t.Fatalf("lock %s: %q", name, got)
		}
		waiter = testmc.Dial(t, listen) // kept by the caller: a connection collected would close, and its wait end
		waiter.Send("lock " + name + " 30 20000\r\n")
		waitQueued(t, home, name, 1)
		return func(sig syscall.Signal) { cmd.Process.Signal(sig) }, name, holder, strings.Fields(got)[1], waiter
	}

	// A waiter queued through a proxy that is then killed.
	signal, name, holder, fence, waiter := setUp()
	signal(syscall.SIGKILL)
	waitQueued(t, home, name, 0)
	if got := holder.RoundTrip("unlock " + name + " " + fence); got != "UNLOCKED 0" {
		t.Fatalf("unlock with the dead proxy's waiter gone: %q", got)
	}
	runtime.KeepAlive(waiter)

	// A grant handed to a proxy's client as the proxy dies: it is stopped,
	// the home writes LOCKED into its socket, then it is killed.
	signal, name, holder, fence, waiter = setUp()
	signal(syscall.SIGSTOP)
	if got := holder.RoundTrip("unlock " + name + " " + fence); got != "UNLOCKED 0" {
		t.Fatalf("unlock: %q", got)
	}
	signal(syscall.SIGKILL)
	// NOT_LOCKED here, after 10 s, when the dead proxy's client kept it.
	if got := testmc.Dial(t, home).RoundTrip("lock " + name + " 30 10000"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock after the proxy holding it for its client died: %q", got)
	}
	runtime.KeepAlive(waiter)
}

// waitQueued waits until the home of name has n waiters.
// homedAt returns the first lock name prefix-0, prefix-1, ... whose home,
// as srv sees the proxies, is the proxy at addr.
func homedAt(srv *proxy.Server, prefix, addr string) string {
	for i := 0; ; i++ {
		if n := fmt.Sprintf("%s-%d", prefix, i); srv.LockHome(n) == addr {
			return n
		}
	}
}

func waitQueued(t *testing.T, home, name string, n int) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); lockInfoWaiters(t, home, name) != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiters for %s at its home: want %d", name, n)
		}
	}
}

// A client waiting for a lock through a proxy that is not the name's home
// hangs up: its proxy notices (it watches the client from the moment it
// forwards the lock) and tells the home, whose queue lets the waiter go.
func TestLockForwardedWaiterHangsUp(t *testing.T) {
	c := startCluster(t, 1)
	addrs, _ := proxies(t, 2, proxy.Config{Servers: c.servers(t)})
	holder := testmc.Dial(t, addrs[0])
	if got := holder.RoundTrip("lock k 30"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	var waiters []*testmc.Conn
	for _, a := range addrs { // one of the two is not k's home
		w := testmc.Dial(t, a)
		w.Send("lock k 30 60000\r\n")
		waiters = append(waiters, w)
	}
	waitUntil := func(what string, n int) {
		t.Helper()
		for i := 0; i < 500 && lockInfoWaiters(t, addrs[0], "k") != n; i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if got := lockInfoWaiters(t, addrs[0], "k"); got != n {
			t.Fatalf("%s: %d waiters at the home, want %d", what, got, n)
		}
	}
	waitUntil("both waiting", 2)
	for _, w := range waiters {
		w.NetConn.Close()
	}
	waitUntil("both hung up", 0)
}
