package lockservice

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
	"github.com/memcachedlock/memcachedlock/ring"
)

// store is the lockext.Store over the lock servers: each name on its
// replicas, each write needing a majority of them.
type store struct {
	ring     *ring.Ring
	replicas []*replica   // by lock ring index
	alone    [][]*replica // each replica as a set of one, for names with one replica
	n        int          // replicas per name
	clash    atomic.Bool  // a lock server's marker names another list (see differ)
}

// state is what a replica holds of a lock item: the value, and its change
// number (kept in the item's flags). Each write of one grant numbers its
// state one higher than the state it replaces; a new grant starts at 1.
// So a replica holding a grant's value can tell the state a change
// replaces from the same bytes written again later (an extend, an rlock
// level taken and released), and a change of a state that is gone is
// refused, as memcached's cas would. 0 is unknown: a proxy older than
// 2026-11-26 wrote it, and only the bytes can be compared.
type state struct {
	value  []byte
	change uint32
}

// next is the state a write of value over st makes.
func (st state) next(value []byte) state {
	f, _ := lockext.Fence(value)
	if g, _ := lockext.Fence(st.value); f != g || st.value == nil {
		return state{value: value, change: 1}
	}
	return state{value: value, change: max(st.change+1, st.change)} // stays at the top rather than wrap
}

// version is a lock item's state as the store last wrote or read it, and
// its cas on each replica of the name (0 where unknown: that replica did
// not answer in time, or missed an earlier write). A replica that answers
// after the majority has decided is filled in then (atomically: the
// version may be in use already).
type version struct {
	state
	cas []uint64
	ttl int       // the grant's seconds when written or read; -1 unknown
	one [1]uint64 // cas's array for a name with one replica: one allocation, not two
	// released is set when a release of this version begins. A replica
	// whose add arrives after that, late, held nothing when the release
	// looked, and was counted released: the add is undone, or it would
	// stand there for the grant's whole ttl, and with one other replica
	// down no new grant could find a majority.
	released atomic.Bool
	// replaced are the cas arrays of the versions this one's writes
	// replaced on a majority, the latest first, up to keptReplaced (see
	// supersedes).
	replaced [][]uint64
}

// keptReplaced is how many replaced versions a version remembers.
const keptReplaced = 4

// chain is what a write over prev replaces: prev's cas array, and those
// prev replaced, up to keptReplaced (none for an add).
func chain(prev *version) [][]uint64 {
	if prev == nil {
		return nil
	}
	return append(append(make([][]uint64, 0, keptReplaced), prev.cas), prev.replaced[:min(len(prev.replaced), keptReplaced-1)]...)
}

// supersedes reports whether replica i holds, at cas, an item that v's
// writes replaced on a majority: an earlier state of v's grant, or the
// grant it was handed on from, as that replica took it. That state was
// changed, released or handed on by a write that won, so it can never be
// in force again. mayReplace writes over only the grants handed on from;
// an earlier state of the same grant is judged by its change number.
func (v *version) supersedes(i int, cas uint64) bool {
	if cas == 0 {
		return false
	}
	for _, r := range v.replaced {
		if i < len(r) && atomic.LoadUint64(&r[i]) == cas {
			return true
		}
	}
	return false
}

// held is the state v names; none when v is nil (an add).
func (v *version) held() state {
	if v == nil {
		return state{}
	}
	return v.state
}

func (v *version) casAt(i int) uint64 {
	if v == nil || i >= len(v.cas) {
		return 0
	}
	return atomic.LoadUint64(&v.cas[i])
}

func (s *store) majority() int { return s.n/2 + 1 }

// Kept reports whether v is surely still on a majority of the name's
// lock servers: on as many that took it and have surely lost nothing
// since a moment ago (see replica.keptSince). Any other write needs a
// majority too, so it meets one of them; and one that lost v before that
// moment is recovering still, since v's grant ends before its recovery.
func (s *store) Kept(k lockext.Key, v lockext.Version) bool {
	ver, _ := v.(*version)
	if ver == nil || s.differ() != nil {
		return false
	}
	since := time.Now().Add(-keptWindow)
	n := 0
	for i, r := range s.of(k.Name) {
		if ver.casAt(i) != 0 && r.keptSince(since) {
			n++
		}
	}
	return n >= s.majority()
}

// keptWindow is how recent a look at a lock server's marker Kept wants:
// well inside the second by which a recovery outlasts every grant.
const keptWindow = 500 * time.Millisecond

