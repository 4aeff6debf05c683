package lockservice

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
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
	"github.com/memcachedlock/memcachedlock/ring"
)

// Config is what the service needs; zero fields are errors unless noted.
type Config struct {
	Servers      []ring.Server // the lock servers
	Distribution string
	Hash         string
	Replicas     int // lock servers per name: odd, at most len(Servers); 0 is 1

	Prefix  string        // namespace of lock items
	MaxTTL  int           // longest grant, seconds: the recovery time
	MaxWait time.Duration // longest wait
	Poll    time.Duration // longest pause between looks at a lock held elsewhere
	Timeout time.Duration // longest wait for a lock server

	// Fresh trusts lock servers found without a marker at start: they were
	// just started for this proxy and hold no grants. A restarted server
	// looks the same, so this is for make run and tests, never production.
	Fresh bool

	// StateFile, if set, is where this proxy keeps until when grants on
	// each lock server may still run (see statefile.go); empty: none.
	StateFile string

	// Instance names this process among the proxies; empty: random.
	Instance string
	// EarlyHandoff: see lockext.Config.
	EarlyHandoff bool
	Logger       *slog.Logger
}

// Service is the lock service of one proxy.
type Service struct {
	cfg      Config
	store    *store
	manager  *lockext.Manager
	replicas []*replica
	members  *members
	peers    *peers

	forwardedOut, forwardedIn, forwardFailed atomic.Uint64
	stateFailing                             bool // the last save of the state file failed; tend only

	quit      chan struct{}
	quitOnce  sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New builds the service over the lock servers, reached through dial.
func New(cfg Config, dial func(addr string) Conn) (*Service, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.Replicas%2 == 0 || cfg.Replicas > len(cfg.Servers) || cfg.Replicas > 7 {
		return nil, fmt.Errorf("lock replicas must be odd, at most 7 and at most the number of lock servers (%d); got %d",
			len(cfg.Servers), cfg.Replicas)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r, err := ring.New(cfg.Servers, cfg.Distribution, cfg.Hash)
	if err != nil {
		return nil, err
	}
	if cfg.Instance == "" {
		var b [6]byte
		rand.Read(b[:])
		cfg.Instance = hex.EncodeToString(b[:])
	}
	s := &Service{cfg: cfg, quit: make(chan struct{}), members: newMembers(cfg.Prefix, cfg.Instance, Layout(cfg)),
		peers: &peers{timeout: cfg.Timeout, links: make(map[string]*peerLink)}}
	layout := Layout(cfg)
	var remembered map[string]time.Time
	if cfg.StateFile != "" {
		if remembered, err = loadState(cfg.StateFile); err != nil {
			return nil, fmt.Errorf("lock state file: %w", err)
		}
	}
	for _, srv := range r.Servers() {
		s.replicas = append(s.replicas, &replica{
			addr: srv.Addr, conn: dial(srv.Addr), marker: cfg.Prefix, layout: layout,
			hold: time.Duration(cfg.MaxTTL) * time.Second, timeout: cfg.Timeout, log: cfg.Logger, fresh: cfg.Fresh,
			remembered: remembered[srv.Addr],
		})
	}
	s.store = &store{ring: r, replicas: s.replicas, n: cfg.Replicas}
	for _, rep := range s.replicas {
		s.store.alone = append(s.store.alone, []*replica{rep})
		rep.clash = &s.store.clash
	}
	s.manager = lockext.New(s.store, lockext.Config{
		Prefix: cfg.Prefix, MaxTTL: cfg.MaxTTL, MaxWait: cfg.MaxWait, Poll: cfg.Poll, Instance: cfg.Instance, EarlyHandoff: cfg.EarlyHandoff,
	})
	for _, rep := range s.replicas {
		rep.othersMarked = func(ctx context.Context) bool { return s.othersMarked(ctx, rep) }
	}
	if cfg.Fresh {
		s.adoptFresh()
	}
	s.wg.Add(1 + len(s.replicas))
	go s.tend()
	for _, rep := range s.replicas {
		go s.watch(rep)
	}
	return s, nil
}

// othersMarked reports whether a lock server other than r carries a marker
// of our layout that says r lost its state: a recovery marker, or a ready
// one older than a new cluster's start.
func (s *Service) othersMarked(ctx context.Context, r *replica) bool {
	for _, o := range s.replicas {
		if o == r {
			continue
		}
		m, err := o.readMarker(ctx)
		if err != nil || m.status != "VA" {
			continue
		}
		_, recovering, layout, ok := parseMarker(string(m.value))
		if ok && layout == r.layout && (recovering || time.Since(markerBorn(string(m.value))) > newCluster) {
			return true
		}
	}
	return false
}

// watch reads r's marker several times a second, so that a flush or a
// restart is seen, and announced to proxies that start later, at once.
func (s *Service) watch(r *replica) {
	defer s.wg.Done()
	tick := time.NewTicker(markerWatch)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		r.watch(ctx)
		cancel()
	}
}

// adoptFresh adopts every lock server now, trusting those without a
// marker: Fresh speaks of the servers as they are at start. A server that
// cannot be reached now is adopted later like any other.
func (s *Service) adoptFresh() {
	var wg sync.WaitGroup
	for _, r := range s.replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			defer cancel()
			r.ready(ctx)
		}()
	}
	wg.Wait()
	for _, r := range s.replicas {
		r.mu.Lock()
		r.fresh = false
		r.mu.Unlock()
	}
}

