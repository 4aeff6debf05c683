package lockext

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// chaosStore is a memStore as a proxy sees memcached over a network that
// fails now and then, for the randomized test (stress_test.go):
//
//   - every op takes a random latency, part before it lands, part after;
//   - ttls count on memcached's clock, whole seconds ticking at a phase of
//     their own, and the store's conventions on top, as lockservice's
//     replica writes and reads them: a grant's ttl is written as ttl+1, and
//     a read reports the item's seconds left minus one;
//   - some ops never reach memcached and fail; some land and fail anyway,
//     their reply lost; an op whose caller gives up (its context ends, or
//     the proxy's timeout while memcached is paused) may still land after
//     the caller has its error;
//   - memcached pauses now and then (pause): ops queue, their callers time
//     out, and the ops land when it resumes.
//
// It never loses what it holds: no flush, no restart, no eviction (see
// Keeper).
type chaosStore struct {
	mem     *memStore
	start   time.Time     // memcached's clock reads 0 here
	timeout time.Duration // the proxy's: the longest wait for a reply
	latency time.Duration // longest latency of an op
	faults  int           // one op in faults fails (0: none)
	log     func(format string, args ...any)

	mu     sync.Mutex
	rnd    *rand.Rand
	expiry map[string]int64 // item -> the second of memcached's clock it expires at
	resume chan struct{}    // while memcached is paused: closed when it resumes
	late   sync.WaitGroup   // ops landing after their callers gave up
}

var errTimeout = errors.New("i/o timeout")

func newChaosStore(rnd *rand.Rand, log func(string, ...any)) *chaosStore {
	return &chaosStore{mem: newMemStore(), start: time.Now().Add(-time.Duration(rnd.IntN(1000)) * time.Millisecond),
		timeout: 100 * time.Millisecond, latency: 3 * time.Millisecond, faults: 40, log: log,
		rnd: rnd, expiry: make(map[string]int64)}
}

// clock is memcached's current_time: whole seconds, ticking once a second.
func (s *chaosStore) clock() int64 { return int64(time.Since(s.start) / time.Second) }

// pause stops memcached for d: ops reaching it meanwhile wait, and land
// when it resumes, whether their callers still wait for them or not.
func (s *chaosStore) pause(d time.Duration) {
	s.mu.Lock()
	resume := make(chan struct{})
	s.resume = resume
	s.mu.Unlock()
	s.log("memcached paused for %s", d)
	time.Sleep(d)
	s.mu.Lock()
	s.resume = nil
	s.mu.Unlock()
	close(resume)
	s.log("memcached resumed")
}

// fate is what happens to one op on the way.
type fate int

const (
	delivered fate = iota
	neverSent      // fails before it reaches memcached
	replyLost      // lands, and its caller times out
)

// outcome is an op's result as memcached gave it.
type outcome struct {
	it  Item
	ver Version
	err error
}

func (s *chaosStore) draw() (before, after time.Duration, f fate, landsIfCancelled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	before = time.Duration(s.rnd.Int64N(int64(s.latency) + 1))
	after = time.Duration(s.rnd.Int64N(int64(s.latency) + 1))
	if s.faults > 0 && s.rnd.IntN(s.faults) == 0 {
		f = neverSent + fate(s.rnd.IntN(2))
	}
	return before, after, f, s.rnd.IntN(2) == 0
}

// do carries op to memcached, which applies it with land.
func (s *chaosStore) do(ctx context.Context, what string, land func() outcome) outcome {
	before, after, f, landsIfCancelled := s.draw()
	if !sleepCtx(ctx, before) {
		if landsIfCancelled { // sent before the caller gave up
			s.landLate(what, land, nil)
		}
		return outcome{err: ctx.Err()}
	}
	if f == neverSent {
		s.log("%s: never sent", what)
		return outcome{err: errDown}
	}
	s.mu.Lock()
	resume := s.resume
	s.mu.Unlock()
	if resume != nil {
		timer := time.NewTimer(s.timeout)
		defer timer.Stop()
		select {
		case <-resume:
		case <-timer.C:
			s.landLate(what, land, resume)
			return outcome{err: errTimeout}
		case <-ctx.Done():
			s.landLate(what, land, resume)
			return outcome{err: ctx.Err()}
		}
	}
	o := s.land(what, land)
	if f == replyLost {
		s.log("%s: reply lost", what)
		sleepCtx(ctx, s.timeout)
		return outcome{err: errTimeout}
	}
	if !sleepCtx(ctx, after) {
		return outcome{err: ctx.Err()}
	}
	return o
}