// of returns the replicas that hold a name.
func (s *store) of(name string) []*replica {
	if len(s.replicas) == 1 {
		return s.alone[0] // no name to hash
	}
	if s.n == 1 {
		return s.alone[s.ring.Pick([]byte(name))]
	}
	var idx [8]int
	picked := s.ring.PickN(idx[:0], []byte(name), s.n)
	reps := make([]*replica, len(picked))
	for i, p := range picked {
		reps[i] = s.replicas[p]
	}
	return reps
}

// differ reports ErrServersDiffer when any lock server's marker names
// another lock server list than ours, whether or not it holds the name
// asked for: the proxies then place names differently, and a name we put
// on a server they do not use may be held through them elsewhere.
func (s *store) differ() error {
	if s.clash.Load() {
		return ErrServersDiffer
	}
	return nil
}

// outcome is one replica's answer.
type outcome struct {
	i int
	state
	cas   uint64
	ttl   int
	err   error
	added bool // a write that added the item: nothing was there before
	// stray: the write took, but answered after its vote window (see
	// voteWindow). It counts for nothing, and is undone with the rest
	// when the write fails.
	stray bool
}

// voteWindow is how long after a write begins its replicas' answers count
// as votes: an answer past it took, but says nothing. It bounds how long
// after a copy landed on a replica its writer may still count it (see
// mayReplace), so it is also how long a replica found behind stays out of
// the changes. An exchange's own deadline (a timeout) lets an answer
// through well within it, a dial and a catch-up's read before the write
// included.
func voteWindow(r *replica) time.Duration { return 2 * r.timeout }

// errStray: a replica took a write after its vote window.
var errStray = errors.New("lockservice: lock server answered after the write's vote window")

// fanOut runs op on every replica at once and collects outcomes until
// enough decides the result: it returns as soon as done says so, so a
// paused replica costs nobody its timeout. Outcomes that arrive after the
// decision go to late, if set.
func fanOut(reps []*replica, op func(i int, r *replica) outcome, done func([]outcome) bool, late func(outcome)) []outcome {
	if len(reps) == 1 {
		return []outcome{op(0, reps[0])}
	}
	var mu sync.Mutex
	var got []outcome
	decided := false
	ready := make(chan struct{})
	for i, r := range reps {
		go func() {
			o := op(i, r)
			mu.Lock()
			if decided {
				mu.Unlock()
				if late != nil {
					late(o)
				}
				return
			}
			got = append(got, o)
			if done(got) || len(got) == len(reps) {
				decided = true
				close(ready)
			}
			mu.Unlock()
		}()
	}
	<-ready
	mu.Lock()
	defer mu.Unlock()
	return append([]outcome(nil), got...)
}

// tally counts successes, and remembers the most telling failure.
func tally(outs []outcome) (ok int, err error) {
	for _, o := range outs {
		switch {
		case o.err == nil:
			ok++
		case err == nil,
			errors.Is(o.err, lockext.ErrStoreExists),
			errors.Is(o.err, lockext.ErrStoreMiss) && !errors.Is(err, lockext.ErrStoreExists),
			errors.Is(o.err, ErrServersDiffer):
			err = o.err
		}
	}
	return ok, err
}

// errNoMajority: a change or a release found neither a majority that
// took it nor one that refused it, the others not answering.
var errNoMajority = errors.New("lockservice: too few lock servers answered")

// refused reports whether a majority refused a change or a release: its
// grant changed or gone there (a replica that held nothing, and was
// added to, says it is gone). Fewer refusals, the other replicas not
// answering, say nothing of the grant: told "changed", the manager would
// read it again and find no more. Unavailable is the answer then, as when
// two replicas of three are down.
func refused(outs []outcome, replicas, need int) bool {
	n := 0
	for _, o := range outs {
		if errors.Is(o.err, lockext.ErrStoreExists) || errors.Is(o.err, lockext.ErrStoreMiss) || o.added && (o.err == nil || o.stray) {
			n++
		}
	}
	return n > replicas-need
}

// unanswered is why too few replicas answered: a layout clash, else the
// first failure that was not an answer.
func unanswered(outs []outcome) error {
	var err error
	for _, o := range outs {
		switch {
		case o.err == nil, errors.Is(o.err, lockext.ErrStoreMiss), errors.Is(o.err, lockext.ErrStoreExists):
		case errors.Is(o.err, ErrServersDiffer):
			return o.err
		case err == nil:
			err = o.err
		}
	}
	return err
}

