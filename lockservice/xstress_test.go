package lockservice

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/stresstest"
	"github.com/memcachedlock/memcachedlock/ring"
)

// TestCrossStress is a randomized model test of locks across proxies: three
// or four Services, each behind a loopback listener that serves peer
// connections as the proxy does (xproxy_test.go), share fake lock servers
// (one, or three with three replicas), and six to ten clients take one or
// two lock names through them: leases, reentrant leases (a level taken
// again through any proxy) and connection locks, each through a random
// proxy, so that requests are forwarded to the names' homes, held a few
// milliseconds (now and then past their ttl), extended and released
// through the same proxy or another, an unlock sometimes sent twice as if
// its reply were lost, a wait sometimes given up by its client hanging
// up (an owner that never read its grant asks again elsewhere). Faults
// come at random: a peer connection cut from either side, a lock server
// slow or down for a while (never losing what it holds: a flush or a
// restart is the marker's business, not modelled here), a proxy shut
// down or crashed and a new one (a new instance) started on its address,
// a proxy leaving the registry for a while, the registry read again at
// any moment: so names change homes, and proxies serve names themselves.
//
// The checker reports an overlap: a grant made while another grant is
// held that its client has not begun to release and whose ttl, counted
// from when its lock was called, still runs (a grant whose reply nobody
// read, because the client hung up or its proxy crashed, counts as held
// unless the proxy releases it). It reports NOT_OWNER or NOT_FOUND to a
// client whose grant still runs; a reentrant lock's levels other than
// those taken; a lock refused at the end of a wait whose last freeLimit
// the name stood free in memcached with no fault under way; and
// waiters, forwarded requests or goroutines left once everything has
// stopped.
//
// Each seed runs for a few seconds. LOCKSERVICE_STRESS=5m runs seeds for
// that long, two at a time; LOCKSERVICE_STRESS_SEED=n runs seed n alone;
// LOCKSERVICE_STRESS_TRACE=1 prints every event. A seed picks the run's
// shape and every client's and fault's choices; the goroutines' schedule
// is the machine's, so a seed that failed once may pass the next time.
func TestCrossStress(t *testing.T) {
	stresstest.Run(t, "LOCKSERVICE_STRESS", 2, func(seed uint64, _, alone bool) stresstest.Outcome {
		r := runCross(seed, 2500*time.Millisecond, alone)
		r.mu.Lock()
		notes := slices.Clone(r.notes)
		r.mu.Unlock()
		o := stresstest.Outcome{Grants: r.grants, Notes: notes, Summary: r.String()}
		if r.failed() {
			o.Failure = o.Summary
		}
		return o
	})
}

var traceCross = os.Getenv("LOCKSERVICE_STRESS_TRACE") != ""

// freeLimit is how long a name may stand free, with no fault under way,
// at the end of a wait that is refused.
const freeLimit = time.Second

// crossRun is one seed's run.
type crossRun struct {
	seed   uint64
	shape  string
	cfg    Config
	fakes  map[string]*fakeMC
	names  []string
	stopCh chan struct{}

	mu        sync.Mutex
	proxies   []*xProxy // the slots: each is replaced in place
	instances int
	events    []string
	holding   map[int]*xGrant // by grant id: held, no release begun
	nextID    int
	grants    int
	faulty    int                  // lock server faults and proxy replacements under way
	freeSince map[string]time.Time // since when the name has been free, with no fault: zero if not
	highest   map[string]uint64
	overlaps  []string
	anomalies []string
	notes     []string
	replies   map[string]int
}

// xProxy is the proxy in one slot, and its clients' connections.
type xProxy struct {
	*peerProxy
	name  string
	gone  bool // shut down or crashed
	conns map[*xConn]bool
}

// xConn is a client's connection to a proxy: a Session, and the context
// the proxy gives its commands, cancelled when the connection ends.
type xConn struct {
	p      *xProxy
	sess   *Session
	ctx    context.Context
	cancel context.CancelFunc
	dead   bool // the proxy went away (r.mu)
	crash  bool // ... without a word: its session is gone, unclosed
}

