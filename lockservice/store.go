package lockservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
	log      *slog.Logger // Config.Trace: told each read's and write's outcome
	catching sync.Map     // catchUp -> true: a replica's copy being caught up (see overwrite)
}

// version is a lock item's state as the store last wrote or read it: the
// value, and its cas on each replica of the name (0 where unknown: that
// replica did not answer in time, or missed an earlier write). A replica
// that answers after the majority has decided is filled in then
// (atomically: the version may be in use already).
type version struct {
	cas   []uint64
	value []byte
	ttl   int       // the grant's seconds when written or read; -1 unknown
	one   [1]uint64 // cas's array for a name with one replica: one allocation, not two
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

// keptReplaced is how many replaced versions a version remembers: a
// replica that missed more changes than that waits for its copy to
// expire.
const keptReplaced = 4

// after is the version a write of value over prev makes (prev nil: an
// add, which replaced nothing).
func after(prev *version, value []byte, ttl, replicas int) *version {
	v := &version{value: value, ttl: ttl}
	if replicas == 1 {
		v.cas = v.one[:]
	} else {
		v.cas = make([]uint64, replicas)
	}
	if prev != nil {
		v.replaced = append(append(make([][]uint64, 0, keptReplaced), prev.cas), prev.replaced[:min(len(prev.replaced), keptReplaced-1)]...)
	}
	return v
}

// supersedes reports whether replica i holds, at cas, an item that v's
// writes replaced on a majority: an earlier state of v's grant, or the
// grant it was handed on from, as that replica took it. That state was
// changed, released or handed on by a write that won, so it can never be
// in force again; the replica missed that write and may be written over.
// Only a grant handed on from (an older fence) is: an earlier state of
// the same grant is left, as a write still on its way to that replica
// finds it by its bytes, and those may come back (see ARCHITECTURE.md,
// Replicas that fall behind).
//
// Nothing else is written over, not even an older fence: it may be an
// add still on its way (its fence taken from a clock before ours, or
// before a grant that has come and gone since), whose writer counts this
// replica's answer among its majority. Written over, the add would be
// granted on fewer replicas than it counted, and a second grant could be
// made on the others while it runs. (A cas, not a value, names the state:
// a value comes back, as when a level taken is released again.)
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
	i     int
	cas   uint64
	value []byte
	ttl   int
	err   error
	added bool // a write that added the item: nothing was there before
	// stray: the write took, but answered after its vote window (see
	// voteWindow). It counts for nothing, and is undone with the rest
	// when the write fails.
	stray bool
}

// voteWindow is how long after a write begins its replicas' answers count
// as votes. The answers the exchange's own deadline lets through come
// well within it (a timeout each, after the server is ready); one past
// it took, but says nothing. It bounds how long a write's decision may
// rest on a replica that took it (see overwrite).
func voteWindow(r *replica) time.Duration { return 4 * r.timeout }

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
		v, cas, ttl, err := r.get(ctx, k.Item)
		return outcome{i: i, cas: cas, value: v, ttl: ttl, err: err}
	}, func(outs []outcome) bool {
		best, misses := agree(outs)
		return len(best) >= need || misses >= need
	}, nil)
	s.log.Debug("store get", "lock", k.Name, "replicas", describe(reps, outs))
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
		ver := &version{cas: make([]uint64, len(reps)), value: best[0].value, ttl: best[0].ttl}
		it := lockext.Item{Value: best[0].value, Version: ver, TTL: best[0].ttl}
		for _, o := range best {
			ver.cas[o.i] = o.cas
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
		return lockext.Item{Value: v, Version: &version{cas: make([]uint64, len(reps)), value: v, ttl: -1}, TTL: -1, Disputed: true}, nil
	case misses > 0:
		return lockext.Item{}, lockext.ErrStoreMiss
	}
	_, err := tally(outs)
	return lockext.Item{}, err
}