// decide returns once a write has its majority or can no longer get it.
func (s *store) decide(total int) func([]outcome) bool {
	need := s.majority()
	return func(outs []outcome) bool {
		ok, _ := tally(outs)
		return ok >= need || len(outs)-ok > total-need
	}
}

// tallyChange is tally for a change of prev (write with prev set): a
// replica that held nothing and was caught up (added) is no vote that
// prev still stands. When a majority held nothing, the grant is gone
// (released, or run out) and the change fails with ErrStoreMiss: written
// back, a released grant would come back to life.
func (s *store) tallyChange(outs []outcome) (ok int, err error) {
	ok, err = tally(outs)
	empty := 0
	for _, o := range outs {
		if o.err == nil && o.added {
			empty++
		}
	}
	if empty >= s.majority() {
		err = lockext.ErrStoreMiss
	}
	return ok - empty, err
}

func (s *store) Get(ctx context.Context, k lockext.Key) (lockext.Item, error) {
	if err := s.differ(); err != nil {
		return lockext.Item{}, err
	}
	reps := s.of(k.Name)
	need := s.majority()
	agree := func(outs []outcome) (best []outcome, misses int) {
		for _, o := range outs {
			if errors.Is(o.err, lockext.ErrStoreMiss) {
				misses++
				continue
			}
			if o.err != nil {
				continue
			}
			var same []outcome
			for _, p := range outs {
				if p.err == nil && bytes.Equal(p.value, o.value) {
					same = append(same, p)
				}
			}
			if len(same) > len(best) {
				best = same
			}
		}
		return best, misses
	}
	outs := fanOut(reps, func(i int, r *replica) outcome {
		st, cas, ttl, err := r.get(ctx, k.Item)
		return outcome{i: i, state: st, cas: cas, ttl: ttl, err: err}
	}, func(outs []outcome) bool {
		best, misses := agree(outs)
		return len(best) >= need || misses >= need
	}, nil)
	best, misses := agree(outs)
	answered := 0
	for _, o := range outs {
		if o.err == nil || errors.Is(o.err, lockext.ErrStoreMiss) {
			answered++
		}
	}
	switch {
	case answered < need:
		// Too few replicas answered to say anything: what they hold may be
		// the minority of a write the others took. Neither "free" nor
		// "held by this one" may be told to a holder asking after its grant.
		return lockext.Item{}, unanswered(outs)
	case len(best) >= need:
		// The same bytes under different change numbers: the lower ones
		// missed a change that came back to these bytes, and are behind.
		noteBehind(reps, k.Item, outs, best[0].value)
		ver := &version{state: best[0].state, cas: make([]uint64, len(reps)), ttl: best[0].ttl}
		it := lockext.Item{Value: best[0].value, Version: ver, TTL: best[0].ttl}
		for _, o := range best {
			ver.cas[o.i] = o.cas
			ver.change = latest(ver.change, o.change)
			it.TTL = min(it.TTL, o.ttl)
			ver.ttl = max(ver.ttl, o.ttl)
		}
		return it, nil
	case misses >= need:
		return lockext.Item{}, lockext.ErrStoreMiss
	case len(best) > 0:
		// Replicas disagree (a write half done, a replica that missed one):
		// the lock is not free. Report it held by whoever most replicas
		// name, and of as many, by the newest grant: a replica that was
		// down when the holder changed still names the grant before, and
		// its holder must not be told the lock is not its own. A change
		// from there finds each replica's cas by value. The newest may
		// also be an add that lost, not yet undone: the item is disputed.
		v := newest(outs, len(best))
		noteBehind(reps, k.Item, outs, v.value)
		return lockext.Item{Value: v.value, Version: &version{state: v, cas: make([]uint64, len(reps)), ttl: -1}, TTL: -1, Disputed: true}, nil
	case misses > 0:
		return lockext.Item{}, lockext.ErrStoreMiss
	}
	_, err := tally(outs)
	return lockext.Item{}, err
}

// noteBehind notes the copies older than v where they stand, so that a
// change can tell how long they have (see mayReplace).
func noteBehind(reps []*replica, item string, outs []outcome, v []byte) {
	for _, o := range outs {
		if o.err == nil && olderGrant(o.value, v) {
			reps[o.i].seen.standing(item, o.cas, voteWindow(reps[o.i]))
		}
	}
}