// landLate lands an op whose caller has its error already: when memcached
// resumes, or after a latency of its own.
func (s *chaosStore) landLate(what string, land func() outcome, resume chan struct{}) {
	s.late.Add(1)
	go func() {
		defer s.late.Done()
		if resume != nil {
			<-resume
		} else {
			s.mu.Lock()
			d := time.Duration(s.rnd.Int64N(int64(s.latency) + 1))
			s.mu.Unlock()
			time.Sleep(d)
		}
		s.land(what+" (caller gone)", land)
	}()
}

func (s *chaosStore) land(what string, land func() outcome) outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := land()
	result := "ok"
	if o.err != nil {
		result = o.err.Error()
	}
	s.log("%s: %s (clock %d)", what, result, s.clock())
	return o
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// expire drops the item once memcached's clock reaches its expiry; s.mu
// must be held.
func (s *chaosStore) expire(item string) {
	if at, ok := s.expiry[item]; ok && s.clock() >= at {
		delete(s.expiry, item)
		s.mem.mu.Lock()
		delete(s.mem.items, item)
		s.mem.mu.Unlock()
	}
}

// written sets the expiry of an item just written for a grant of ttl
// seconds: the store asks memcached for ttl+1, which memcached counts
// from its current second; s.mu must be held.
func (s *chaosStore) written(item string, ttl int) {
	s.expiry[item] = s.clock() + int64(ttl) + 1
}

// memTTL is the ttl memStore is given: beyond the expiry this store keeps,
// so that memStore's own never comes first.
func memTTL(ttl int) int { return ttl + 3 }

func (s *chaosStore) Get(ctx context.Context, k Key) (Item, error) {
	o := s.do(ctx, "get", func() outcome {
		s.expire(k.Item)
		it, err := s.mem.Get(ctx, k)
		if err == nil {
			// memcached's t flag, less the second the store adds on writes
			it.TTL = int(s.expiry[k.Item]-s.clock()) - 1
		}
		return outcome{it: it, err: err}
	})
	return o.it, o.err
}

func (s *chaosStore) Add(ctx context.Context, k Key, value []byte, ttl int) (Version, error) {
	o := s.do(ctx, fmt.Sprintf("add %s ttl %d", show(value), ttl), func() outcome {
		s.expire(k.Item)
		ver, err := s.mem.Add(context.Background(), k, value, memTTL(ttl))
		if err == nil {
			s.written(k.Item, ttl)
		}
		return outcome{ver: ver, err: err}
	})
	return o.ver, o.err
}

func (s *chaosStore) CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	o := s.do(ctx, fmt.Sprintf("cas %v %s ttl %d", v, show(value), ttl), func() outcome {
		s.expire(k.Item)
		ver, err := s.mem.CompareAndSwap(context.Background(), k, value, memTTL(ttl), v)
		if err == nil {
			s.written(k.Item, ttl)
		}
		return outcome{ver: ver, err: err}
	})
	return o.ver, o.err
}

func (s *chaosStore) CompareAndDelete(ctx context.Context, k Key, v Version) error {
	o := s.do(ctx, fmt.Sprintf("delete %v", v), func() outcome {
		s.expire(k.Item)
		err := s.mem.CompareAndDelete(context.Background(), k, v)
		if err == nil {
			delete(s.expiry, k.Item)
		}
		return outcome{err: err}
	})
	return o.err
}

// show is a lock item's value on one line.
func show(value []byte) string { return "[" + strings.ReplaceAll(string(value), "\n", " | ") + "]" }
