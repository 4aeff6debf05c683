package lockext

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/stresstest"
)

// TestStress is a randomized model test of the early handoff: two to four
// Managers (proxies) with early handoff on share one chaosStore, and six to
// ten clients take one lock through them, each on a random Manager, and
// release it on the same or another; now and then a Manager closes and a
// new one takes its place, and memcached pauses. A checker, like the
// integration tests' lockLoad, finds overlaps: a grant delivered while
// another client holds a grant that it has not begun to unlock and whose
// ttl, counted from when its Lock was called, still runs.
//
// Each seed runs for a few seconds, one at a time. LOCKEXT_STRESS=5m
// runs seeds for that long, four at a time, and fails on a known defect
// too (see stressRun.strict); LOCKEXT_STRESS_SEED=n runs seed n
// alone. A seed picks the run's shape and every client's choices;
// the goroutines' schedule is the machine's, so a seed that failed once
// may pass the next time.
func TestStress(t *testing.T) {
	stresstest.Run(t, "LOCKEXT_STRESS", 4, func(seed uint64, long, _ bool) stresstest.Outcome {
		r := runStress(seed, 2500*time.Millisecond, long)
		o := stresstest.Outcome{Grants: r.grants, Summary: r.String()}
		for _, n := range r.notes {
			o.Notes = append(o.Notes, "known defect: "+n)
		}
		if r.failed() {
			o.Failure = r.String()
		}
		return o
	})
}

// stressRun is one seed's run.
type stressRun struct {
	seed  uint64
	store *chaosStore
	cfg   Config
	// strict fails the run on a known defect, not only logs it: a grant
	// whose fence is below the one before it. Two processes add the free
	// lock's item at once, and the add whose fence was taken from the
	// clock first lands after the other's grant has been released.
	// (Fences come from the clock whenever the item is absent; the fenced
	// register refuses that holder's writes.)
	strict bool

	mu        sync.Mutex
	managers  []*Manager
	instances int
	events    []string // the last events, oldest first
	holding   map[int]stressGrant
	grants    int
	highest   uint64 // the fenced register's highest fence written
	overlaps  []string
	anomalies []string
	notes     []string // known defects, when not strict
	replies   map[string]int
}

type stressGrant struct {
	fence uint64
	ends  time.Time // its ttl counted from when its Lock (or Extend) was called
	via   string
}

const keptEvents = 40

