package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// lockRig is three proxies in front of lock servers (which are also the
// cache servers), with nine clients taking one lock through them, and the
// faults the tests inject. Faults run on the test's goroutine.
type lockRig struct {
	t       *testing.T
	lockers cluster
	cfg     proxy.Config
	proxies []*proxy.Server // by slot
	load    *lockLoad
	hold    time.Duration // how long a lock server that lost its state takes no writes, and a margin
}

const rigClients = 9

func newLockRig(t *testing.T, lockers, replicas int, writeFirst bool) *lockRig {
	c := startCluster(t, lockers)
	cfg := proxy.Config{Servers: c.servers(t), Timeout: 300 * time.Millisecond, LockTTL: 2, LockTTLMax: 3,
		LockReplicas: replicas, LockNoEarlyHandoff: writeFirst}
	rig := &lockRig{t: t, lockers: c, cfg: cfg, hold: time.Duration(cfg.LockTTLMax+2) * time.Second,
		load: newLockLoad("reg", 2*time.Second, 2*time.Second, make([]string, 3))}
	for slot := range 3 {
		addr, srv := startProxy(t, rig.proxyConfig(slot))
		rig.load.setProxy(slot, addr)
		rig.proxies = append(rig.proxies, srv)
	}
	return rig
}

// proxyConfig is the configuration of the proxy in a slot: its warnings
// go to the load's stories.
func (r *lockRig) proxyConfig(slot int) proxy.Config {
	cfg := r.cfg
	cfg.Logger = r.load.logger(fmt.Sprint(slot))
	return cfg
}

// quiet waits until every proxy has every lock server ready again, so that
// with one fault at a time the next never finds another server still
// recovering, however slow the machine made this one's recovery. 30 s
// bounds a hang.
func (r *lockRig) quiet() {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ready := true
		for i := range r.proxies {
			for _, l := range strings.Split(ask(r.t, r.load.proxy(i), "stats\r\n", "END"), "\r\n") {
				f := strings.Fields(l)
				if len(f) == 3 && strings.Contains(f[1], "lock_server:") && strings.HasSuffix(f[1], ":state") && f[2] != "ready" {
					ready = false
				}
			}
		}
		if ready {
			return
		}
	}
}

// Faults. Each returns what it did, for the report.

func (r *lockRig) pause(i int, d time.Duration) string {
	r.load.fault(fmt.Sprintf("pause locker %d for %s", i, d))
	r.lockers[i].Pause()
	time.Sleep(d)
	r.lockers[i].Resume()
	return "pause"
}

func (r *lockRig) kill(i int, down time.Duration) string {
	r.load.fault(fmt.Sprintf("kill -9 locker %d, restart empty after %s", i, down))
	r.lockers[i].Stop()
	time.Sleep(down)
	r.lockers[i].Restart(r.t)
	return "kill"
}

func (r *lockRig) flush(i int, delay int) string {
	cmd := "flush_all\r\n"
	if delay > 0 {
		cmd = fmt.Sprintf("flush_all %d\r\n", delay)
	}
	r.load.fault(fmt.Sprintf("%s to locker %d", strings.TrimSpace(cmd), i))
	if got := ask(r.t, r.lockers[i].Addr, cmd, "OK", "ERROR"); got != "OK\r\n" {
		r.t.Fatalf("%s: %q", cmd, got)
	}
	return "flush"
}

// replaceProxy shuts a proxy down and starts a new one, as production
// starts it (no trust in lock servers without a marker), on a new port.
func (r *lockRig) replaceProxy(slot int) string {
	r.load.fault(fmt.Sprintf("proxy %d replaced", slot))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	r.proxies[slot].Shutdown(ctx)
	cancel()
	addr, srv := startProxyStrict(r.t, r.proxyConfig(slot))
	r.proxies[slot] = srv
	r.load.setProxy(slot, addr)
	return "proxy"
}

func (r *lockRig) sighup(slot int) string {
	r.load.fault(fmt.Sprintf("proxy %d reloaded", slot))
	if err := r.proxies[slot].Reload(r.cfg.Servers, ring.Ketama, "md5"); err != nil {
		r.t.Fatal(err)
	}
	return "sighup"
}

// randomFault injects one fault and returns how long to wait before the
// next. With oneAtATime, the wait lets a lock server that lost its state
// recover first, so that at most one is ever out.
func (r *lockRig) randomFault(rng *rand.Rand, oneAtATime bool) time.Duration {
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo)) * time.Millisecond }
	i := rng.IntN(len(r.lockers))
	settle := ms(200, 800)
	lost := func(extra time.Duration) {
		if oneAtATime {
			settle = r.hold + extra
		}
	}
	switch rng.IntN(7) {
	case 0, 1:
		r.pause(i, ms(100, 1500))
	case 2:
		r.kill(i, ms(0, 800))
		lost(0)
	case 3:
		r.flush(i, 0)
		lost(0)
	case 4:
		d := 1 + rng.IntN(2)
		r.flush(i, d)
		lost(time.Duration(d) * time.Second)
	case 5:
		r.replaceProxy(rng.IntN(len(r.proxies)))
	case 6:
		r.sighup(rng.IntN(len(r.proxies)))
	}
	return settle
}

