package lockext

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Config holds the Manager's limits.
type Config struct {
	Prefix  string        // namespace of lock items in memcached
	MaxTTL  int           // longest grant, in seconds
	MaxWait time.Duration // longest wait
	Poll    time.Duration // longest pause between looks at a lock held elsewhere
	// Instance names this process in the owners of connection-held locks;
	// it must differ between processes that share lock servers.
	Instance string
	// EarlyHandoff writes the head waiter into the holder's record as its
	// successor, so that a release hands over before memcached is written
	// (see successor). Off, every handoff waits for its write.
	EarlyHandoff bool
}

// Request asks for a lock.
type Request struct {
	Name      string
	TTL       int           // seconds, 1 to Config.MaxTTL
	Wait      time.Duration // 0 tries once
	Owner     string        // empty: the lock belongs to the session
	Reentrant bool
	// OnWait, if set, is called once when the request starts to wait,
	// before it sleeps: the proxy starts watching the client's socket then,
	// and pays nothing for that on grants made at once.
	OnWait func()

	kind  byte
	owner string
}

// Grant is a lock held.
type Grant struct {
	Name  string
	Fence uint64 // grows with every new grant of the name
	TTL   int    // seconds left
	Count int    // reentrancy depth; 1 for exclusive locks
	Owner string
	// Again is set when the grant is one its holder had already: the
	// same owner (or connection) asked again and got it back, ttl
	// refreshed, no level added. Losing its reply takes nothing from the
	// holder, who may know the grant from the reply that made it.
	Again bool
	// Reply numbers this reply among all those the Manager named By (its
	// Config.Instance) made; see Manager.Undelivered.
	Reply uint64
	By    string
}

// Stats are the Manager's counters.
type Stats struct {
	Grants, Waits, Timeouts, Handoffs, Waiters uint64
	// EarlyHandoffs are the handoffs made to a reserved successor before
	// memcached was written.
	EarlyHandoffs uint64
}

// Manager grants locks whose state lives in a Store.
type Manager struct {
	store Store
	cfg   Config

	mu        sync.Mutex
	keys      map[string]*keyState
	lastFence uint64
	lastReply uint64 // numbers the grants made (Grant.Reply)
	closed    bool
	sessions  atomic.Uint64

	grants, waits, timeouts, handoffs, early atomic.Uint64
	waiters                                  atomic.Int64
}

// keyState is what this process knows of one lock name: the grant it made,
// if that grant is still believed current, and its queue of waiters.
type keyState struct {
	key   Key
	held  *holding
	queue []*waiter  // queue[0] is the head: the only one that tries
	first [1]*waiter // queue's first array: a lone waiter costs no slice
	seen  uint64     // highest fence seen on this name, so ours go above it
	// replied is the number of the latest reply made for the grant held
	// here (Grant.Reply), or of a change made to it since; see latest.
	replied uint64
	// handedOn is the fence of the last grant released here by an early
	// handoff. Until the write confirming the handoff lands, the record
	// still names that grant; a release of it again (a retried unlock) is
	// of a grant that has ended, whatever the record says.
	handedOn uint64
	handing  int           // releases handing the lock on; while any is, the head must not try
	trying   bool          // the head is trying or reserving, or a handoff confirming; a release waits for it to finish
	tried    chan struct{} // closed when that write ends; made by whoever waits for it (see whenTried)
}

// holding is a grant made by this process, with the version it left in
// memcached. It is a hint, never the truth: another process may have
// released, extended or shortened the grant since.
type holding struct {
	rec     record
	ver     Version
	expires time.Time
	checked time.Time // when memcached last confirmed it (a grant, or a look by the head waiter)
	// releasing is set once a release of the grant has begun: its holder
	// asking again then queues behind the release, which comes first.
	releasing bool
	// early is set while the grant, handed over ahead of the write that
	// names it the holder (see handOver), is not known to be in memcached:
	// memcached names it the successor of a grant that has ended, and only
	// this holding says so. It is then no hint to drop when a write finds
	// the record changed; an extend through another process, say, changes
	// the version and keeps the successor.
	early bool
}