// newest is, of the values that n of the replicas answered alike, the one
// with the highest fence: the latest grant.
func newest(outs []outcome, n int) []byte {
	var v []byte
	var top uint64
	for _, o := range outs {
		if o.err != nil {
			continue
		}
		same := 0
		for _, p := range outs {
			if p.err == nil && bytes.Equal(p.value, o.value) {
				same++
			}
		}
		if f, _ := lockext.Fence(o.value); same == n && (v == nil || f > top) {
			v, top = o.value, f
		}
	}
	return v
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
	if len(reps) == 1 { // no majority to gather, nothing to catch up
		c, err := reps[0].write(ctx, k.Item, value, ttl, prev.casAt(0))
		if err != nil {
			return nil, err
		}
		v := after(nil, value, ttl, 1) // one replica never lags: nothing to remember
		v.cas[0] = c
		return v, nil
	}
	ver := after(prev, value, ttl, len(reps))
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
			reps[o.i].restore(k.Item, prev.value, max(prev.ttl, ttl), o.cas)
		}
	}
	count := tally
	if prev != nil {
		count = s.tallyChange
	}
	need := s.majority()
	sent := time.Now()
	outs := fanOut(reps, func(i int, r *replica) outcome {
		o := swapOn(ctx, i, r, k.Item, value, ttl, prev)
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
		s.log.Debug("store write: a late answer", "lock", k.Name, "value", line(value), "replica", describe(reps, []outcome{o}), "undone", f)
		switch {
		case f, (o.err == nil || o.stray) && o.added && ver.released.Load():
			undo(o)
		case o.err == nil, o.stray:
			atomic.StoreUint64(&ver.cas[o.i], o.cas)
		case errors.Is(o.err, lockext.ErrStoreExists):
			s.overwrite(k, value, ttl, reps, ver, o.i)
		}
	})
	ok, err := count(outs)
	mu.Lock()
	resolved, failed = true, ok < need
	late := pending
	mu.Unlock()
	s.log.Debug("store write", "lock", k.Name, "value", line(value), "ttl", ttl, "prev", prev.line(),
		"replicas", describe(reps, outs), "late", describe(reps, late), "took", !failed, "err", err)
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
			go s.overwrite(k, value, ttl, reps, ver, o.i)
		}
	}
	return ver, nil
}

// describe is outs as a line, for logs: each replica's answer.
func describe(reps []*replica, outs []outcome) string {
	var b strings.Builder
	for n, o := range outs {
		if n > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=", reps[o.i].addr)
		switch {
		case o.err != nil:
			b.WriteString(o.err.Error())
		case o.value != nil:
			fmt.Fprintf(&b, "%q ttl %d", line(o.value), o.ttl)
		case o.added:
			b.WriteString("added")
		default:
			b.WriteString("ok")
		}
		fmt.Fprintf(&b, " cas %d", o.cas)
	}
	return b.String()
}

// line is a lock item's value on one line, for logs.
func line(value []byte) string { return strings.ReplaceAll(string(value), "\n", " then ") }

// line is v's value on one line, for logs.
func (v *version) line() string {
	if v == nil {
		return ""
	}
	return line(v.value)
}