// Layout is the digest of what decides where a lock lives, recorded in
// every lock server's marker: proxies that disagree on it must not share
// lock servers.
func Layout(cfg Config) string {
	var b strings.Builder
	for _, srv := range cfg.Servers {
		fmt.Fprintf(&b, "%s/%d/%s,", srv.Addr, srv.Weight, srv.Name)
	}
	fmt.Fprintf(&b, "%s,%s,%d,%s", cfg.Distribution, cfg.Hash, cfg.Replicas, cfg.Prefix)
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:8])
}

// Advertise sets the address other proxies reach this one at (its client
// port) and puts it in the registry, making it home for a share of the
// lock names. Without it this proxy forwards to others but is nobody's
// home.
func (s *Service) Advertise(addr string) {
	s.members.advertise(addr)
	s.refreshMembers()
}

func (s *Service) refreshMembers() (read bool) {
	s.onRegistry(func(ctx context.Context, conns []Conn) { read = s.members.refresh(ctx, conns) })
	return read
}

// onRegistry runs f over the connections to every lock server, which all
// hold the registry.
func (s *Service) onRegistry(f func(ctx context.Context, conns []Conn)) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	conns := make([]Conn, len(s.replicas))
	for i, r := range s.replicas {
		conns[i] = r.conn
	}
	f(ctx, conns)
}

// tend adopts lock servers, ends their recoveries on time (so that the
// state shown is current even without lock traffic) and keeps this
// proxy's registration alive.
func (s *Service) tend() {
	defer s.wg.Done()
	tick := time.NewTicker(memberRenew)
	defer tick.Stop()
	for {
		for _, r := range s.replicas {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			r.endRecovery(ctx)
			r.ready(ctx)
			cancel()
		}
		s.saveState()
		s.refreshMembers()
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
	}
}

// Stats are the service's counters.
type Stats struct {
	lockext.Stats
	ForwardedOut  uint64 // requests sent to a name's home proxy
	ForwardedIn   uint64 // requests served here as home for another proxy
	ForwardFailed uint64 // forwards that fell back to serving the name here
	Proxies       int    // proxies in the registry, this one included
}

// Stats returns the counters.
func (s *Service) Stats() Stats {
	return Stats{Stats: s.manager.Stats(), ForwardedOut: s.forwardedOut.Load(), ForwardedIn: s.forwardedIn.Load(),
		ForwardFailed: s.forwardFailed.Load(), Proxies: len(s.members.list())}
}

// States describes every lock server.
func (s *Service) States() []State {
	out := make([]State, len(s.replicas))
	for i, r := range s.replicas {
		out[i] = r.state()
	}
	return out
}

