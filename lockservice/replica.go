package lockservice

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// Errors a lock server's writes fail with besides the store's expected
// outcomes; both match lockext.ErrUnavailable once the manager wraps them.
var (
	// ErrRecovering: the server lost its lock items not long ago, and a
	// grant made before then may still be believed in.
	ErrRecovering = errors.New("lock server recovering")
	// ErrServersDiffer: the server's marker names another lock server list
	// than ours; two proxies would look for one lock in two places.
	ErrServersDiffer = errors.New("lock servers differ between proxies")
)

// replica is one lock server as the service knows it: the marker it
// trusts there, and whether the server is in recovery.
type replica struct {
	addr    string
	conn    Conn
	marker  string // item key of the marker
	layout  string // digest of the lock server list, recorded in the marker
	hold    time.Duration
	timeout time.Duration
	log     *slog.Logger

	adopting sync.Mutex // one adoption at a time: a second one must see the first's marker
	// clash is shared by all the service's replicas: set once any marker
	// names another lock server list, it stops every write.
	clash *atomic.Bool
	// othersMarked reports whether another lock server carries our marker:
	// then one without it lost its state rather than being new.
	othersMarked func(context.Context) bool
	// unmarkedSince is when this proxy first found the server without a
	// marker, for adoptSettle: adopt calls with short deadlines add up.
	unmarkedSince time.Time
	// remembered is until when grants on the server may still run, from
	// this proxy's state file: found without a marker before then, the
	// server lost its state rather than being new.
	remembered time.Time

	// confirmed is when (unix ns) a read of the marker last found the one
	// trusted: the server had lost nothing up to then. Reads are timed
	// from before they were sent.
	confirmed atomic.Int64

	// seen is how long copies a change found behind have stood here
	// (see mayReplace).
	seen sightings

	mu        sync.Mutex
	fresh     bool   // trust a server without a marker: it was just started for us
	known     string // the marker value trusted; "" until adopted
	knownCAS  uint64
	base      int64 // evictions when the marker was written
	evictable bool  // the server evicts items (memcached without -M)
	until     time.Time
	differs   string // the other lock server list, when the marker names one
}

// markerValue is "v1 <epoch> <evictions> <layout>"; the epoch is random,
// with the time it was written after a dot.
func markerValue(evictions int64, layout string) string {
	var b [8]byte
	rand.Read(b[:])
	return fmt.Sprintf("v1 %s.%d %d %s", hex.EncodeToString(b[:]), time.Now().UnixMilli(), evictions, layout)
}

