package lockservice

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
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

	// Instance names this process among the proxies; empty: random.
	Instance string
	Logger   *slog.Logger
}

// Service is the lock service of one proxy.
type Service struct {
	cfg      Config
	store    *store
	manager  *lockext.Manager
	replicas []*replica

	quit     chan struct{}
	quitOnce sync.Once
	wg       sync.WaitGroup
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
	s := &Service{cfg: cfg, quit: make(chan struct{})}
	layout := Layout(cfg)
	for _, srv := range r.Servers() {
		s.replicas = append(s.replicas, &replica{
			addr: srv.Addr, conn: dial(srv.Addr), marker: cfg.Prefix, layout: layout,
			hold: time.Duration(cfg.MaxTTL) * time.Second, timeout: cfg.Timeout, log: cfg.Logger, fresh: cfg.Fresh,
		})
	}
	s.store = &store{ring: r, replicas: s.replicas, n: cfg.Replicas}
	s.manager = lockext.New(s.store, lockext.Config{
		Prefix: cfg.Prefix, MaxTTL: cfg.MaxTTL, MaxWait: cfg.MaxWait, Poll: cfg.Poll, Instance: cfg.Instance,
	})
	s.wg.Add(1)
	go s.tend()
	return s, nil
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

// tend adopts lock servers and ends their recoveries on time, so that the
// state shown is current even without lock traffic.
func (s *Service) tend() {
	defer s.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, r := range s.replicas {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			r.endRecovery(ctx)
			r.ready(ctx)
			cancel()
		}
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
	}
}

// Stats returns the lock counters.
func (s *Service) Stats() lockext.Stats { return s.manager.Stats() }

// States describes every lock server.
func (s *Service) States() []State {
	out := make([]State, len(s.replicas))
	for i, r := range s.replicas {
		out[i] = r.state()
	}
	return out
}

// Close ends every wait with lockext.ErrClosed and stops the service.
func (s *Service) Close() {
	s.manager.Close()
	s.quitOnce.Do(func() { close(s.quit) })
	s.wg.Wait()
}

// Session is one client connection's use of the service.
type Session struct {
	svc *Service
	ls  *lockext.Session
}

// NewSession starts a session.
func (s *Service) NewSession() *Session { return &Session{svc: s, ls: s.manager.NewSession()} }

// Lock takes a lock; see lockext.Request.
func (ss *Session) Lock(ctx context.Context, req lockext.Request) (lockext.Grant, error) {
	return ss.ls.Lock(ctx, req)
}

// Unlock releases one level of a grant.
func (ss *Session) Unlock(ctx context.Context, name string, fence uint64) (int, error) {
	return ss.ls.Unlock(ctx, name, fence)
}

// Extend sets a grant's remaining lifetime.
func (ss *Session) Extend(ctx context.Context, name string, fence uint64, ttl int) (int, error) {
	return ss.svc.manager.Extend(ctx, name, fence, ttl)
}

// Info describes a lock's current grant.
func (ss *Session) Info(ctx context.Context, name string) (lockext.Info, error) {
	return ss.svc.manager.Info(ctx, name)
}

// Close releases the locks the session owns.
func (ss *Session) Close(ctx context.Context) { ss.ls.Close(ctx) }

var _ = strconv.Itoa