func (r *stressRun) logf(format string, args ...any) {
	e := time.Now().Format("05.000000 ") + fmt.Sprintf(format, args...)
	if traceStress {
		fmt.Fprintln(os.Stderr, e)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 4*keptEvents {
		r.events = append(r.events[:0], r.events[3*keptEvents:]...)
	}
	r.events = append(r.events, e)
}

// recent returns the last events; r.mu must be held.
func (r *stressRun) recent() string {
	return "\n\t" + strings.Join(r.events[max(len(r.events)-keptEvents, 0):], "\n\t")
}

func (r *stressRun) failed() bool { return len(r.overlaps) > 0 || len(r.anomalies) > 0 }

func (r *stressRun) String() string {
	if r.failed() {
		return fmt.Sprintf("%d grants; overlaps:\n%s\nanomalies:\n%s",
			r.grants, strings.Join(r.overlaps, "\n"), strings.Join(r.anomalies, "\n"))
	}
	return fmt.Sprintf("%d managers made, %d grants, replies %v", r.instances, r.grants, r.replies)
}

func (r *stressRun) anomaly(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.logf("ANOMALY %s", s)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.anomalies = append(r.anomalies, s+"; last events:"+r.recent())
}

// knownLocked records a known defect found with r.mu held (see strict):
// a failure when strict, else a note.
func (r *stressRun) knownLocked(s string) {
	if r.strict {
		r.anomalies = append(r.anomalies, s)
	} else {
		r.notes = append(r.notes, s)
	}
}

func (r *stressRun) reply(kind string) {
	r.mu.Lock()
	r.replies[kind]++
	r.mu.Unlock()
}

// granted records a grant to client i and checks it against every grant
// held.
func (r *stressRun) granted(i int, g stressGrant) {
	now := time.Now()
	r.logf("client %d granted fence %d via %s", i, g.fence, g.via)
	r.mu.Lock()
	defer r.mu.Unlock()
	for j, h := range r.holding {
		if j != i && now.Before(h.ends) {
			r.overlaps = append(r.overlaps, fmt.Sprintf(
				"client %d got fence %d via %s while client %d held fence %d via %s (%s of its ttl left); last events:%s",
				i, g.fence, g.via, j, h.fence, h.via, h.ends.Sub(now).Round(time.Millisecond), r.recent()))
		}
	}
	r.holding[i] = g
	r.grants++
}

// unlocking records that client i has begun to release its grant, and
// writes to the fenced register with its fence first.
func (r *stressRun) unlocking(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.holding[i]
	delete(r.holding, i)
	if time.Now().Before(g.ends) {
		if g.fence < r.highest {
			r.knownLocked(fmt.Sprintf("client %d wrote with fence %d below %d; last events:%s",
				i, g.fence, r.highest, r.recent()))
		}
		r.highest = max(r.highest, g.fence)
	}
}

func (r *stressRun) name(m *Manager) string { return m.cfg.Instance }

// manager returns a Manager in service: most often the first, the name's
// home, where the proxies forward requests for it; else one at random, as
// when a proxy serves the name itself (its home is down, or has changed).
func (r *stressRun) manager(rnd *rand.Rand) *Manager {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rnd.IntN(3) > 0 {
		return r.managers[0]
	}
	return r.managers[rnd.IntN(len(r.managers))]
}

// replace closes the Manager in slot i and puts a new one in its place:
// a proxy replaced.
func (r *stressRun) replace(i int) {
	r.mu.Lock()
	old := r.managers[i]
	r.instances++
	cfg := r.cfg
	cfg.Instance = fmt.Sprintf("m%d", r.instances)
	r.managers[i] = New(r.store, cfg)
	r.mu.Unlock()
	r.logf("%s closes, %s takes its place", r.name(old), cfg.Instance)
	old.Close()
}

func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// runStress runs one seed's clients for d, and then lets their last
// requests end.
func runStress(seed uint64, d time.Duration, strict bool) *stressRun {
	rnd := rand.New(rand.NewPCG(seed, 1))
	r := &stressRun{seed: seed, strict: strict, holding: make(map[int]stressGrant), replies: make(map[string]int),
		cfg: Config{Prefix: "L:", MaxTTL: 60, MaxWait: time.Minute, EarlyHandoff: true,
			Poll: time.Duration(5+rnd.IntN(50)) * time.Millisecond}}
	r.store = newChaosStore(rand.New(rand.NewPCG(seed, 2)), r.logf)
	r.store.faults = 30 + rnd.IntN(300)
	r.store.timeout = time.Duration(100+rnd.IntN(200)) * time.Millisecond
	for n := 2 + rnd.IntN(3); len(r.managers) < n; {
		r.instances++
		cfg := r.cfg
		cfg.Instance = fmt.Sprintf("m%d", r.instances)
		r.managers = append(r.managers, New(r.store, cfg))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, n := 0, 6+rnd.IntN(5); i < n; i++ {
		wg.Add(1)
		go func(i int, rnd *rand.Rand) {
			defer wg.Done()
			r.client(i, rnd, stop)
		}(i, rand.New(rand.NewPCG(seed, uint64(10+i))))
	}
	wg.Add(1)
	go func() { // faults: proxies replaced, memcached paused
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(200+rnd.IntN(800)) * time.Millisecond):
			}
			switch rnd.IntN(5) {
			case 0, 1:
				r.replace(rnd.IntN(len(r.managers)))
			case 2:
				r.store.pause(time.Duration(rnd.IntN(1500)) * time.Millisecond)
			}
		}
	}()
	time.Sleep(d)
	close(stop)
	wg.Wait()
	r.store.late.Wait()
	r.checkIdle()
	return r
}