// live reports whether the grant's ttl still runs. A version outlives no
// grant: past its ttl the item may be gone and its cas (after a server
// restart) may name somebody else's item, so it is read afresh.
func (h *holding) live() bool { return time.Now().Before(h.expires) }

// checkDue reports whether the head waiter should look in memcached again,
// and if so counts the look as made; m.mu must be held.
func (h *holding) checkDue(every time.Duration) bool {
	if time.Since(h.checked) < every {
		return false
	}
	h.checked = time.Now()
	return true
}

type waiter struct {
	req   Request       // a copy: the waiter is the one allocation a wait needs
	wake  chan struct{} // a signal: something changed, look again
	grant *Grant        // set under the mutex by a handoff
	fence uint64        // the fence of its latest reservation as successor, if it has one
	// written are the fences of the grants and reservations written for it
	// (as successor, or by a release handing it the lock), the latest last.
	// Any of them may have landed though its writer saw the write fail, and
	// be in force when the waiter looks: it is then the grant the waiter
	// asked for, not one its owner held before.
	written []uint64
}

// maxWritten bounds waiter.written: a waiter is written in again only when
// a write fails or a record changes under it, a few times in a long wait.
const maxWritten = 8

// wrote notes a fence written for w; m.mu must be held.
func (w *waiter) wrote(fence uint64) {
	if len(w.written) == maxWritten {
		w.written = append(w.written[:0], w.written[1:]...)
	}
	w.written = append(w.written, fence)
}

// writtenFor reports whether fence was written for w; m.mu must be held.
func (w *waiter) writtenFor(fence uint64) bool { return slices.Contains(w.written, fence) }

// successorOf makes w the successor of the grant this process holds,
// with a fence of its own; m.mu must be held.
func (m *Manager) successorOf(st *keyState, w *waiter) *successor {
	w.fence = m.nextFence(st)
	w.wrote(w.fence)
	return &successor{fence: w.fence, mode: mode(&w.req), kind: w.req.kind, ttl: w.req.TTL, by: m.cfg.Instance, owner: w.req.owner}
}

// ours reports whether this process reserved s. It alone may grant s
// before writing, and it alone knows whether s still waits.
func (m *Manager) ours(s *successor) bool { return s != nil && s.by == m.cfg.Instance }

// inForce is rec.inForce(ttl) with what this process knows besides: a
// successor it handed the lock to ahead of the write that names it the
// holder (see handOver) holds the lock, whatever the record still says;
// m.mu must be held.
func (st *keyState) inForce(rec record, ttl int) (record, int) {
	cur, left := rec.inForce(ttl)
	if n := rec.next; n != nil && cur.fence != n.fence {
		if h := st.held; h != nil && h.rec.fence == n.fence && h.live() {
			return n.holder(), max(int(time.Until(h.expires).Seconds()+0.999), 1)
		}
	}
	return cur, left
}

// abandoned reports whether s is a successor this process reserved for a
// waiter that is no longer here; m.mu must be held. One handed the lock
// early holds it here (see handOver), whatever the record still says.
func (m *Manager) abandoned(st *keyState, s *successor) bool {
	if !m.ours(s) {
		return false
	}
	if h := st.held; h != nil && h.rec.fence == s.fence && h.live() {
		return false
	}
	for _, w := range st.queue {
		if w.writtenFor(s.fence) {
			return false
		}
	}
	return true
}

// reservedFor reports whether the grant this process holds names w as its
// successor in the version this process last wrote; m.mu must be held.
func (m *Manager) reservedFor(st *keyState, w *waiter) bool {
	h := st.held
	return h != nil && m.ours(h.rec.next) && h.rec.next.fence == w.fence
}