// Stop begins a shutdown: every wait here ends with lockext.ErrClosed and
// this proxy leaves the registry, so that others stop forwarding to it at
// their next look. Requests still being carried out go on, forwarded ones
// too: the links to homes stay open until Close, so that connections
// finishing meanwhile release their locks at the homes, which hand them
// on at once.
func (s *Service) Stop() {
	s.manager.Close()
	s.quitOnce.Do(func() {
		close(s.quit)
		s.wg.Wait() // tend renews the entry no more
		s.members.advertise("")
		s.onRegistry(s.members.leave)
	})
}

// Close stops the service (see Stop) and closes its links to homes.
func (s *Service) Close() {
	s.Stop()
	s.closeOnce.Do(s.peers.closeAll)
}

// Session is one client connection's use of the service. A name whose
// home is another proxy is forwarded there; when that proxy cannot be
// reached, the name is served here.
type Session struct {
	svc *Service
	ls  *lockext.Session

	mu        sync.Mutex
	forwarded map[string]uint64 // connection-owned grants made by a home: name -> fence
	closed    bool
}

// NewSession starts a session.
func (s *Service) NewSession() *Session { return &Session{svc: s, ls: s.manager.NewSession()} }

// remote returns the link to name's home, or nil when this proxy is home
// (or no home is known, or the service is closed: a connection finishing
// meanwhile releases its locks here, and no link outlives the service).
func (s *Service) remote(name string) *peerLink {
	m, ok := s.members.home(name)
	if !ok || m.instance == s.cfg.Instance {
		return nil
	}
	return s.peers.link(m)
}

// forward asks name's home the request that req makes, which may wait
// there for wait; ok is false when the name must be served here (err then
// says why: errAnswerLost when the home may have carried the request out).
func (s *Service) forward(ctx context.Context, name string, req func() string, onWait func(), wait time.Duration) (f []string, err error, ok bool) {
	l := s.remote(name)
	if l == nil {
		return nil, nil, false
	}
	return s.ask(ctx, l, req(), onWait, wait, nil)
}

// ask sends req to the home at the other end of l; see forward.
// late, when set, takes the answer the caller gave up on (see
// peerLink.call), for as long as a grant can last.
func (s *Service) ask(ctx context.Context, l *peerLink, req string, onWait func(), wait time.Duration, late func([]string)) (f []string, err error, ok bool) {
	s.forwardedOut.Add(1)
	f, err = l.call(ctx, req, onWait, wait, late, time.Duration(s.cfg.MaxTTL)*time.Second)
	if errors.Is(err, errPeer) {
		s.forwardFailed.Add(1)
		return nil, err, false
	}
	if err == nil && len(f) > 0 && f[0] == "ERR" {
		err = decodeErr(f[1:])
		// A cancellation we did not ask for is the home's: its link here
		// ended under the request, or it is going. Like ErrClosed, that
		// says nothing of the lock.
		if errors.Is(err, errPeer) || errors.Is(err, context.Canceled) && ctx.Err() == nil {
			s.forwardFailed.Add(1)
			return nil, nil, false
		}
	}
	return f, err, true
}

// Lock takes a lock; see lockext.Request.
func (ss *Session) Lock(ctx context.Context, req lockext.Request) (lockext.Grant, error) {
	l := ss.svc.remote(req.Name)
	if onWait := req.OnWait; onWait != nil && l != nil {
		var once sync.Once // the home may say "waiting", then the wait go on here
		req.OnWait = func() { once.Do(onWait) }
	}
	start := time.Now()
	var f []string
	var err error
	ok := false
	if l != nil {
		f, err, ok = ss.svc.ask(ctx, l, lockLine(req, ss.ls.ID()), req.OnWait, req.Wait, func(f []string) { ss.late(req, l.instance, f) })
	}
	if !ok {
		if d := time.Since(start); d > 0 && req.Wait > 0 {
			req.Wait = max(req.Wait-d, 0) // the time spent at an unreachable home counts
		}
		return ss.ls.Lock(ctx, req)
	}
	if err != nil {
		return lockext.Grant{}, err
	}
	g, err := grantFrom(f, req.Name, l.instance)
	if err != nil {
		return lockext.Grant{}, err
	}
	if req.Owner == "" {
		ss.holdForwarded(req.Name, g.Fence, false)
		g.Owner = "conn:" + g.Owner
	}
	return g, nil
}