// markerBorn is when a ready marker was written (zero if it does not say).
func markerBorn(v string) time.Time {
	f := strings.Fields(v)
	if len(f) != 4 {
		return time.Time{}
	}
	_, ms, ok := strings.Cut(f[1], ".")
	n, err := strconv.ParseInt(ms, 10, 64)
	if !ok || err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

// newCluster is how long after its first marker a set of lock servers
// counts as new: lock servers adopted one after the other when a cluster
// starts are not taken for ones that lost their state.
const newCluster = 10 * time.Second

// recoveryValue is the marker a proxy that saw the server lose its state
// writes at once: "v1 recovering <until, unix ms> <layout>". Proxies that
// come later learn from it that the server is recovering, and until when.
func recoveryValue(until time.Time, layout string) string {
	return fmt.Sprintf("v1 recovering %d %s", until.UnixMilli(), layout)
}

// parseMarker reads a marker: n is the evictions base of a ready marker,
// or the end of recovery (unix ms) when recovering is true.
func parseMarker(v string) (n int64, recovering bool, layout string, ok bool) {
	f := strings.Fields(v)
	if len(f) != 4 || f[0] != "v1" {
		return 0, false, "", false
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	return n, f[1] == "recovering", f[3], err == nil
}

// State describes a lock server for stats, metrics and logs.
type State struct {
	Addr       string
	Ready      bool
	Recovering bool
	Until      time.Time // end of recovery
	Evictable  bool
	Differs    bool
}

func (r *replica) state() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return State{Addr: r.addr, Ready: r.known != "" && !time.Now().Before(r.until) && r.differs == "",
		Recovering: time.Now().Before(r.until), Until: r.until, Evictable: r.evictable, Differs: r.differs != ""}
}

// ready makes sure the server has a trusted marker and is not in recovery,
// adopting it or ending its recovery when due; it returns the marker
// trusted.
func (r *replica) ready(ctx context.Context) (string, error) {
	r.mu.Lock()
	known, until, differs := r.known, r.until, r.differs
	r.mu.Unlock()
	switch {
	case differs != "":
		return "", ErrServersDiffer
	case time.Now().Before(until):
		return "", ErrRecovering
	case known != "":
		return known, nil
	}
	r.adopting.Lock()
	r.mu.Lock()
	adopted := r.known != "" || time.Now().Before(r.until) || r.differs != ""
	recovered, prev := !r.until.IsZero(), r.knownCAS
	r.mu.Unlock()
	var err error
	switch {
	case adopted: // by somebody else while we waited for the mutex
	case recovered:
		err = r.writeMarker(ctx, prev) // our recovery ran its course
	default:
		err = r.adopt(ctx)
	}
	r.adopting.Unlock()
	if err != nil {
		return "", err
	}
	return r.ready(ctx)
}

// adopt reads the server's marker, counters and settings. A marker present
// is trusted: a ready one was written by whoever waited out any grant the
// server could have lost before, a recovering one says until when to wait.
// A server without one is new, or lost its state: if this proxy's state
// file says grants on it may still run, if another lock server carries
// our marker, or a running proxy announces a recovery within a
// moment (it saw the loss: a proxy watches its servers' markers several
// times a second), it recovers; otherwise it is a new one and gets a ready
// marker.
func (r *replica) adopt(ctx context.Context) error {
	for {
		reply, err := r.conn.Exchange(ctx, []byte("mg "+r.marker+" v c\r\nstats\r\nstats settings\r\n"), nil)
		if err != nil {
			return err
		}
		rs := replies{reply}
		m, err := rs.meta()
		if err != nil {
			return err
		}
		st, err := rs.stats()
		if err != nil {
			return err
		}
		settings, err := rs.stats()
		if err != nil {
			return err
		}
		evictable := settings["evictions"] == "on"
		r.mu.Lock()
		fresh := r.fresh
		if evictable && !r.evictable {
			r.log.Warn("lock server evicts items when full: an eviction puts its locks into recovery; "+
				"run lock servers with -M (and enough -m) or use --lock-replicas 3", "server", r.addr)
		}
		r.evictable = evictable
		r.mu.Unlock()

		switch {
		case m.status == "VA":
			cas, _ := m.flag('c')
			return r.trust(string(m.value), uint64(cas), statInt(st, "evictions"))
		case time.Now().Before(r.remembered):
			r.recover(r.remembered, "found without its marker while this proxy's state file says grants on it may still run")
			return nil
		case fresh:
			return r.writeMarker(ctx, 0)
		case r.othersMarked != nil && r.othersMarked(ctx):
			r.recover(time.Now().Add(r.hold+time.Second), "found without its marker beside lock servers that have theirs")
			return nil
		}
		if r.unmarkedSince.IsZero() {
			r.unmarkedSince = time.Now()
		}
		wait := adoptSettle - time.Since(r.unmarkedSince)
		if wait <= 0 {
			r.unmarkedSince = time.Time{}
			return r.writeMarker(ctx, 0)
		}
		select { // give a proxy that saw the loss the time to say so
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// adoptSettle is how long a proxy waits before taking a server without a
// marker for a new one: several times the marker watch's period plus a
// redial (100 ms), so that a proxy that saw the server lose its state has
// said so. It is paid once, when a cluster is new.
const adoptSettle = 10 * markerWatch

// markerWatch is how often a proxy reads its lock servers' markers, to see
// a flush or a restart (and announce the recovery) before a proxy started
// afterwards takes the server for a new one.
const markerWatch = 100 * time.Millisecond

// readMarker reads the server's marker item as it is now.
func (r *replica) readMarker(ctx context.Context) (metaReply, error) {
	return r.meta(ctx, []byte("mg "+r.marker+" v c\r\n"))
}

// meta sends one meta command and reads its reply.
func (r *replica) meta(ctx context.Context, cmd []byte) (metaReply, error) {
	reply, err := r.conn.Exchange(ctx, cmd, nil)
	if err != nil {
		return metaReply{}, err
	}
	rs := replies{reply}
	return rs.meta()
}

// watch reads the marker once and acts on what changed.
func (r *replica) watch(ctx context.Context) {
	r.mu.Lock()
	known := r.known
	r.mu.Unlock()
	if known == "" {
		return
	}
	sent := time.Now()
	m, err := r.readMarker(ctx)
	if err != nil {
		return
	}
	if r.check(known, m, -1) == nil {
		r.confirmed.Store(sent.UnixNano())
	}
}

// keptSince reports whether the server had lost nothing up to the given
// time: it is trusted, and its marker was found as trusted after then. A
// loss after that look is seen by the next one (or, for an eviction, by
// the next add, which any grant of a lock found free is), and the
// recovery that follows, a second longer than any grant, covers what was
// decided in between.
func (r *replica) keptSince(t time.Time) bool {
	r.mu.Lock()
	ok := r.known != "" && !time.Now().Before(r.until) && r.differs == ""
	r.mu.Unlock()
	return ok && r.confirmed.Load() >= t.UnixNano()
}

// trust adopts a marker value read from the server: a ready marker is
// trusted from now on; a recovering one puts the server into recovery until
// its end, after which a ready marker is written over it.
func (r *replica) trust(value string, cas uint64, evictions int64) error {
	n, recovering, layout, ok := parseMarker(value)
	if !ok {
		return fmt.Errorf("%w: marker %q", errBadReply, value)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if layout != r.layout {
		if r.differs == "" {
			r.log.Error("lock server's marker names another lock server list: refusing lock commands; "+
				"give every proxy the same lock servers, distribution and hash", "server", r.addr, "ours", r.layout, "theirs", layout)
		}
		r.differs = layout
		if r.clash != nil {
			r.clash.Store(true)
		}
		return ErrServersDiffer
	}
	r.knownCAS = cas
	if recovering {
		// Recovered once the time is past (until set, known empty): the
		// next ready() writes a ready marker over this one.
		end := time.UnixMilli(n)
		if !end.After(time.Now()) {
			end = time.Now().Add(-time.Millisecond) // already over
		}
		r.recoverLocked(end, "another proxy saw it lose its lock state")
		return nil
	}
	r.known, r.base = value, n
	if r.evictable && evictions > n {
		r.recoverLocked(time.Now().Add(r.hold+time.Second), "evicted items")
		go r.announce()
	}
	return nil
}

// recover puts the server into recovery until the given time, after this
// proxy saw it lose its state, and tells the other proxies.
func (r *replica) recover(until time.Time, why string) {
	r.mu.Lock()
	r.recoverLocked(until, why)
	r.mu.Unlock()
	go r.announce()
}

// announce writes the recovery marker, so that every proxy, one started
// later included, recovers until the same end. It overwrites what is
// there: a ready marker is no longer true, and another proxy's recovery
// ends no later than ours.
func (r *replica) announce() {
	r.mu.Lock()
	until := r.until
	r.mu.Unlock()
	if !time.Now().Before(until) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	m, err := r.storeMarker(ctx, recoveryValue(until, r.layout), "MS")
	if err != nil || m.status != "HD" {
		return // a later look at the marker sees the loss again
	}
	cas, _ := m.flag('c')
	r.mu.Lock()
	if r.until.Equal(until) {
		r.knownCAS = uint64(cas)
	}
	r.mu.Unlock()
}

func (r *replica) recoverLocked(until time.Time, why string) {
	r.seen.forget()
	if until.After(r.until) {
		if !time.Now().Before(r.until) {
			r.log.Warn("lock server lost its lock state: refusing writes to it until every grant it may have held has run out",
				"server", r.addr, "why", why, "until", until.Format(time.RFC3339))
		}
		r.until = until
	}
	r.known = ""
}

// writeMarker gives the server a new marker, replacing the one with cas
// prev (0: none). Evictions are read first, so that one racing the write
// shows as a later eviction, never as none. If somebody else wrote a
// marker meanwhile, theirs is adopted.
func (r *replica) writeMarker(ctx context.Context, prev uint64) error {
	reply, err := r.conn.Exchange(ctx, []byte("stats\r\n"), nil)
	if err != nil {
		return err
	}
	rs := replies{reply}
	st, err := rs.stats()
	if err != nil {
		return err
	}
	value := markerValue(statInt(st, "evictions"), r.layout)
	mode := "ME"
	if prev != 0 {
		mode = "C" + strconv.FormatUint(prev, 10) // the old marker is still there after evictions
	}
	m, err := r.storeMarker(ctx, value, mode)
	if err == nil && m.status == "NF" {
		m, err = r.storeMarker(ctx, value, "ME") // it went meanwhile
	}
	if err != nil {
		return err
	}
	if m.status != "HD" {
		r.mu.Lock()
		r.fresh = false
		r.mu.Unlock()
		return r.adopt(ctx) // somebody else was quicker
	}
	cas, _ := m.flag('c')
	r.mu.Lock()
	r.known, r.knownCAS, r.base, r.until = value, uint64(cas), statInt(st, "evictions"), time.Time{}
	r.fresh = false // only the first marker may be taken on trust
	r.mu.Unlock()
	r.log.Info("lock server ready", "server", r.addr)
	return nil
}

func (r *replica) storeMarker(ctx context.Context, value, mode string) (metaReply, error) {
	return r.meta(ctx, fmt.Appendf(nil, "ms %s %d %s c\r\n%s\r\n", r.marker, len(value), mode, value))
}

// endRecovery writes a new marker once the recovery time is over.
func (r *replica) endRecovery(ctx context.Context) {
	r.mu.Lock()
	due := !r.until.IsZero() && !time.Now().Before(r.until) && r.known == "" && r.differs == ""
	r.mu.Unlock()
	if due {
		if _, err := r.ready(ctx); err != nil {
			r.log.Warn("lock server: writing its marker failed; retrying", "server", r.addr, "err", err)
		}
	}
}

// check judges the marker read back after a write: the write counts only if
// the marker is still the one trusted before it (and, where the server
// evicts, nothing was evicted since the marker was written). A marker
// replaced by another proxy's is adopted for next time.
// evictions is the server's counter read behind the write, or -1 when the
// server does not evict and it was not read.
func (r *replica) check(trusted string, m metaReply, evictions int64) error {
	switch {
	case m.status == "EN":
		r.recover(time.Now().Add(r.hold+time.Second), "marker gone (flushed, restarted or evicted)")
		return ErrRecovering
	case m.status != "VA":
		return fmt.Errorf("%w: marker: %s", errBadReply, m.status)
	case string(m.value) != trusted:
		cas, _ := m.flag('c')
		if err := r.trust(string(m.value), uint64(cas), max(evictions, 0)); err != nil {
			return err
		}
		return errMarkerMoved
	case evictions >= 0 && evictions > r.baseNow():
		r.recover(time.Now().Add(r.hold+time.Second), "evicted items")
		return ErrRecovering
	}
	return nil
}

// errMarkerMoved: another proxy renewed the marker after a recovery; the
// write is void but may be tried again at once.
var errMarkerMoved = errors.New("lockservice: marker renewed meanwhile")

func (r *replica) baseNow() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.base
}

func (r *replica) evicts() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.evictable
}

// get reads a lock item: its state, cas and seconds left.
func (r *replica) get(ctx context.Context, item string) (st state, cas uint64, ttl int, err error) {
	if _, err := r.ready(ctx); err != nil {
		return state{}, 0, 0, err
	}
	reply, err := r.conn.Exchange(ctx, append(append(append(make([]byte, 0, 16+len(item)), "mg "...), item...), " v c t f\r\n"...), nil)
	if err != nil {
		return state{}, 0, 0, err
	}
	rs := replies{reply}
	m, err := rs.meta()
	if err != nil {
		return state{}, 0, 0, err
	}
	switch m.status {
	case "EN":
		return state{}, 0, 0, lockext.ErrStoreMiss
	case "VA":
		c, _ := m.flag('c')
		f, _ := m.flag('f')
		t, ok := m.flag('t')
		switch {
		case !ok:
			t = -1
		case t > 0:
			t-- // the item outlives its grant by up to a second
		}
		return state{value: m.value, change: uint32(f)}, uint64(c), int(t), nil
	}
	return state{}, 0, 0, fmt.Errorf("%w: mg: %s", errBadReply, m.status)
}

// batches are the buffers lock writes are built in: Exchange keeps no
// reference to a batch once it returns.
var batches = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// write stores an item in state st (its change number in the item's
// flags): added when cas is 0, else compare-and-swapped; ttl is a grant's,
// and the item is written to live a second more, since memcached's clock
// ticks once a second. The marker is read back behind it.
func (r *replica) write(ctx context.Context, item string, st state, ttl int, cas uint64) (uint64, error) {
	for tries := 0; ; tries++ {
		trusted, err := r.ready(ctx)
		if err != nil {
			return 0, err
		}
		newCAS, err := r.writeOnce(ctx, trusted, item, st, ttl, cas)
		if errors.Is(err, errMarkerMoved) {
			if tries == 0 && cas == 0 {
				continue // another proxy wrote a new marker: add again under it
			}
			err = ErrRecovering
		}
		return newCAS, err
	}
}

// writeOnce is one batch of write: the change, the marker read behind it,
// and the evictions counter where the server may evict. A change the
// marker does not confirm is undone.
func (r *replica) writeOnce(ctx context.Context, trusted, item string, st state, ttl int, cas uint64) (uint64, error) {
	bp := batches.Get().(*[]byte)
	defer batches.Put(bp)
	batch := append(append((*bp)[:0], "ms "...), item...)
	batch = strconv.AppendInt(append(batch, ' '), int64(len(st.value)), 10)
	batch = strconv.AppendInt(append(batch, " T"...), int64(ttl+1), 10)
	if st.change != 0 {
		batch = strconv.AppendUint(append(batch, " F"...), uint64(st.change), 10)
	}
	if cas == 0 {
		batch = append(batch, " ME"...)
	} else {
		batch = strconv.AppendUint(append(batch, " C"...), cas, 10)
	}
	batch = append(append(append(batch, " c\r\n"...), st.value...), "\r\n"...)
	batch = append(append(append(batch, "mg "...), r.marker...), " v c\r\n"...)
	evicts := cas == 0 && r.evicts() // a compare-and-swap cannot succeed on an evicted item
	if evicts {
		batch = append(batch, "stats\r\n"...)
	}
	// The batch's buffer takes the replies: nothing read from them is kept
	// once this returns.
	sent := time.Now()
	reply, err := r.conn.Exchange(ctx, batch, batch[len(batch):])
	*bp = batch
	if err != nil {
		return 0, err
	}
	rs := replies{reply}
	m, err := rs.meta()
	if err != nil {
		return 0, err
	}
	mk, err := rs.meta()
	if err != nil {
		return 0, err
	}
	evictions := int64(-1)
	if evicts {
		if evictions, err = rs.evictions(); err != nil {
			return 0, err
		}
	}
	switch m.status {
	case "NS", "EX":
		return 0, lockext.ErrStoreExists
	case "NF":
		return 0, lockext.ErrStoreMiss
	case "HD":
	default:
		return 0, fmt.Errorf("%w: ms: %s", errBadReply, m.status)
	}
	newCAS, _ := m.flag('c')
	if err := r.check(trusted, mk, evictions); err != nil {
		r.undo(item, uint64(newCAS))
		if errors.Is(err, errMarkerMoved) {
			return 0, err
		}
		return 0, ErrRecovering
	}
	r.confirmed.Store(sent.UnixNano())
	return uint64(newCAS), nil
}

// del deletes an item if its cas is still cas.
func (r *replica) del(ctx context.Context, item string, cas uint64) error {
	bp := batches.Get().(*[]byte)
	batch := append(append((*bp)[:0], "md "...), item...)
	batch = append(strconv.AppendUint(append(batch, " C"...), cas, 10), "\r\n"...)
	reply, err := r.conn.Exchange(ctx, batch, batch[len(batch):])
	*bp = batch
	defer batches.Put(bp)
	if err != nil {
		return err
	}
	rs := replies{reply}
	m, err := rs.meta()
	if err != nil {
		return err
	}
	switch m.status {
	case "HD":
		return nil
	case "EX":
		return lockext.ErrStoreExists
	case "NF":
		return lockext.ErrStoreMiss
	}
	return fmt.Errorf("%w: md: %s", errBadReply, m.status)
}

// restore swaps st back over an item a void swap left (cas is its cas),
// so that the replicas agree again; if that fails, its ttl ends it.
func (r *replica) restore(item string, st state, ttl int, cas uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if ttl < 1 {
		ttl = int(r.hold / time.Second) // unknown: the longest a grant could have
	}
	r.write(ctx, item, st, ttl, cas)
}

// undo deletes an item a void write left, so that it blocks nobody; if
// that fails, its ttl ends it.
func (r *replica) undo(item string, cas uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	r.del(ctx, item, cas)
}