// checkIdle looks for state left behind once every client has finished:
// a waiter still queued, a release or write still on its way.
func (r *stressRun) checkIdle() {
	for _, m := range r.managers {
		m.mu.Lock()
		for name, st := range m.keys {
			if len(st.queue) > 0 || st.handing > 0 || st.trying {
				m.mu.Unlock()
				r.anomaly("%s: name %s left with %d waiters, %d releases, trying %v", r.name(m), name, len(st.queue), st.handing, st.trying)
				m.mu.Lock()
			}
		}
		m.mu.Unlock()
	}
}

// client takes the lock and releases it until stop.
func (r *stressRun) client(i int, rnd *rand.Rand, stop chan struct{}) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		m := r.manager(rnd)
		q := Request{Name: "k", TTL: 1 + rnd.IntN(2)}
		if rnd.IntN(4) > 0 {
			q.Wait = time.Duration(rnd.IntN(2000)) * time.Millisecond
		}
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if rnd.IntN(6) == 0 { // the client goes away while it waits
			ctx, cancel = context.WithTimeout(ctx, time.Duration(rnd.Int64N(int64(q.Wait)+1)))
		}
		var s *Session
		var g Grant
		var err error
		sent := time.Now()
		if rnd.IntN(3) == 0 {
			s = m.NewSession()
			r.logf("client %d lock conn %s via %s ttl %d wait %s", i, s.ID(), r.name(m), q.TTL, q.Wait)
			g, err = s.Lock(ctx, q)
		} else {
			q.Owner = fmt.Sprintf("c%d.%d", i, n)
			r.logf("client %d lock %s via %s ttl %d wait %s", i, q.Owner, r.name(m), q.TTL, q.Wait)
			g, err = m.Lock(ctx, q)
		}
		cancel()
		took := time.Since(sent)
		if err != nil {
			r.logf("client %d lock via %s: %v", i, r.name(m), err)
			switch {
			case errors.Is(err, ErrNotLocked):
				r.reply("not locked")
			case errors.Is(err, ErrUnavailable):
				r.reply("unavailable")
			case errors.Is(err, ErrClosed):
				r.reply("closed")
			case errors.Is(err, context.DeadlineExceeded):
				r.reply("cancelled")
			default:
				r.anomaly("client %d lock via %s: %v", i, r.name(m), err)
			}
			if took > q.Wait+time.Second {
				r.anomaly("client %d lock via %s took %s with a wait of %s", i, r.name(m), took, q.Wait)
			}
			time.Sleep(time.Duration(rnd.IntN(3)) * time.Millisecond)
			continue
		}
		ends := sent.Add(time.Duration(g.TTL) * time.Second)
		r.granted(i, stressGrant{fence: g.Fence, ends: ends, via: r.name(m)})
		hold := time.Duration(rnd.IntN(3000)) * time.Microsecond
		switch rnd.IntN(30) {
		case 1, 2, 3:
			hold = time.Duration(5+rnd.IntN(45)) * time.Millisecond
		case 0:
			hold = time.Duration(q.TTL)*time.Second + time.Duration(rnd.IntN(500))*time.Millisecond // lapses
		}
		time.Sleep(hold)
		if rnd.IntN(8) == 0 {
			ends = r.extend(i, rnd, g, ends)
			time.Sleep(time.Duration(rnd.IntN(3000)) * time.Microsecond)
		}
		r.release(i, rnd, m, s, g, ends)
	}
}