// Randomised faults under load: three proxies, nine clients, lock servers
// paused, killed and restarted empty, flushed at once and later, proxies
// replaced and reloaded. No overlap and no stale write, ever; with three
// replicas and one lock server out at a time, no client told its lock
// servers could not answer either. The proxies hand over early (their
// default), and once more with every handoff waiting for its write
// (--lock-early-handoff=false).
func TestLockChaos(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name              string
		lockers, replicas int
		writeFirst        bool
	}{
		{"replicas1", 2, 1, false},
		{"replicas3", 3, 3, false},
		{"replicas1-write-first", 2, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rig := newLockRig(t, tc.lockers, tc.replicas, tc.writeFirst)
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 0))
			start := time.Now()
			rig.load.start(rigClients)
			for time.Sleep(500 * time.Millisecond); time.Since(start) < soakFor(12*time.Second); {
				time.Sleep(rig.randomFault(rng, tc.replicas == 3))
				if tc.replicas == 3 {
					rig.quiet()
				}
			}
			r := rig.load.check(t, start, rig.load.finish())
			if tc.replicas == 3 {
				majorityAnswered(t, r)
			}
		})
	}
}

// Each fault in turn under load, on the lock server that holds the lock
// (with three replicas: one of its three), to measure what clients see.
// With three replicas they see nothing of it (majorityAnswered); the gaps
// without a grant are logged for the README's fault table.
func TestLockFaultGaps(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 3} {
		t.Run(fmt.Sprintf("replicas%d", replicas), func(t *testing.T) {
			t.Parallel()
			rig := newLockRig(t, 3, replicas, false)
			target := pickServer(t, rig.cfg.Servers, "reg")
			start := time.Now()
			rig.load.start(rigClients)
			time.Sleep(500 * time.Millisecond)
			type phase struct {
				what     string
				from, to time.Time
			}
			var phases []phase
			run := func(what string, fault func(), settle time.Duration) {
				from := time.Now()
				fault()
				time.Sleep(settle)
				if replicas == 3 {
					rig.quiet()
				}
				phases = append(phases, phase{what, from, time.Now()})
			}
			run("pause 1.5s", func() { rig.pause(target, 1500*time.Millisecond) }, time.Second)
			run("kill -9, down 1s, restart empty", func() { rig.kill(target, time.Second) }, rig.hold)
			run("kill -9, restart empty at once", func() { rig.kill(target, 0) }, rig.hold)
			run("flush_all", func() { rig.flush(target, 0) }, rig.hold)
			run("flush_all 2 (delayed)", func() { rig.flush(target, 2) }, rig.hold+2*time.Second)
			run("proxy replaced", func() { rig.replaceProxy(0) }, time.Second)
			r := rig.load.check(t, start, rig.load.finish())
			for _, p := range phases {
				gap := rig.load.longestGap(p.from, p.to)
				t.Logf("replicas %d, %-32s longest gap without a grant %s", replicas, p.what+":", gap.Round(time.Millisecond))
			}
			if replicas == 3 {
				majorityAnswered(t, r)
			}
		})
	}
}

// majorityAnswered fails the test if a client was told a lock server was
// recovering: with three replicas and one lock server out at a time, the
// other two are a majority, and a server's lost state must not reach
// clients. (Timeouts, "unavailable", are the machine's when it is loaded
// enough; so is how long a fault leaves the lock without a grant, which is
// logged, and the README's fault table reports.)
func majorityAnswered(t *testing.T, r loadReport) {
	t.Helper()
	for kind, n := range r.replies {
		if kind == "SERVER_ERROR lock server recovering" {
			t.Errorf("%d x %q with three replicas and one lock server out at a time", n, kind)
		}
	}
}

// longestGap is the longest time without a grant between from and to.
func (l *lockLoad) longestGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	last, longest := from, time.Duration(0)
	for _, g := range l.grants { // in the order they were recorded: near enough sorted
		if g.Before(from) || g.After(to) {
			continue
		}
		longest = max(longest, g.Sub(last))
		last = g
	}
	return max(longest, to.Sub(last))
}