// New returns a Manager over store.
func New(store Store, cfg Config) *Manager {
	if cfg.Instance == "" {
		cfg.Instance = fmt.Sprintf("%08x", rand.Uint32())
	}
	return &Manager{store: store, cfg: cfg, keys: make(map[string]*keyState)}
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	return Stats{Grants: m.grants.Load(), Waits: m.waits.Load(), Timeouts: m.timeouts.Load(),
		Handoffs: m.handoffs.Load(), Waiters: uint64(max(m.waiters.Load(), 0)), EarlyHandoffs: m.early.Load()}
}

// Close makes every wait end with ErrClosed and refuses new ones.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, st := range m.keys {
		for _, w := range st.queue {
			signal(w.wake)
		}
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (m *Manager) validate(req *Request) error {
	switch {
	case req.TTL < 1 || req.TTL > m.cfg.MaxTTL:
		return fmt.Errorf("%w: ttl must be 1 to %d", ErrBadRequest, m.cfg.MaxTTL)
	case req.Wait < 0 || req.Wait > m.cfg.MaxWait:
		return fmt.Errorf("%w: wait must be 0 to %d ms", ErrBadRequest, m.cfg.MaxWait.Milliseconds())
	case len(req.Owner) > 64:
		return fmt.Errorf("%w: owner longer than 64 bytes", ErrBadRequest)
	}
	return nil
}

// state returns the name's state, creating it; m.mu must be held.
func (m *Manager) state(name string) *keyState {
	st := m.keys[name]
	if st == nil {
		st = &keyState{key: Key{Name: name, Item: itemKey(m.cfg.Prefix, name)}}
		st.queue = st.first[:0]
		m.keys[name] = st
	}
	return st
}

// forget drops a state nobody holds or waits for; m.mu must be held.
func (m *Manager) forget(st *keyState) {
	if st.held == nil && len(st.queue) == 0 && st.handing == 0 && !st.trying {
		delete(m.keys, st.key.Name)
	}
}

// nextFence returns a fence above every fence this process has issued or
// seen for the name. Fences start from the clock in microseconds, so they
// keep growing after the lock item is evicted or its server restarts, and
// across processes whose clocks agree.
func (m *Manager) nextFence(st *keyState) uint64 {
	f := max(uint64(time.Now().UnixMicro()), m.lastFence+1, st.seen+1)
	m.lastFence = f
	st.seen = f
	return f
}

// LockConn takes a lock that belongs to a connection (a Session, or a
// connection on another process that forwarded its request here): conn
// names it, and the same conn asking again gets the same grant.
func (m *Manager) LockConn(ctx context.Context, req Request, conn string) (Grant, error) {
	req.kind, req.owner = kindConn, conn
	return m.lock(ctx, &req)
}

// Lock takes a lock for req.Owner, which must be set: a lease that outlives
// any connection.
func (m *Manager) Lock(ctx context.Context, req Request) (Grant, error) {
	if req.Owner == "" {
		return Grant{}, fmt.Errorf("%w: no owner", ErrBadRequest)
	}
	req.kind, req.owner = kindOwner, req.Owner
	return m.lock(ctx, &req)
}

// lock takes the lock for req, waiting in line behind earlier requests.
func (m *Manager) lock(ctx context.Context, req *Request) (Grant, error) {
	if err := m.validate(req); err != nil {
		return Grant{}, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return Grant{}, ErrClosed
	}
	st := m.state(req.Name)
	if h := st.held; h != nil && h.rec.sameHolder(req) && !h.releasing && h.live() {
		m.mu.Unlock()
		if g, err, done := m.refresh(ctx, st, req); done {
			return g, err
		}
		m.mu.Lock()
	}
	w := &waiter{req: *req, wake: make(chan struct{}, 1)}
	st.queue = append(st.queue, w)
	m.waiters.Add(1)
	m.mu.Unlock()
	defer m.waiters.Add(-1)
	return m.wait(ctx, st, w)
}