// extend gives client i's grant g, which runs until ends, a new ttl
// through a Manager picked at random, and returns when it ends now.
func (r *stressRun) extend(i int, rnd *rand.Rand, g Grant, ends time.Time) time.Time {
	via := r.manager(rnd)
	ttl := 1 + rnd.IntN(2)
	sent := time.Now()
	r.logf("client %d extend fence %d to %d via %s", i, g.Fence, ttl, r.name(via))
	_, err := via.Extend(context.Background(), "k", g.Fence, ttl)
	r.logf("client %d extend fence %d via %s: %v", i, g.Fence, r.name(via), err)
	now := sent.Add(time.Duration(ttl) * time.Second)
	switch {
	case err == nil:
		r.reply("extend ok")
		ends = now
	case errors.Is(err, ErrNotOwner), errors.Is(err, ErrNotFound):
		r.reply("extend not owner")
		if time.Now().Before(ends) {
			r.anomaly("client %d extend fence %d via %s: %v while its grant ran", i, g.Fence, r.name(via), err)
		}
	case errors.Is(err, ErrUnavailable):
		r.reply("extend error")
		ends = minTime(ends, now) // it may have landed
	default:
		r.anomaly("client %d extend fence %d via %s: %v", i, g.Fence, r.name(via), err)
	}
	r.mu.Lock()
	if h, ok := r.holding[i]; ok && h.fence == g.Fence {
		h.ends = ends
		r.holding[i] = h
	}
	r.mu.Unlock()
	return ends
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// release ends client i's grant g, taken through m (in session s, if the
// lock is the connection's): through m, or another Manager, as a client
// reconnecting elsewhere would, perhaps twice as if the first reply were
// lost.
func (r *stressRun) release(i int, rnd *rand.Rand, m *Manager, s *Session, g Grant, ends time.Time) {
	r.unlocking(i)
	if s != nil && rnd.IntN(3) == 0 { // the connection closes
		r.logf("client %d closes session %s", i, s.ID())
		s.Close(context.Background())
		return
	}
	var first sync.WaitGroup // an unlock whose reply was lost, still on its way
	defer first.Wait()
	for try := 0; try < 2; try++ {
		via := m
		if rnd.IntN(2) == 0 || via.isClosed() || try > 0 {
			via = r.manager(rnd)
		}
		unlock := func(ctx context.Context) error {
			r.logf("client %d unlock fence %d via %s", i, g.Fence, r.name(via))
			var err error
			if s != nil && via == m {
				_, err = s.Unlock(ctx, "k", g.Fence)
			} else {
				_, err = via.Unlock(ctx, "k", g.Fence)
			}
			r.logf("client %d unlock fence %d via %s: %v", i, g.Fence, r.name(via), err)
			return err
		}
		switch rnd.IntN(10) {
		case 0: // the connection drops, and the proxy goes on with the unlock
			first.Add(1)
			go func() {
				defer first.Done()
				unlock(context.Background())
			}()
			time.Sleep(time.Duration(rnd.IntN(3000)) * time.Microsecond)
			continue
		case 1: // the connection drops, and the proxy gives up the unlock
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rnd.IntN(3000))*time.Microsecond)
			unlock(ctx)
			cancel()
			continue
		}
		err := unlock(context.Background())
		switch {
		case err == nil:
			r.reply("unlock ok")
		case errors.Is(err, ErrNotOwner), errors.Is(err, ErrNotFound):
			r.reply("unlock not owner")
			if try == 0 && time.Now().Before(ends) {
				r.anomaly("client %d unlock fence %d via %s: %v while its grant ran", i, g.Fence, r.name(via), err)
			}
		case errors.Is(err, ErrUnavailable):
			r.reply("unlock error")
			continue
		default:
			r.anomaly("client %d unlock fence %d via %s: %v", i, g.Fence, r.name(via), err)
		}
		if rnd.IntN(6) > 0 {
			return
		}
	}
}

var traceStress = os.Getenv("LOCKEXT_STRESS_TRACE") != ""