// xGrant is a grant made to a client, whether it read the reply or not.
type xGrant struct {
	id     int
	client int
	name   string
	fence  uint64
	conn   bool // a connection's lock, not a lease
	via    string
	c      *xConn
	ends   time.Time // its ttl counted from when its lock (or extend) was called
	begun  bool      // a release has begun
	// levels counts a reentrant lock's levels taken, as the client knows
	// them; unsure is set once a take or release of a level failed
	// without saying whether it happened.
	owner     string
	reentrant bool
	levels    int
	unsure    bool
}

// newProxy starts a proxy with a new instance at addr; r.mu must not be
// held.
func (r *crossRun) newProxy(addr string, fresh bool) (*xProxy, error) {
	r.mu.Lock()
	r.instances++
	cfg := r.cfg
	cfg.Instance = fmt.Sprintf("p%d", r.instances)
	r.mu.Unlock()
	cfg.Fresh = fresh
	svc, err := New(cfg, func(addr string) Conn { return r.fakes[addr] })
	if err != nil {
		return nil, err
	}
	p, err := startPeerProxy(svc, addr)
	if err != nil {
		svc.Close()
		return nil, err
	}
	r.logf("%s starts at %s", cfg.Instance, p.addr)
	return &xProxy{peerProxy: p, name: cfg.Instance, conns: make(map[*xConn]bool)}, nil
}

// connect opens a client connection to a proxy in service, picked at
// random.
func (r *crossRun) connect(rnd *rand.Rand) *xConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		p := r.proxies[rnd.IntN(len(r.proxies))]
		if p.gone {
			continue // being replaced: r.mu is released by then, so not for long
		}
		ctx, cancel := context.WithCancel(context.Background())
		c := &xConn{p: p, sess: p.svc.NewSession(), ctx: ctx, cancel: cancel}
		p.conns[c] = true
		return c
	}
}

// close ends a client connection: the proxy releases its connection's
// locks (unless it crashed, taking them with it).
func (r *crossRun) close(c *xConn) {
	r.mu.Lock()
	delete(c.p.conns, c)
	crashed := c.crash
	r.mu.Unlock()
	c.cancel()
	if !crashed {
		ctx, cancel := context.WithTimeout(context.Background(), 4*r.cfg.Timeout)
		c.sess.Close(ctx)
		cancel()
	}
}