// overwrite catches up replica i, which refused a write that won its
// majority because it held something else. Left there, the replica would
// stay out of every version until its copy expired (one other replica out
// would then stall the name).
//
// A state the write's version supersedes is written over at once, by the
// cas it was read with: by the time the refusal is handled the majority
// may have moved on (the same grant changed by another process, or handed
// on), and a state that is gone, written back, would stand on this
// replica; two such replicas are a majority for a change based on it.
//
// Any other older grant (a lower fence: one whose end the replica missed,
// or a losing contender's add not yet undone) may also be an add still on
// its way, whose writer counts this replica among its majority (see
// supersedes). It is deleted only once it has stood there, unchanged, for
// longer than a write's vote window, so that its writer has decided, and
// only if it is then on no majority: it lost, or its grant has ended. The
// next change brings the empty replica up to date. A newer fence is left
// to its writer.
func (s *store) overwrite(k lockext.Key, value []byte, ttl int, reps []*replica, ver *version, i int) {
	r := reps[i]
	key := catchUp{k.Item, r}
	if _, busy := s.catching.LoadOrStore(key, true); busy {
		return // one catch-up of a replica at a time
	}
	defer s.catching.Delete(key)
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	held, cas, _, err := r.get(ctx, k.Item)
	cancel()
	switch {
	case err != nil:
		return
	case ver.supersedes(i, cas) && olderGrant(held, value):
	case olderGrant(held, value):
		time.Sleep(voteWindow(r) + r.timeout)
		if !s.settled(k.Item, reps, held) {
			s.log.Debug("store overwrite: left, not settled", "lock", k.Name, "replica", r.addr, "held", line(held))
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		defer cancel()
		err := r.del(ctx, k.Item, cas)
		s.log.Debug("store overwrite: an older grant deleted", "lock", k.Name, "replica", r.addr, "held", line(held), "err", err)
		return
	default:
		s.log.Debug("store overwrite: left", "lock", k.Name, "replica", r.addr, "held", line(held))
		return
	}
	ctx, cancel = context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	c, err := r.write(ctx, k.Item, value, ttl, cas)
	if err == nil {
		atomic.StoreUint64(&ver.cas[i], c)
	}
	s.log.Debug("store overwrite", "lock", k.Name, "replica", r.addr, "held", line(held), "value", line(value), "err", err)
}

// catchUp names a replica's copy of a lock item being caught up.
type catchUp struct {
	item string
	r    *replica
}

// olderGrant reports whether held names a grant older (a lower fence)
// than value.
func olderGrant(held, value []byte) bool {
	h, ok1 := lockext.Fence(held)
	v, ok2 := lockext.Fence(value)
	return ok1 && ok2 && h < v
}

// settled reports whether, read now, old is on no majority of the
// replicas: every one answered, and fewer than a majority hold it.
func (s *store) settled(item string, reps []*replica, old []byte) bool {
	olds := 0
	for _, r := range reps {
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		held, _, _, err := r.get(ctx, item)
		cancel()
		switch {
		case err == nil && bytes.Equal(held, old):
			olds++
		case err != nil && !errors.Is(err, lockext.ErrStoreMiss):
			return false // unanswered: it may hold old
		}
	}
	return olds < s.majority()
}

// swapOn writes value on replica r: added when prev is nil; else in place
// of prev's value, by its cas when known, and otherwise (unknown, or
// changed since: a replica that missed a write or lost its items) by the
// cas of what r holds if that is prev's value or one prev supersedes, or
// added if r holds nothing. So the replicas that fell behind catch up with
// the changes they missed, and a lock held for long is back on all of
// them. Adds are checked against the marker like any grant.
func swapOn(ctx context.Context, i int, r *replica, item string, value []byte, ttl int, prev *version) outcome {
	cas := prev.casAt(i)
	if prev == nil || cas != 0 {
		c, err := r.write(ctx, item, value, ttl, cas)
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
	case !bytes.Equal(held, prev.value) && !(prev.supersedes(i, c) && olderGrant(held, prev.value)):
		return outcome{i: i, err: lockext.ErrStoreExists}
	}
	nc, err := r.write(ctx, item, value, ttl, c)
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
	s.log.Debug("store delete", "lock", k.Name, "prev", prev.line(), "replicas", describe(reps, outs))
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
// else by the cas of what r holds if that is prev's value or one prev
// supersedes.
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
	case !bytes.Equal(held, prev.value) && !(prev.supersedes(i, c) && olderGrant(held, prev.value)):
		return lockext.ErrStoreExists
	}
	if err := r.del(ctx, item, c); err != nil && !errors.Is(err, lockext.ErrStoreMiss) {
		return err
	}
	return nil
}
