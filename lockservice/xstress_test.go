package lockservice

import (
	"context"
	"errors"
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

	"github.com/memcachedlock/memcachedlock/lockext"
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
	budget, workers := 5*time.Second, 1
	if v := os.Getenv("LOCKSERVICE_STRESS"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("LOCKSERVICE_STRESS=%q: %v", v, err)
		}
		budget, workers = d, 2
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("LOCKSERVICE_STRESS_SEED"); v != "" {
		if _, err := fmt.Sscan(v, &seed); err != nil {
			t.Fatalf("LOCKSERVICE_STRESS_SEED=%q: %v", v, err)
		}
		budget, workers = 0, 1
	}
	var mu sync.Mutex
	grants, seeds := 0, 0
	end := time.Now().Add(budget)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if t.Failed() || (seeds > 0 && !time.Now().Before(end)) {
					mu.Unlock()
					return
				}
				s := seed
				seed++
				seeds++
				mu.Unlock()
				r := runCross(s, 2500*time.Millisecond, workers == 1)
				mu.Lock()
				grants += r.grants
				r.mu.Lock()
				notes := slices.Clone(r.notes)
				r.mu.Unlock()
				for _, n := range notes {
					t.Logf("seed %d: %s", s, n)
				}
				if r.failed() {
					t.Errorf("seed %d (LOCKSERVICE_STRESS_SEED=%d to run it again): %s", s, s, r)
				} else if testing.Verbose() {
					t.Logf("seed %d: %s", s, r)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d seeds, %d grants", seeds, grants)
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

const keptCrossEvents = 40

func (r *crossRun) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logLocked(format, args...)
}

// logLocked notes an event; r.mu must be held, so that the events are in
// the order of their times.
func (r *crossRun) logLocked(format string, args ...any) {
	e := time.Now().Format("05.000000 ") + fmt.Sprintf(format, args...)
	if traceCross {
		fmt.Fprintf(os.Stderr, "%d %s\n", r.seed, e)
	}
	if len(r.events) == 4*keptCrossEvents {
		r.events = append(r.events[:0], r.events[3*keptCrossEvents:]...)
	}
	r.events = append(r.events, e)
}

// recent returns the last events; r.mu must be held.
func (r *crossRun) recent() string {
	return "\n\t" + strings.Join(r.events[max(len(r.events)-keptCrossEvents, 0):], "\n\t")
}

// failed reports whether the run found anything. A run's state is
// locked for reading too: the services it closed may still log (a gone
// proxy's locks released after the run).
func (r *crossRun) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.overlaps) > 0 || len(r.anomalies) > 0
}

func (r *crossRun) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.overlaps) > 0 || len(r.anomalies) > 0 {
		return fmt.Sprintf("%s: %d grants; overlaps:\n%s\nanomalies:\n%s",
			r.shape, r.grants, strings.Join(r.overlaps, "\n"), strings.Join(r.anomalies, "\n"))
	}
	return fmt.Sprintf("%s: %d proxies made, %d grants, replies %v", r.shape, r.instances, r.grants, r.replies)
}

func (r *crossRun) anomaly(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logLocked("ANOMALY %s", s)
	r.anomalies = append(r.anomalies, s+"; last events:"+r.recent())
}

func (r *crossRun) reply(kind string) {
	r.mu.Lock()
	r.replies[kind]++
	r.mu.Unlock()
}

// fault logs a fault, and counts it under way (see sample) if lasts is
// set; lasts ends it.
func (r *crossRun) fault(lasts bool, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logLocked("FAULT "+format, args...)
	if lasts {
		r.faulty++
	}
}

func (r *crossRun) faultEnds(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logLocked(format, args...)
	r.faulty--
}