// newest is, of the values that n of the replicas answered alike, the one
// with the highest fence: the latest grant (at its latest change).
func newest(outs []outcome, n int) state {
	var v state
	var top uint64
	for _, o := range outs {
		if o.err != nil {
			continue
		}
		same := 0
		change := o.change
		for _, p := range outs {
			if p.err == nil && bytes.Equal(p.value, o.value) {
				same++
				change = latest(change, p.change)
			}
		}
		if f, _ := lockext.Fence(o.value); same == n && (v.value == nil || f > top) {
			v, top = state{value: o.value, change: change}, f
		}
	}
	return v
}

// latest is the later of two change numbers of the same bytes; unknown
// (0) when either is, so that the bytes alone decide after it.
func latest(a, b uint32) uint32 {
	if a == 0 || b == 0 {
		return 0
	}
	return max(a, b)
}

func (s *store) Add(ctx context.Context, k lockext.Key, value []byte, ttl int) (lockext.Version, error) {
	return s.write(ctx, k, value, ttl, nil)
}

func (s *store) CompareAndSwap(ctx context.Context, k lockext.Key, value []byte, ttl int, v lockext.Version) (lockext.Version, error) {
	prev, _ := v.(*version)
	if prev == nil {
		return nil, lockext.ErrStoreExists // nothing known to compare with
	}
	return s.write(ctx, k, value, ttl, prev)
}

// write adds (prev nil) or swaps prev's value for value on every replica
// of the name (see swapOn), and counts when a majority took it.
//
// Without a majority, what was added is undone, so that it blocks nobody,
// and what was swapped is swapped back (never deleted: the replicas that
// refused still hold the grant it replaced); so is a write that succeeds
// only after the decision.
func (s *store) write(ctx context.Context, k lockext.Key, value []byte, ttl int, prev *version) (lockext.Version, error) {
	if err := s.differ(); err != nil {
		return nil, err
	}
	reps := s.of(k.Name)
	st := prev.held().next(value)
	if len(reps) == 1 { // no majority to gather, nothing to catch up
		c, err := reps[0].write(ctx, k.Item, st, ttl, prev.casAt(0))
		if err != nil {
			return nil, err
		}
		v := &version{state: st, ttl: ttl, one: [1]uint64{c}}
		v.cas = v.one[:]
		return v, nil
	}
	ver := &version{state: st, cas: make([]uint64, len(reps)), ttl: ttl, replaced: chain(prev)}
	var mu sync.Mutex
	resolved, failed := false, false
	var pending []outcome
	undo := func(o outcome) {
		switch {
		case o.err != nil && !o.stray:
		case o.added:
			reps[o.i].undo(k.Item, o.cas)
		default:
			// Put back what was there, for no shorter than it had: the
			// replicas that refused still hold it, and a name whose
			// replicas disagree needs every one of them to decide.
			reps[o.i].restore(k.Item, prev.state, max(prev.ttl, ttl), o.cas)
		}
	}
	count := tally
	if prev != nil {
		count = s.tallyChange
	}
	need := s.majority()
	sent := time.Now()
	outs := fanOut(reps, func(i int, r *replica) outcome {
		o := swapOn(ctx, i, r, k.Item, st, ttl, prev)
		if o.err == nil && time.Since(sent) > voteWindow(r) {
			o.err, o.stray = errStray, true
		}
		return o
	}, func(outs []outcome) bool {
		ok, err := count(outs)
		return ok >= need || len(outs)-ok > len(reps)-need || errors.Is(err, lockext.ErrStoreMiss)
	}, func(o outcome) {
		mu.Lock()
		if !resolved {
			pending = append(pending, o)
			mu.Unlock()
			return
		}
		f := failed
		mu.Unlock()
		switch {
		case f, (o.err == nil || o.stray) && o.added && ver.released.Load():
			undo(o)
		case o.err == nil, o.stray:
			atomic.StoreUint64(&ver.cas[o.i], o.cas)
		case errors.Is(o.err, lockext.ErrStoreExists):
			s.overwrite(k.Item, ttl, reps[o.i], ver, o.i)
		}
	})
	ok, err := count(outs)
	mu.Lock()
	resolved, failed = true, ok < need
	late := pending
	mu.Unlock()
	if failed {
		for _, o := range append(outs, late...) {
			undo(o)
		}
		if prev != nil && errors.Is(err, lockext.ErrStoreExists) && !refused(outs, len(reps), need) {
			err = errNoMajority
			if e := unanswered(outs); e != nil {
				err = e
			}
		}
		return nil, err
	}
	for _, o := range append(outs, late...) {
		switch {
		case o.err == nil, o.stray:
			atomic.StoreUint64(&ver.cas[o.i], o.cas)
		case errors.Is(o.err, lockext.ErrStoreExists):
			go s.overwrite(k.Item, ttl, reps[o.i], ver, o.i)
		}
	}
	return ver, nil
}