// grantFrom reads the grant a home made, instance, from its answer f to
// a lock request for name.
func grantFrom(f []string, name, instance string) (lockext.Grant, error) {
	if len(f) < 5 || f[0] != "LOCKED" {
		return lockext.Grant{}, lockext.ErrUnavailable
	}
	g, err := parseGrant(f[1:5])
	if err != nil {
		return lockext.Grant{}, lockext.ErrUnavailable
	}
	// The reply's number, which a home of an older version does not send:
	// then the grant is never given back (see Undelivered).
	for _, extra := range f[5:] {
		if extra == "again" {
			g.Again = true
		} else if n, err := strconv.ParseUint(extra, 10, 64); err == nil {
			g.Reply, g.By = n, instance
		}
	}
	g.Name = name
	return g, nil
}

// holdForwarded remembers a connection's lock that a home granted, to be
// released there when the session closes; once it has closed, the lock is
// released now. A connection holds one grant of a name at a time: a grant
// just made is it, but a late one (see late) may be noted after a later
// grant, which its higher fence tells, and must not hide it.
func (ss *Session) holdForwarded(name string, fence uint64, late bool) {
	ss.mu.Lock()
	if !ss.closed {
		if ss.forwarded == nil {
			ss.forwarded = make(map[string]uint64)
		}
		if !late || fence > ss.forwarded[name] {
			ss.forwarded[name] = fence
		}
		ss.mu.Unlock()
		return
	}
	ss.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 4*ss.svc.cfg.Timeout)
	defer cancel()
	ss.unlock(ctx, name, fence, true)
}

// late takes the home's answer to a lock request that its caller gave up
// on (its client hung up, or the home took too long and the name was
// served here). A grant in it reached nobody: it is given back, as one
// whose reply failed to reach the client is, or else (the home keeps it:
// its owner may know of it by now) a connection's lock is held by the
// session until it closes.
func (ss *Session) late(req lockext.Request, instance string, f []string) {
	g, err := grantFrom(f, req.Name, instance)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*ss.svc.cfg.Timeout)
	defer cancel()
	_, err = ss.Undelivered(ctx, g)
	ss.svc.cfg.Logger.Info("a home granted a lock after its request was given up", "name", req.Name, "fence", g.Fence,
		"home", instance, "given_back", err == nil)
	if err != nil && req.Owner == "" {
		ss.holdForwarded(req.Name, g.Fence, true)
	}
}

// Unlock releases one level of a grant.
func (ss *Session) Unlock(ctx context.Context, name string, fence uint64) (int, error) {
	return ss.unlock(ctx, name, fence, false)
}

// unlock releases one level of a grant. An unlock forwarded to the home
// whose answer was lost may have been carried out there: served here as
// well, it would take off a second level of a reentrant lock, freeing it
// under its outer holder, or answer NOT_FOUND to a holder whose grant ran
// until then. It is answered unavailable instead (the client, which knows
// its levels, may try again), unless again: a connection's lock released
// as the connection closes has one level, and a second release of it
// finds the grant gone.
func (ss *Session) unlock(ctx context.Context, name string, fence uint64, again bool) (int, error) {
	f, err, ok := ss.svc.forward(ctx, name, func() string { return fmt.Sprintf("U %s %d", name, fence) }, nil, 0)
	var left int
	switch {
	case !ok && !again && errors.Is(err, errAnswerLost):
		return 0, fmt.Errorf("%w: %w", lockext.ErrUnavailable, err)
	case !ok:
		left, err = ss.ls.Unlock(ctx, name, fence)
	case err == nil:
		if len(f) < 2 || f[0] != "UNLOCKED" {
			return 0, lockext.ErrUnavailable
		}
		left, _ = strconv.Atoi(f[1])
	}
	if err == nil && left == 0 {
		ss.mu.Lock()
		if ss.forwarded[name] == fence {
			delete(ss.forwarded, name)
		}
		ss.mu.Unlock()
	}
	return left, err
}