// granted records a grant, now that its Lock call has returned, and
// checks it against every grant held on its name. The grant was made a
// moment before: it surely stands now only if nobody may have ended it
// meanwhile, which its ttl may have, and the home that granted it may
// have if its proxy is going away (check false).
func (r *crossRun) granted(g *xGrant, check bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.logLocked("client %d granted %s fence %d via %s (conn %v, ttl ends in %s)", g.client, g.name, g.fence, g.via, g.conn,
		g.ends.Sub(now).Round(time.Millisecond))
	for _, h := range r.holding {
		if check && now.Before(g.ends) && h.name == g.name && now.Before(h.ends) && len(r.overlaps) < 3 {
			r.overlaps = append(r.overlaps, fmt.Sprintf(
				"%s: client %d got fence %d via %s while client %d held fence %d via %s (conn %v, %s of its ttl left); last events:%s",
				g.name, g.client, g.fence, g.via, h.client, h.fence, h.via, h.conn, h.ends.Sub(now).Round(time.Millisecond), r.recent()))
		}
	}
	r.nextID++
	g.id = r.nextID
	r.holding[g.id] = g
	r.grants++
}

// releasing records that g's release has begun, and writes with its fence
// to a fenced register first.
func (r *crossRun) releasing(g *xGrant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.releasingLocked(g)
}

func (r *crossRun) releasingLocked(g *xGrant) {
	if g.begun {
		return
	}
	g.begun = true
	delete(r.holding, g.id)
	if time.Now().Before(g.ends) {
		if g.fence < r.highest[g.name] {
			r.notes = append(r.notes, fmt.Sprintf("known defect: %s: client %d wrote with fence %d below %d",
				g.name, g.client, g.fence, r.highest[g.name]))
		}
		r.highest[g.name] = max(r.highest[g.name], g.fence)
	}
}

// sample looks at the lock servers every few milliseconds until the run
// stops: a name whose item is on no majority of them is free. It notes
// since when each name has stood free with no fault under way (a lock
// server slow or down, a proxy being replaced), for refused.
func (r *crossRun) sample() {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.stopCh:
			return
		case <-tick.C:
		}
		now := time.Now()
		for _, name := range r.names {
			held := 0
			for _, f := range r.fakes {
				if f.has(r.cfg.Prefix + name) {
					held++
				}
			}
			r.mu.Lock()
			switch {
			case 2*held >= len(r.fakes) || r.faulty > 0:
				delete(r.freeSince, name)
			case r.freeSince[name].IsZero():
				r.freeSince[name] = now
			}
			r.mu.Unlock()
		}
	}
}

// refused checks a lock on name, asked at sent and refused now: the name
// must not have stood free, with no fault under way, for the last
// freeLimit of the wait. (A waiter at the head of its queue looks in
// memcached at least every poll interval.)
func (r *crossRun) refused(i int, name, via string, sent time.Time) {
	now := time.Now()
	r.mu.Lock()
	since := r.freeSince[name]
	r.mu.Unlock()
	if since.IsZero() {
		return
	}
	if sent.After(since) {
		since = sent
	}
	if free := now.Sub(since); free > freeLimit {
		r.anomaly("client %d lock %s via %s refused after %s, the name free for the last %s of it", i, name, via,
			now.Sub(sent).Round(time.Millisecond), free.Round(time.Millisecond))
	}
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
		old.shutdown()
		for _, c := range conns {
			c.cancel() // the proxy stops reading: the command on its way ends
		}
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

// logCounter counts what the services log at Warn and above, to show
// which paths a run took (a lock server seen losing its state, which no
// fault here can cause, fails the run).
type logCounter struct{ r *crossRun }

func (h logCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h logCounter) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h logCounter) WithGroup(string) slog.Handler                { return h }