// wait runs w's turn in the queue: the head tries memcached, the others
// sleep until a signal makes them the head or their wait runs out.
func (m *Manager) wait(ctx context.Context, st *keyState, w *waiter) (Grant, error) {
	req := &w.req
	deadline := time.Now().Add(req.Wait)
	poll := pacer{next: time.Millisecond, max: m.cfg.Poll}
	holderTTL := -1
	waited := false
	var timer *time.Timer // made on the first sleep: most grants never sleep
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		m.mu.Lock()
		if g := w.grant; g != nil {
			m.mu.Unlock()
			return *g, nil
		}
		if m.closed {
			m.mu.Unlock()
			if g := m.quit(ctx, st, w); g != nil {
				return *g, nil
			}
			return Grant{}, ErrClosed
		}
		if ctx.Err() != nil {
			// Cancelled (the client hung up, or the forwarding proxy said
			// cancel): a grant made now would reach nobody, and a lease
			// would stand for its ttl. One handed over before is kept.
			m.mu.Unlock()
			return m.giveUp(ctx, st, w, holderTTL)
		}
		try, reserve, sleep, ttl := m.turn(st, w)
		if ttl >= 0 {
			holderTTL = ttl
		}
		m.mu.Unlock()

		if reserve {
			m.reserve(ctx, st, w)
		}
		if try {
			g, ttl, err := m.attempt(ctx, st, w)
			m.mu.Lock()
			m.endTry(st)
			if err == nil || !errors.Is(err, ErrNotLocked) {
				m.leave(st, w)
				m.mu.Unlock()
				if err == nil {
					m.grants.Add(1)
				}
				return g, err
			}
			m.mu.Unlock()
			holderTTL = ttl
			sleep = poll.pause() // held elsewhere: look again after a jittered, growing pause
		}
		remaining := time.Until(deadline)
		if remaining <= 0 || ctx.Err() != nil {
			return m.giveUp(ctx, st, w, holderTTL)
		}
		if !waited {
			waited = true
			m.waits.Add(1)
			if req.OnWait != nil {
				req.OnWait()
			}
		}
		if timer == nil {
			timer = time.NewTimer(min(sleep, remaining))
		} else {
			timer.Reset(min(sleep, remaining))
		}
		select {
		case <-w.wake:
		case <-timer.C:
		case <-ctx.Done():
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// turn decides, under m.mu, whether w tries memcached now, and otherwise
// how long it sleeps unless woken; ttl is the local holder's remaining
// seconds, or -1. Only the head tries. While this process holds the lock,
// the holder's release hands it over, so the head only looks now and then
// (at the poll interval) in case the grant was released, shortened or
// expired through another process: what we remember is a hint. A request
// that tries once always looks.
//
// A head that waits for a grant this process holds first has itself
// written into that grant's record as its successor (reserve), unless it
// is already: then the release can hand over before it writes.
func (m *Manager) turn(st *keyState, w *waiter) (try, reserve bool, sleep time.Duration, ttl int) {
	try = st.queue[0] == w && st.handing == 0 && !st.trying
	sleep, ttl = time.Duration(math.MaxInt64), -1
	if h := st.held; h != nil && try && w.req.Wait > 0 {
		until := time.Until(h.expires)
		ttl = max(int(until.Seconds()+0.5), 0)
		if until > 0 && !h.checkDue(m.cfg.Poll) {
			try, sleep = false, min(until, m.cfg.Poll)
			reserve = m.cfg.EarlyHandoff && !m.reservedFor(st, w) && (h.rec.next == nil || m.ours(h.rec.next))
		}
	}
	if try || reserve {
		st.trying = true
	}
	return try, reserve, sleep, ttl
}

// reserve writes w, the head, into the record of the grant this process
// holds as its successor. A record that changed meanwhile drops the hint,
// unless the grant is an early one (see holding.early): the head then looks
// in memcached on its next turn.
func (m *Manager) reserve(ctx context.Context, st *keyState, w *waiter) {
	m.mu.Lock()
	h := st.held
	if h == nil || !h.live() { // changed by an extend or refresh meanwhile
		m.endTry(st)
		m.mu.Unlock()
		return
	}
	rec := h.rec
	rec.next = m.successorOf(st, w)
	holdTTL := max(int(math.Ceil(time.Until(h.expires).Seconds())), 1)
	m.mu.Unlock()
	ver, err := m.store.CompareAndSwap(ctx, st.key, rec.encode(), rec.itemTTL(holdTTL), h.ver)
	m.mu.Lock()
	switch {
	case err == nil && st.held == h:
		h.rec, h.ver, h.early = rec, ver, false
	case err == nil, errors.Is(err, ErrStoreExists), errors.Is(err, ErrStoreMiss):
		if st.held == h { // else an extend wrote meanwhile, and knows better
			m.stale(st, h)
		}
	}
	m.mu.Unlock()
	m.afterWrite(ctx, st, 0) // w may have left meanwhile
}

// stale handles a write that found the record of h, the grant held here,
// changed: the hint is dropped, and the head looks in memcached. An early
// grant is kept (see holding.early); the head's look finds it in force
// (see keyState.inForce) unless it was released through another process
// meanwhile. m.mu must be held.
func (m *Manager) stale(st *keyState, h *holding) {
	if h.early {
		h.checked = time.Time{}
		return
	}
	st.held = nil
}

// whenTried returns a channel closed when the write of this process on
// its way (st.trying) ends; m.mu must be held.
func (st *keyState) whenTried() chan struct{} {
	if st.tried == nil {
		st.tried = make(chan struct{})
	}
	return st.tried
}

// endTry ends a write that releases wait for; m.mu must be held.
func (m *Manager) endTry(st *keyState) {
	st.trying = false
	if st.tried != nil {
		close(st.tried)
		st.tried = nil
	}
}

// giveUp ends a wait that ran out or was cancelled, unless a handoff won
// the race: then the grant is kept.
func (m *Manager) giveUp(ctx context.Context, st *keyState, w *waiter, holderTTL int) (Grant, error) {
	if granted := m.quit(ctx, st, w); granted != nil {
		return *granted, nil
	}
	if ctx.Err() != nil {
		return Grant{}, ctx.Err()
	}
	m.timeouts.Add(1)
	return Grant{}, &NotLockedError{HolderTTL: holderTTL}
}

// quit takes w out of the queue and returns the grant a handoff made it
// meanwhile, if one did. A waiter that leaves the queue empty while the
// holder's record names a successor of ours that has gone (w, or one that
// left before w, leaving it no time to reserve itself) writes that
// successor out (see afterWrite), unless a write is on its way that will
// see to it: other processes would otherwise hand the lock to it, or take
// it for the holder once the grant ends.
func (m *Manager) quit(ctx context.Context, st *keyState, w *waiter) *Grant {
	m.mu.Lock()
	granted := w.grant
	m.leave(st, w)
	unreserve := granted == nil && st.held != nil && len(st.queue) == 0 && m.abandoned(st, st.held.rec.next) && !st.trying
	if unreserve {
		st.trying = true
	}
	m.mu.Unlock()
	if unreserve {
		m.afterWrite(context.WithoutCancel(ctx), st, 0)
	}
	return granted
}

// pacer spaces out looks at a lock held by another process: jittered,
// doubling up to max.
type pacer struct{ next, max time.Duration }

func (p *pacer) pause() time.Duration {
	d := p.next/2 + rand.N(p.next/2+1)
	p.next = min(p.next*2, p.max)
	return d
}

// leave takes w out of the queue and wakes the new head; m.mu must be held.
func (m *Manager) leave(st *keyState, w *waiter) {
	for i, q := range st.queue {
		if q == w {
			st.queue = append(st.queue[:i], st.queue[i+1:]...)
			if i == 0 && len(st.queue) > 0 {
				signal(st.queue[0].wake)
			}
			break
		}
	}
	m.forget(st)
}

// attempt tries once to take the lock in memcached for w. It returns
// ErrNotLocked with the holder's ttl when somebody else holds it.
func (m *Manager) attempt(ctx context.Context, st *keyState, w *waiter) (Grant, int, error) {
	req := &w.req
	for tries := 0; tries < 8; tries++ {
		m.mu.Lock()
		mine := record{fence: m.nextFence(st), mode: mode(req), count: 1, kind: req.kind, owner: req.owner}
		m.mu.Unlock()
		ver, err := m.store.Add(ctx, st.key, mine.encode(), req.TTL)
		if err == nil {
			return m.granted(st, mine, ver, req.TTL), 0, nil
		}
		if !errors.Is(err, ErrStoreExists) {
			return Grant{}, 0, unavailable(err)
		}
		it, err := m.store.Get(ctx, st.key)
		if errors.Is(err, ErrStoreMiss) {
			continue // released in between: add again
		}
		if err != nil {
			return Grant{}, 0, unavailable(err)
		}
		rec, err := decodeRecord(it.Value)
		if err != nil {
			return Grant{}, 0, err
		}
		m.mu.Lock()
		cur, ttl := st.inForce(rec, it.TTL)
		st.seen = max(st.seen, rec.fence)
		if rec.next != nil {
			st.seen = max(st.seen, rec.next.fence)
		}
		if it.Disputed {
			// Held, but what was read may never have been granted: this
			// very request's add of a moment ago, say, lost and not yet
			// undone. Taken for ours and written back, it would go over
			// the grant that beat it (an older fence, so taken for stale)
			// on the servers that hold that grant. Look again later.
			m.mu.Unlock()
			return Grant{}, ttl, ErrNotLocked
		}
		if h := st.held; h != nil && h.rec.fence != cur.fence {
			st.held = nil // released or taken over through another process
		}
		abandoned := rec.next != nil && cur.fence == rec.next.fence && m.abandoned(st, rec.next)
		forW := w.writtenFor(cur.fence) // set under m.mu, by whoever wrote them
		m.mu.Unlock()
		if abandoned {
			// A successor of ours that left, still named after its grant
			// ran out (the write taking it out failed): the lock is free.
			ver, err := m.store.CompareAndSwap(ctx, st.key, mine.encode(), req.TTL, it.Version)
			if err == nil {
				return m.granted(st, mine, ver, req.TTL), 0, nil
			}
			if errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss) {
				continue
			}
			return Grant{}, 0, unavailable(err)
		}
		if !cur.sameHolder(req) {
			return Grant{}, ttl, ErrNotLocked
		}
		if rec.next != nil && cur.fence == rec.fence && !m.ours(rec.next) {
			// The holder asks again while another process has reserved its
			// successor: that process may have handed the lock over already,
			// ahead of the write that says so (see handOver), and only it
			// knows. Renewing here could grant the lock twice.
			return Grant{}, ttl, ErrNotLocked
		}
		// Ours already: taken through another process or before a lost
		// reply, reserved for us by a grant whose time is up (or made the
		// holder by a release elsewhere), or handed to us by a release
		// whose write landed unbeknown to it. A grant written for this
		// very request is the level it asks for, taken as it is: a level
		// on top would outlast its owner's unlock.
		g, err := m.renew(ctx, st, req, cur, it.Version, req.Reentrant && !forW)
		if errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss) {
			continue
		}
		g.Again = cur.fence == rec.fence && !req.Reentrant && !forW // a grant written for w is new to it
		return g, 0, err
	}
	return Grant{}, -1, ErrNotLocked
}