// replace stops the proxy in slot i, shutting it down or crashing it,
// and starts a new one on its address. The connection locks of its
// clients end as it stops: their releases begin.
func (r *crossRun) replace(i int, crash bool) {
	r.mu.Lock()
	old := r.proxies[i]
	old.gone = true
	for c := range old.conns {
		c.dead, c.crash = true, crash
	}
	for _, h := range r.holding {
		if h.conn && h.c != nil && h.c.p == old {
			r.releasingLocked(h)
		}
	}
	conns := slices.Collect(maps.Keys(old.conns))
	r.mu.Unlock()
	how := "shuts down"
	if crash {
		how = "crashes"
	}
	r.fault(true, "%s %s", old.name, how)
	if crash {
		for _, c := range conns {
			c.cancel()
		}
		old.crash()
	} else {
		old.shutdown(func() {
			for _, c := range conns {
				c.cancel() // the proxy stops reading: the command on its way ends
			}
			// Each client's connection ends (its session closed, its locks
			// released) once its command on the way has: wait for that, a
			// while at most, as Shutdown waits for its connections.
			for i := 0; i < 200; i++ {
				r.mu.Lock()
				left := len(old.conns)
				r.mu.Unlock()
				if left == 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	r.count(old)
	p, err := r.newProxy(old.addr, false)
	if err != nil { // the slot stays empty: the others serve
		r.anomaly("no new proxy at %s: %v", old.addr, err)
		r.faultEnds("%s not replaced", old.name)
		return
	}
	r.mu.Lock()
	r.proxies[i] = p
	r.mu.Unlock()
	r.faultEnds("%s replaced by %s", old.name, p.name)
}

// count adds a stopped proxy's counters to the run's, to show which paths
// the run took.
func (r *crossRun) count(p *xProxy) {
	st := p.svc.Stats()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.replies["forwarded"] += int(st.ForwardedOut)
	r.replies["forward failed"] += int(st.ForwardFailed)
	r.replies["handoffs"] += int(st.Handoffs)
	r.replies["early handoffs"] += int(st.EarlyHandoffs)
}

// runCross runs one seed for d, then lets the clients' last requests end
// and checks what is left.
func runCross(seed uint64, d time.Duration, checkGoroutines bool) *crossRun {
	rnd := rand.New(rand.NewPCG(seed, 1))
	baseline := runtime.NumGoroutine()
	r := &crossRun{seed: seed, holding: make(map[int]*xGrant), replies: make(map[string]int), highest: make(map[string]uint64),
		freeSince: make(map[string]time.Time), stopCh: make(chan struct{})}
	servers := []string{"a:1"}
	replicas := 1
	if rnd.IntN(2) == 0 {
		servers, replicas = []string{"a:1", "b:1", "c:1"}, 3
	}
	r.fakes = fakes(servers...)
	parsed, _ := ring.ParseServers(servers)
	r.cfg = Config{
		Servers: parsed, Distribution: ring.Ketama, Hash: "md5", Replicas: replicas,
		Prefix: "__memcachedlock:", MaxTTL: 3, MaxWait: time.Minute,
		Poll:    time.Duration(5+rnd.IntN(50)) * time.Millisecond,
		Timeout: time.Duration(100+rnd.IntN(200)) * time.Millisecond, EarlyHandoff: rnd.IntN(5) > 0,
		Logger: slog.New(logCounter{r}),
	}
	r.names = []string{"k"}
	if rnd.IntN(3) == 0 {
		r.names = append(r.names, "j")
	}
	nProxies, nClients := 3+rnd.IntN(2), 6+rnd.IntN(5)
	r.shape = fmt.Sprintf("%d proxies, %d clients, names %v, %d lock server(s), poll %s, timeout %s, early handoff %v",
		nProxies, nClients, r.names, len(servers), r.cfg.Poll, r.cfg.Timeout, r.cfg.EarlyHandoff)
	r.logf("seed %d: %s", seed, r.shape)
	for len(r.proxies) < nProxies {
		p, err := r.newProxy("127.0.0.1:0", true)
		if err != nil {
			r.anomaly("no proxy: %v", err)
			for _, p := range r.proxies {
				p.shutdown(nil)
			}
			return r
		}
		r.proxies = append(r.proxies, p)
	}
	for _, p := range r.proxies { // every proxy knows every other one from the start
		p.svc.refreshMembers()
	}

	var wg sync.WaitGroup
	for i := 0; i < nClients; i++ {
		wg.Add(1)
		go func(i int, rnd *rand.Rand) {
			defer wg.Done()
			r.client(i, rnd)
		}(i, rand.New(rand.NewPCG(seed, uint64(10+i))))
	}
	var bg sync.WaitGroup
	bg.Add(2)
	go func() {
		defer bg.Done()
		r.faults(rnd)
	}()
	// The sampler runs until the clients' last requests have ended: they
	// are checked against what it saw (refused).
	sampled := make(chan struct{})
	go func() {
		defer bg.Done()
		r.sample(sampled)
	}()
	time.Sleep(d)
	close(r.stopCh)
	wg.Wait()
	close(sampled)
	bg.Wait()
	r.checkIdle()
	for _, p := range r.proxies {
		p.shutdown(nil)
		r.count(p)
	}
	if checkGoroutines && !r.failed() {
		r.checkGoroutines(baseline)
	}
	return r
}

// faults injects faults until the run stops.
func (r *crossRun) faults(rnd *rand.Rand) {
	var down sync.WaitGroup // lock servers slow or down, set right when they end
	defer down.Wait()
	for {
		select {
		case <-r.stopCh:
			return
		case <-time.After(time.Duration(100+rnd.IntN(500)) * time.Millisecond):
		}
		r.mu.Lock()
		i := rnd.IntN(len(r.proxies))
		p := r.proxies[i]
		r.mu.Unlock()
		switch k := rnd.IntN(20); {
		case k < 6: // a peer connection cut
			out := rnd.IntN(2) == 0
			if p.cutLink(out, rnd.IntN) {
				side := "as home"
				if out {
					side = "to a home"
				}
				r.fault(false, "%s: a peer connection %s cut", p.name, side)
			}
		case k < 11: // a lock server slow, or down, for a while
			addrs := slices.Sorted(maps.Keys(r.fakes))
			addr := addrs[rnd.IntN(len(addrs))]
			f := r.fakes[addr]
			delay := time.Duration(rnd.IntN(int(3 * r.cfg.Timeout)))
			lasts := time.Duration(200+rnd.IntN(1300)) * time.Millisecond
			if k < 9 {
				r.fault(true, "lock server %s slow (%s) for %s", addr, delay.Round(time.Millisecond), lasts)
				f.set(false, delay)
			} else {
				r.fault(true, "lock server %s down for %s", addr, lasts)
				f.set(true, 0)
			}
			down.Add(1)
			go func() {
				defer down.Done()
				select {
				case <-time.After(lasts):
				case <-r.stopCh:
				}
				f.set(false, 0)
				// Its writes on their way land within a timeout: wait
				// for those before counting the name free again.
				time.Sleep(2 * r.cfg.Timeout)
				r.faultEnds("lock server %s back", addr)
			}()
		case k < 13: // a proxy shut down, or crashed, and replaced
			r.replace(i, rnd.IntN(2) == 0)
		case k < 15: // a proxy leaves the registry for a while: homes move
			lasts := time.Duration(200+rnd.IntN(1500)) * time.Millisecond
			r.fault(false, "%s leaves the registry for %s", p.name, lasts)
			p.svc.Advertise("")
			select {
			case <-time.After(lasts):
			case <-r.stopCh:
			}
			p.svc.Advertise(p.addr)
			r.logf("%s back in the registry", p.name)
		default: // the registry read now rather than at the next second
			p.svc.refreshMembers()
			r.logf("%s reads the registry", p.name)
		}
	}
}

// homeOf names the instance s takes for name's home.
func homeOf(s *Service, name string) string {
	m, _ := s.members.home(name)
	return m.instance
}

// checkIdle looks, once every client has finished, for state left
// behind: a waiter still counted, a request forwarded and never
// answered. (lockext's own stress test looks into its Managers' states.) Writes on their way end within a
// few timeouts: it looks until then.
func (r *crossRun) checkIdle() {
	var left []string
	for try := 0; try < 50; try++ {
		left = left[:0]
		r.mu.Lock()
		proxies := slices.Clone(r.proxies)
		r.mu.Unlock()
		for _, p := range proxies {
			if n := p.svc.manager.Stats().Waiters; n > 0 {
				left = append(left, fmt.Sprintf("%s: %d waiters counted", p.name, n))
			}
			p.svc.peers.mu.Lock()
			for addr, l := range p.svc.peers.links {
				l.mu.Lock()
				if len(l.pending) > 0 {
					left = append(left, fmt.Sprintf("%s: %d requests to %s unanswered", p.name, len(l.pending), addr))
				}
				l.mu.Unlock()
			}
			p.svc.peers.mu.Unlock()
		}
		if len(left) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range left {
		r.anomaly("%s", s)
	}
}

// checkGoroutines looks, once every proxy has stopped, for goroutines of
// the lock service left running. Those that end by themselves end within
// a few timeouts (a release of a gone proxy's locks tries for longer, but
// stops when its service closes).
func (r *crossRun) checkGoroutines(baseline int) {
	var stacks string
	for try := 0; try < 100; try++ {
		if runtime.NumGoroutine() <= baseline {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	stacks = string(buf[:runtime.Stack(buf, true)])
	var ours []string
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "memcachedlock/lockservice.") || strings.Contains(g, "memcachedlock/lockext.") {
			if !strings.Contains(g, "TestCrossStress") && !strings.Contains(g, "runCross") {
				ours = append(ours, g)
			}
		}
	}
	if len(ours) > 0 {
		r.anomaly("%d goroutines left (baseline %d), %d of the lock service:\n%s", runtime.NumGoroutine(), baseline, len(ours),
			strings.Join(ours, "\n\n"))
	}
}