// Undelivered gives back what the grant g handed out, its reply having
// failed to reach the client; see lockext.Manager.Undelivered, which
// decides it where g was made (g.By): here, or at the home that made it
// while that proxy is still the name's home. Anywhere else the grant is
// not known, and when that home cannot be asked (or is of a version that
// does not know how) nobody can tell: the grant is then kept, a lease left
// to its ttl being the safe side (ErrKept, or the error that said so). A
// connection's lock kept here is released when the connection closes.
func (ss *Session) Undelivered(ctx context.Context, g lockext.Grant) (int, error) {
	if g.By == ss.svc.cfg.Instance {
		return ss.ls.Undelivered(ctx, g)
	}
	l := ss.svc.remote(g.Name)
	if l == nil || l.instance != g.By || g.Reply == 0 || g.Again {
		return 0, lockext.ErrKept
	}
	f, err, ok := ss.svc.ask(ctx, l, fmt.Sprintf("R %s %d %d %s", g.Name, g.Fence, g.Reply, g.By), nil, 0, nil)
	if !ok {
		return 0, lockext.ErrKept
	}
	if err != nil {
		return 0, err
	}
	if len(f) < 2 || f[0] != "UNLOCKED" {
		return 0, lockext.ErrUnavailable
	}
	left, _ := strconv.Atoi(f[1])
	if left == 0 {
		ss.mu.Lock()
		if ss.forwarded[g.Name] == g.Fence {
			delete(ss.forwarded, g.Name)
		}
		ss.mu.Unlock()
	}
	return left, nil
}

// Extend sets a grant's remaining lifetime.
func (ss *Session) Extend(ctx context.Context, name string, fence uint64, ttl int) (int, error) {
	f, err, ok := ss.svc.forward(ctx, name, func() string { return fmt.Sprintf("E %s %d %d", name, fence, ttl) }, nil, 0)
	if !ok {
		return ss.svc.manager.Extend(ctx, name, fence, ttl)
	}
	if err != nil {
		return 0, err
	}
	if len(f) < 2 || f[0] != "EXTENDED" {
		return 0, lockext.ErrUnavailable
	}
	n, _ := strconv.Atoi(f[1])
	return n, nil
}

// Info describes a lock's current grant; the waiters are those at its home.
func (ss *Session) Info(ctx context.Context, name string) (lockext.Info, error) {
	f, err, ok := ss.svc.forward(ctx, name, func() string { return "I " + name }, nil, 0)
	if !ok {
		return ss.svc.manager.Info(ctx, name)
	}
	if err != nil {
		return lockext.Info{}, err
	}
	if len(f) < 6 || f[0] != "LOCK" {
		return lockext.Info{}, lockext.ErrUnavailable
	}
	g, err := parseGrant(f[1 : len(f)-1])
	if err != nil {
		return lockext.Info{}, lockext.ErrUnavailable
	}
	g.Name = name
	waiters, _ := strconv.Atoi(f[len(f)-1])
	return lockext.Info{Grant: g, Waiters: waiters}, nil
}

// Close releases the locks the session owns, wherever they were granted.
func (ss *Session) Close(ctx context.Context) {
	ss.mu.Lock()
	forwarded := ss.forwarded
	ss.forwarded, ss.closed = nil, true
	ss.mu.Unlock()
	for name, fence := range forwarded {
		ss.unlock(ctx, name, fence, true)
	}
	ss.ls.Close(ctx)
}

// Home returns the address of the proxy whose queue serves name (this
// one's own address when it is home), or "" when no proxy is registered.
func (s *Service) Home(name string) string {
	m, _ := s.members.home(name)
	return m.addr
}