func (h logCounter) Handle(_ context.Context, rec slog.Record) error {
	msg, _, _ := strings.Cut(rec.Message, ":")
	if strings.Contains(msg, "lost its lock state") || rec.Level >= slog.LevelError {
		h.r.anomaly("a service logged %q", rec.Message)
	}
	h.r.reply("log: " + msg)
	return nil
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
				p.shutdown()
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
	go func() {
		defer bg.Done()
		r.sample()
	}()
	time.Sleep(d)
	close(r.stopCh)
	bg.Wait()
	wg.Wait()
	r.checkIdle()
	for _, p := range r.proxies {
		p.shutdown()
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

// stopped reports whether the run is over.
func (r *crossRun) stopped() bool {
	select {
	case <-r.stopCh:
		return true
	default:
		return false
	}
}

// sleepOn waits d, or until c's connection ends; false when it ended.
func sleepOn(c *xConn, d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (r *crossRun) isDead(c *xConn) (dead, crash bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return c.dead, c.crash
}

// client takes locks and releases them until the run stops.
func (r *crossRun) client(i int, rnd *rand.Rand) {
	for n := 0; !r.stopped(); n++ {
		q := lockext.Request{Name: r.names[rnd.IntN(len(r.names))], TTL: 1 + rnd.IntN(3)}
		if rnd.IntN(4) > 0 {
			q.Wait = time.Duration(rnd.IntN(3000)) * time.Millisecond
		}
		if rnd.IntN(3) > 0 {
			q.Owner = fmt.Sprintf("c%d.%d", i, n)
			q.Reentrant = rnd.IntN(4) == 0
		}
		c := r.connect(rnd)
		x, delivered := r.lock(i, rnd, c, q)
		if x != nil && !delivered && !x.conn && !x.reentrant && !x.begun && rnd.IntN(2) == 0 {
			// The client never had the reply: it asks again, elsewhere,
			// and gets the same grant back if it still stands.
			r.close(c)
			c = r.connect(rnd)
			q.Wait = time.Duration(rnd.IntN(500)) * time.Millisecond
			x, delivered = r.lock(i, rnd, c, q)
		}
		if delivered {
			r.use(i, rnd, c, x, q.TTL)
		}
		r.close(c)
		if x == nil {
			time.Sleep(time.Duration(rnd.IntN(3)) * time.Millisecond)
		}
	}
}

// lock asks for q through c: x is the grant made, if one was, and
// delivered tells whether the client has it. One that nobody reads (the
// client hung up, or the proxy crashed) is a grant all the same.
func (r *crossRun) lock(i int, rnd *rand.Rand, c *xConn, q lockext.Request) (x *xGrant, delivered bool) {
	ctx, cancel := c.ctx, context.CancelFunc(func() {})
	if rnd.IntN(6) == 0 { // the client goes away while it waits
		ctx, cancel = context.WithTimeout(ctx, time.Duration(rnd.Int64N(int64(q.Wait)+1)))
	}
	what := "lease " + q.Owner
	if q.Reentrant {
		what = "rlock " + q.Owner
	}
	if q.Owner == "" {
		what = "conn lock"
	}
	r.logf("client %d %s %s via %s (home %s) ttl %d wait %s", i, what, q.Name, c.p.name, homeOf(c.p.svc, q.Name), q.TTL, q.Wait)
	sent := time.Now()
	failed := c.p.svc.forwardFailed.Load()
	g, err := c.sess.Lock(ctx, q)
	failed = c.p.svc.forwardFailed.Load() - failed
	hungUp := ctx.Err() != nil && c.ctx.Err() == nil
	cancel()
	dead, crash := r.isDead(c)
	if err != nil {
		r.logf("client %d lock %s via %s: %v", i, q.Name, c.p.name, err)
		r.lockFailed(i, q, c, sent, err, hungUp || dead)
		return nil, false
	}
	x = &xGrant{client: i, name: q.Name, fence: g.Fence, conn: q.Owner == "", via: c.p.name, c: c,
		ends: sent.Add(time.Duration(g.TTL) * time.Second), owner: q.Owner, reentrant: q.Reentrant, levels: g.Count}
	switch {
	case g.Count == 1:
	case failed > 0:
		// Known: the home granted the request and its answer was lost; the
		// proxy, serving the name itself, finds the owner holding and
		// takes a level on top (it cannot tell that grant from one the
		// owner had before).
		r.mu.Lock()
		r.notes = append(r.notes, fmt.Sprintf("known: client %d granted %s fence %d via %s with %d levels after a forward failed",
			i, q.Name, g.Fence, c.p.name, g.Count))
		r.mu.Unlock()
	default:
		r.anomaly("client %d granted %s fence %d via %s with %d levels, want 1", i, q.Name, g.Fence, c.p.name, g.Count)
	}
	if q.Owner != "" && r.again(x) {
		return x, true
	}
	r.granted(x, !(dead && x.conn))
	switch {
	case hungUp || crash:
		// Nobody reads the reply: the proxy releases a connection's lock
		// as the connection ends, and a lease whose reply it could not
		// write; a lease whose reply went out stands.
		r.logf("client %d: nobody reads fence %d", i, g.Fence)
		if x.conn || (!crash && rnd.IntN(2) == 0) {
			r.releasing(x)
			if !x.conn {
				ctx, cancel := context.WithTimeout(context.Background(), 2*r.cfg.Timeout)
				c.sess.Unlock(ctx, x.name, x.fence)
				cancel()
			}
		}
		return x, false
	case dead && x.conn:
		r.releasing(x) // the proxy is going: its connections' locks with it
		return x, false
	}
	r.reply("granted")
	return x, true
}

// again handles a lease granted to an owner that holds a grant it never
// read: the same grant back, its ttl refreshed, takes that grant's place.
func (r *crossRun) again(x *xGrant) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, h := range r.holding {
		if h.client == x.client && h.name == x.name && h.fence == x.fence {
			x.id = id
			r.holding[id] = x
			r.replies["granted again"]++
			r.logLocked("client %d granted %s fence %d again", x.client, x.name, x.fence)
			return true
		}
	}
	return false
}

// use holds client i's grant x, taken through c, a while, perhaps extends
// it, and releases it.
func (r *crossRun) use(i int, rnd *rand.Rand, c *xConn, x *xGrant, ttl int) {
	hold := time.Duration(rnd.IntN(3000)) * time.Microsecond
	switch rnd.IntN(40) {
	case 1, 2, 3, 4:
		hold = time.Duration(5+rnd.IntN(45)) * time.Millisecond
	case 0: // lapses (a one-second grant's only: longer ones stall a short run)
		if ttl == 1 {
			hold = time.Second + time.Duration(rnd.IntN(300))*time.Millisecond
		}
	}
	if !sleepOn(c, hold) && x.conn {
		return // the proxy went away: so did the connection's lock
	}
	if x.reentrant && rnd.IntN(2) == 0 {
		r.relock(i, rnd, c, x, ttl)
	}
	if rnd.IntN(8) == 0 {
		r.extend(i, rnd, c, x)
		sleepOn(c, time.Duration(rnd.IntN(3000))*time.Microsecond)
	}
	for x.levels > 1 && !x.unsure {
		r.unlockLevel(i, rnd, c, x)
	}
	r.release(i, rnd, c, x)
}

// relock takes one more level of client i's reentrant lock x, through
// c's proxy or another: the same grant, one level deeper.
func (r *crossRun) relock(i int, rnd *rand.Rand, c *xConn, x *xGrant, ttl int) {
	via, opened := r.viaOther(rnd, c)
	if opened {
		defer r.close(via)
	}
	q := lockext.Request{Name: x.name, TTL: ttl, Owner: x.owner, Reentrant: true}
	r.logf("client %d rlock %s again via %s", i, x.name, via.p.name)
	sent := time.Now()
	failed := via.p.svc.forwardFailed.Load()
	g, err := via.sess.Lock(via.ctx, q)
	failed = via.p.svc.forwardFailed.Load() - failed
	r.logf("client %d rlock %s again via %s: %d levels, fence %d, %v", i, x.name, via.p.name, g.Count, g.Fence, err)
	switch {
	case err == nil && g.Fence == x.fence:
		if g.Count != x.levels+1 && !x.unsure {
			r.anomaly("client %d rlock %s again via %s: %d levels, want %d", i, x.name, via.p.name, g.Count, x.levels+1)
		}
		x.levels = g.Count
		r.mu.Lock()
		x.ends = sent.Add(time.Duration(g.TTL) * time.Second)
		r.mu.Unlock()
		r.reply("relocked")
	case err == nil:
		r.anomaly("client %d rlock %s again via %s: fence %d, not its grant's %d", i, x.name, via.p.name, g.Fence, x.fence)
	case errors.Is(err, lockext.ErrNotLocked):
		// A proxy serving the name itself answers so when another has
		// reserved the holder's successor (see the README's Semantics),
		// even when the home had granted the level and its answer was
		// lost (known, as with lock).
		r.reply("relock not locked")
		if failed > 0 {
			x.unsure = true
		}
	case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
		r.anomaly("client %d rlock %s again via %s: %v", i, x.name, via.p.name, err)
	default:
		r.reply("relock error")
		x.unsure = true
	}
}

// unlockLevel releases one inner level of client i's reentrant lock x.
func (r *crossRun) unlockLevel(i int, rnd *rand.Rand, c *xConn, x *xGrant) {
	via, opened := r.viaOther(rnd, c)
	if opened {
		defer r.close(via)
	}
	r.logf("client %d unlock %s fence %d level %d via %s", i, x.name, x.fence, x.levels, via.p.name)
	left, err := via.sess.Unlock(via.ctx, x.name, x.fence)
	r.logf("client %d unlock %s fence %d level %d via %s: %d %v", i, x.name, x.fence, x.levels, via.p.name, left, err)
	switch {
	case err == nil && left == x.levels-1:
		x.levels = left
		r.reply("unlocked a level")
	case err == nil:
		r.anomaly("client %d unlock %s fence %d level %d via %s: %d levels left", i, x.name, x.fence, x.levels, via.p.name, left)
		x.levels = left
		if left == 0 {
			r.releasing(x)
		}
	case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
		if time.Now().Before(x.ends) {
			r.anomaly("client %d unlock %s fence %d level %d via %s: %v while its grant ran", i, x.name, x.fence, x.levels, via.p.name, err)
		}
		x.unsure = true
	default:
		r.reply("unlock error")
		x.unsure = true // its level may be gone: the client releases what is left
	}
}

// lockFailed checks a lock refused.
func (r *crossRun) lockFailed(i int, q lockext.Request, c *xConn, sent time.Time, err error, gone bool) {
	switch {
	case errors.Is(err, lockext.ErrNotLocked):
		r.reply("not locked")
		if !gone && q.Wait > 0 {
			r.refused(i, q.Name, c.p.name, sent)
		}
	case errors.Is(err, ErrRecovering), errors.Is(err, ErrServersDiffer):
		r.anomaly("client %d lock %s via %s: %v, and no lock server lost anything", i, q.Name, c.p.name, err)
	case errors.Is(err, lockext.ErrUnavailable):
		r.reply("unavailable")
	case errors.Is(err, lockext.ErrClosed):
		r.reply("closed")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		r.reply("cancelled")
		if !gone {
			r.anomaly("client %d lock %s via %s: %v, and nobody cancelled it", i, q.Name, c.p.name, err)
		}
	default:
		r.anomaly("client %d lock %s via %s: %v", i, q.Name, c.p.name, err)
	}
	if took := time.Since(sent); took > q.Wait+8*r.cfg.Timeout+time.Second {
		r.anomaly("client %d lock %s via %s took %s with a wait of %s", i, q.Name, c.p.name, took.Round(time.Millisecond), q.Wait)
	}
}

// viaOther returns a connection for a request through another proxy than
// c's (or c's own, when that is alive and the coin says so); opened says
// the connection is new, for the caller to close.
func (r *crossRun) viaOther(rnd *rand.Rand, c *xConn) (via *xConn, opened bool) {
	if dead, _ := r.isDead(c); !dead && rnd.IntN(2) == 0 {
		return c, false
	}
	return r.connect(rnd), true
}

// extend gives x a new ttl through c's proxy or another.
func (r *crossRun) extend(i int, rnd *rand.Rand, c *xConn, x *xGrant) {
	via, opened := r.viaOther(rnd, c)
	if opened {
		defer r.close(via)
	}
	ttl := 1 + rnd.IntN(3)
	sent := time.Now()
	r.logf("client %d extend %s fence %d to %d via %s", i, x.name, x.fence, ttl, via.p.name)
	n, err := via.sess.Extend(via.ctx, x.name, x.fence, ttl)
	r.logf("client %d extend %s fence %d via %s: %d %v", i, x.name, x.fence, via.p.name, n, err)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		r.replies["extended"]++
		x.ends = sent.Add(time.Duration(n) * time.Second)
	case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
		r.replies["extend not owner"]++
		if time.Now().Before(x.ends) {
			r.anomalies = append(r.anomalies, fmt.Sprintf("client %d extend %s fence %d via %s: %v while its grant ran; last events:%s",
				i, x.name, x.fence, via.p.name, err, r.recent()))
		}
	default:
		r.replies["extend error"]++
		if e := sent.Add(time.Duration(ttl) * time.Second); e.Before(x.ends) {
			x.ends = e // it may have landed
		}
	}
}

// release ends client i's grant x, taken through c: by closing a
// connection's lock's connection, or by unlock through c's proxy or
// another, as a client reconnecting elsewhere would, perhaps twice as if
// the first reply were lost.
func (r *crossRun) release(i int, rnd *rand.Rand, c *xConn, x *xGrant) {
	r.releasing(x)
	if dead, _ := r.isDead(c); dead && x.conn {
		return // went with the proxy
	}
	if x.conn && rnd.IntN(3) == 0 {
		r.logf("client %d closes its connection to %s", i, c.p.name)
		r.close(c)
		return
	}
	var first sync.WaitGroup // an unlock whose reply was lost, still on its way
	defer first.Wait()
	for try := 0; try < 2; try++ {
		via, opened := c, false
		if try > 0 || rnd.IntN(2) == 0 {
			via, opened = r.viaOther(rnd, c)
		} else if dead, _ := r.isDead(c); dead {
			via, opened = r.connect(rnd), true
		}
		unlock := func(ctx context.Context) error {
			r.logf("client %d unlock %s fence %d via %s", i, x.name, x.fence, via.p.name)
			left, err := via.sess.Unlock(ctx, x.name, x.fence)
			for n := 0; err == nil && left > 0 && x.unsure && n < 3; n++ {
				r.logf("client %d unlock %s fence %d via %s: %d left", i, x.name, x.fence, via.p.name, left)
				left, err = via.sess.Unlock(ctx, x.name, x.fence)
			}
			r.logf("client %d unlock %s fence %d via %s: %d %v", i, x.name, x.fence, via.p.name, left, err)
			if opened {
				r.close(via)
			}
			if err == nil && left > 0 {
				r.anomaly("client %d unlock %s fence %d via %s: %d levels left", i, x.name, x.fence, via.p.name, left)
			}
			return err
		}
		switch rnd.IntN(10) {
		case 0: // the connection drops, and the proxy goes on with the unlock
			first.Add(1)
			go func() {
				defer first.Done()
				unlock(context.WithoutCancel(via.ctx))
			}()
			time.Sleep(time.Duration(rnd.IntN(3000)) * time.Microsecond)
			continue
		case 1: // the connection drops, and the proxy gives up the unlock
			ctx, cancel := context.WithTimeout(via.ctx, time.Duration(rnd.IntN(3000))*time.Microsecond)
			unlock(ctx)
			cancel()
			continue
		}
		err := unlock(via.ctx)
		switch {
		case err == nil:
			r.reply("unlocked")
		case errors.Is(err, lockext.ErrNotOwner), errors.Is(err, lockext.ErrNotFound):
			r.reply("unlock not owner")
			if try == 0 && time.Now().Before(x.ends) {
				r.anomaly("client %d unlock %s fence %d via %s: %v while its grant ran", i, x.name, x.fence, via.p.name, err)
			}
		case errors.Is(err, lockext.ErrUnavailable), errors.Is(err, lockext.ErrClosed),
			errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			r.reply("unlock error")
			continue
		default:
			r.anomaly("client %d unlock %s fence %d via %s: %v", i, x.name, x.fence, via.p.name, err)
		}
		if rnd.IntN(6) > 0 {
			return
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