// Three replicas: a holder keeps its lock (extending it) while two of the
// three lock servers restart empty within one ttl. Nobody else gets it.
func TestLockReplicasTwoRestartsWithinTTL(t *testing.T) {
	t.Parallel()
	rig := newLockRig(t, 3, 3, false)
	holder := newKeeper(t, rig.load.proxy(0), "kept")
	rig.lockers[0].Restart(t)
	time.Sleep(500 * time.Millisecond)
	rig.lockers[1].Restart(t)
	holder.intruders(t, time.Now().Add(rig.hold), rig.load.proxy(1), rig.load.proxy(2))
}

// Three replicas: a holder keeps its lock while two lock servers restart
// empty one after the other, the second once the first holds the lock
// again (the holder's extensions copy it back when the server has
// recovered). Its lock must survive both, and nobody else may get it.
func TestLockReplicasRestartsOneAfterAnother(t *testing.T) {
	t.Parallel()
	rig := newLockRig(t, 3, 3, false)
	holder := newKeeper(t, rig.load.proxy(0), "kept")
	for i := range 2 {
		rig.lockers[i].Restart(t)
		// Recovered (a new marker) and holding the lock again.
		for markerGone(t, rig.lockers[i].Addr) || !strings.HasSuffix(itemValue(t, rig.lockers[i].Addr, markerKey+"kept"), " keeper") {
			holder.intruders(t, time.Now().Add(200*time.Millisecond), rig.load.proxy(1), rig.load.proxy(2))
			if holder.stopped() {
				break
			}
		}
	}
	if lost := holder.stop(); lost != "" {
		t.Errorf("the holder lost its lock while one lock server of three was out at a time: %s", lost)
	}
}

// itemValue reads an item straight from memcached; "" if absent.
func itemValue(t *testing.T, addr, key string) string {
	c := testmc.Dial(t, addr)
	defer c.NetConn.Close()
	if c.RoundTrip("mg "+key+" v") == "EN" {
		return ""
	}
	return c.Line()
}

// keeper holds a lock and extends it every 500 ms, as `memcachedlock lock`
// keeps a lease alive.
type keeper struct {
	name  string
	mu    chan struct{} // a one-slot mutex that the extender and intruders share
	until time.Time     // the grant's end as the holder knows it
	lost  string
	done  chan struct{}
	quit  chan struct{}
}

func newKeeper(t *testing.T, addr, name string) *keeper {
	conn := testmc.Dial(t, addr)
	sent := time.Now()
	got := conn.RoundTrip("lock " + name + " 2 0 keeper")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatal(got)
	}
	fence := strings.Fields(got)[1]
	k := &keeper{name: name, mu: make(chan struct{}, 1), until: sent.Add(2 * time.Second),
		done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(k.done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-k.quit:
				return
			case <-tick.C:
			}
			sent := time.Now()
			conn.NetConn.SetDeadline(sent.Add(10 * time.Second)) // bounds a hang only
			_, err := conn.NetConn.Write([]byte("extend " + name + " " + fence + " 2\r\n"))
			got := ""
			if err == nil {
				got, err = conn.Reader.ReadString('\n')
			}
			k.mu <- struct{}{}
			switch {
			case err == nil && strings.HasPrefix(got, "EXTENDED "):
				k.until = sent.Add(2 * time.Second)
			case err == nil && strings.HasPrefix(got, "SERVER_ERROR "):
				// Unavailable for now: the grant runs on, to be extended next time.
			case k.lost == "":
				k.lost = fmt.Sprintf("extend: %q %v", strings.TrimSpace(got), err)
			}
			<-k.mu
		}
	}()
	t.Cleanup(func() { k.stop() })
	return k
}

// stopped reports whether the keeper lost its lock, or let it run out.
func (k *keeper) stopped() bool {
	k.mu <- struct{}{}
	defer func() { <-k.mu }()
	return k.lost != "" || time.Now().After(k.until)
}

func (k *keeper) stop() string {
	select {
	case <-k.quit:
	default:
		close(k.quit)
	}
	<-k.done
	return k.lost
}

// intruders ask for the kept lock through each proxy in turn until the
// given time, and fail on a grant made while the keeper's grant ran.
func (k *keeper) intruders(t *testing.T, until time.Time, proxies ...string) {
	t.Helper()
	conns := make([]*testmc.Conn, len(proxies))
	for i, p := range proxies {
		conns[i] = testmc.Dial(t, p)
	}
	for i := 0; time.Now().Before(until); i++ {
		got := conns[i%len(conns)].RoundTrip("lock " + k.name + " 2 0 intruder")
		if strings.HasPrefix(got, "LOCKED ") {
			k.mu <- struct{}{}
			running := time.Now().Before(k.until)
			left, lost := time.Until(k.until), k.lost
			<-k.mu
			if running {
				t.Fatalf("%s granted to an intruder while the keeper's grant ran %s more (keeper: %q): %q",
					k.name, left.Round(time.Millisecond), lost, got)
			}
			conns[i%len(conns)].RoundTrip("unlock " + k.name + " " + strings.Fields(got)[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