// refresh serves a request from the holder of the local grant: the same
// grant back, ttl refreshed, one level deeper for rlock. done is false when
// the local grant turned out stale and the request must queue.
//
// It writes only when no other write of this process on the name is on
// its way: the confirmation of the early handoff that made this very
// grant, or a waiter's reservation, would otherwise change the version
// under it, and the holder queue behind a waiter that waits for it.
func (m *Manager) refresh(ctx context.Context, st *keyState, req *Request) (Grant, error, bool) {
	m.mu.Lock()
	for st.trying {
		tried := st.whenTried()
		m.mu.Unlock()
		select {
		case <-tried:
		case <-ctx.Done():
			m.mu.Lock()
			m.forget(st)
			m.mu.Unlock()
			return Grant{}, ctx.Err(), true
		}
		m.mu.Lock()
	}
	h := st.held
	if h == nil || !h.rec.sameHolder(req) || h.releasing || !h.live() {
		m.mu.Unlock()
		return Grant{}, nil, false
	}
	st.trying = true
	m.mu.Unlock()
	g, err := m.renew(ctx, st, req, h.rec, h.ver, req.Reentrant)
	stale := errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss)
	if stale {
		m.mu.Lock()
		if st.held == h {
			m.stale(st, h)
		}
		m.mu.Unlock()
	}
	m.afterWrite(ctx, st, 0)
	if stale {
		return Grant{}, nil, false
	}
	g.Again = !req.Reentrant
	return g, err, true
}