// overwrite catches up replica i, which refused a write that won its
// majority. A grant the write's version supersedes is written over at
// once, by the cas it was read with. Anything else is left to the next
// change of the name (see mayReplace), which finds the majority as it is
// then: by the time the refusal is handled this write's grant may have
// ended, and the copy here be an add on its way that has won since. The
// copy is noted, so that the next change knows how long it has stood.
func (s *store) overwrite(item string, ttl int, r *replica, ver *version, i int) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	held, cas, _, err := r.get(ctx, item)
	switch {
	case err != nil, !olderGrant(held.value, ver.value):
		return
	case !ver.supersedes(i, cas):
		r.seen.standing(item, cas, voteWindow(r))
		return
	}
	if c, err := r.write(ctx, item, ver.state, ttl, cas); err == nil {
		atomic.StoreUint64(&ver.cas[i], c)
	}
}

// swapOn writes value on replica r: added when prev is nil; else in place
// of prev's value, by its cas when known, and otherwise (unknown, or
// changed since: a replica that missed a write or lost its items) by the
// cas of what r holds if mayReplace allows, or added if r holds nothing.
// So the replicas that fell behind catch up with the changes they missed,
// and a lock held for long is back on all of them. Adds are checked
// against the marker like any grant.
func swapOn(ctx context.Context, i int, r *replica, item string, st state, ttl int, prev *version) outcome {
	cas := prev.casAt(i)
	if prev == nil || cas != 0 {
		c, err := r.write(ctx, item, st, ttl, cas)
		if prev == nil || err == nil || !(errors.Is(err, lockext.ErrStoreExists) || errors.Is(err, lockext.ErrStoreMiss)) {
			return outcome{i: i, cas: c, err: err, added: cas == 0}
		}
	}
	held, c, _, err := r.get(ctx, item)
	switch {
	case errors.Is(err, lockext.ErrStoreMiss):
		c = 0
	case err != nil:
		return outcome{i: i, err: err}
	case !mayReplace(r, item, i, held, c, prev):
		return outcome{i: i, err: lockext.ErrStoreExists}
	}
	nc, err := r.write(ctx, item, st, ttl, c)
	return outcome{i: i, cas: nc, err: err, added: c == 0}
}

// CompareAndDelete releases prev on every replica of the name. A replica
// that holds nothing counts as released: the grant is gone from it either
// way. (With one lock server, a missing item is reported: the grant ran
// out or was lost.)
func (s *store) CompareAndDelete(ctx context.Context, k lockext.Key, v lockext.Version) error {
	prev, _ := v.(*version)
	if prev == nil {
		return lockext.ErrStoreExists
	}
	reps := s.of(k.Name)
	if len(reps) == 1 {
		if prev.casAt(0) == 0 {
			return lockext.ErrStoreExists
		}
		return reps[0].del(ctx, k.Item, prev.casAt(0))
	}
	prev.released.Store(true)
	outs := fanOut(reps, func(i int, r *replica) outcome {
		return outcome{i: i, err: deleteOn(ctx, i, r, k.Item, prev)}
	}, s.decide(len(reps)), nil)
	ok, err := tally(outs)
	switch {
	case ok >= s.majority():
		return nil
	case errors.Is(err, lockext.ErrStoreExists) && !refused(outs, len(reps), s.majority()):
		if e := unanswered(outs); e != nil {
			return e
		}
		return errNoMajority
	}
	return err
}

// deleteOn deletes prev's value from replica r, by its cas when known,
// else by the cas of what r holds if mayReplace allows.
func deleteOn(ctx context.Context, i int, r *replica, item string, prev *version) error {
	if cas := prev.casAt(i); cas != 0 {
		err := r.del(ctx, item, cas)
		if err == nil || errors.Is(err, lockext.ErrStoreMiss) {
			return nil
		}
		if !errors.Is(err, lockext.ErrStoreExists) {
			return err
		}
	}
	held, c, _, err := r.get(ctx, item)
	switch {
	case errors.Is(err, lockext.ErrStoreMiss):
		return nil
	case err != nil:
		return err
	case !mayReplace(r, item, i, held, c, prev):
		return lockext.ErrStoreExists
	}
	if err := r.del(ctx, item, c); err != nil && !errors.Is(err, lockext.ErrStoreMiss) {
		return err
	}
	return nil
}