// renew writes cur back for its holder: ttl refreshed, and one level
// deeper if deeper (a reentrant request taking another level).
func (m *Manager) renew(ctx context.Context, st *keyState, req *Request, cur record, ver Version, deeper bool) (Grant, error) {
	if cur.mode != mode(req) {
		return Grant{}, ErrModeMismatch
	}
	if deeper {
		cur.count++
	}
	newVer, err := m.store.CompareAndSwap(ctx, st.key, cur.encode(), cur.itemTTL(req.TTL), ver)
	if err != nil {
		if errors.Is(err, ErrStoreExists) || errors.Is(err, ErrStoreMiss) {
			return Grant{}, err
		}
		return Grant{}, unavailable(err)
	}
	return m.granted(st, cur, newVer, req.TTL), nil
}

// granted records a grant made, or changed, by this process. Either way
// it is the latest reply for the grant (see latest): a change made on the
// holder's behalf (an extend, a level released) says the holder knows it.
func (m *Manager) granted(st *keyState, rec record, ver Version, ttl int) Grant {
	h := newHolding(rec, ver, ttl)
	m.mu.Lock()
	defer m.mu.Unlock()
	st.held = h
	return m.reply(st, h.grant(st.key.Name, ttl))
}

// reply numbers g, about to be told to its holder, as the latest reply
// for the grant held on st; m.mu must be held.
func (m *Manager) reply(st *keyState, g Grant) Grant {
	m.lastReply++
	st.replied = m.lastReply
	g.Reply, g.By = m.lastReply, m.cfg.Instance
	return g
}

// newHolding is a grant of rec for ttl seconds from now, at version ver.
func newHolding(rec record, ver Version, ttl int) *holding {
	now := time.Now()
	return &holding{rec: rec, ver: ver, expires: now.Add(time.Duration(ttl) * time.Second), checked: now}
}

// grant is what the holder is told.
func (h *holding) grant(name string, ttl int) Grant {
	return Grant{Name: name, Fence: h.rec.fence, TTL: ttl, Count: h.rec.count, Owner: h.rec.owner}
}

// give hands g to the waiter st.queue[i], takes it out of the queue and
// wakes it; m.mu must be held.
func (m *Manager) give(st *keyState, i int, g Grant) {
	w := st.queue[i]
	w.grant = &g
	if i == 0 {
		st.queue = st.queue[1:]
	} else {
		st.queue = append(st.queue[:i], st.queue[i+1:]...)
	}
	signal(w.wake)
	m.grants.Add(1)
	m.handoffs.Add(1)
}

func mode(req *Request) byte {
	if req.Reentrant {
		return modeReentrant
	}
	return modeExclusive
}
