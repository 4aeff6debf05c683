package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memcachedlock/memcachedlock/ring"
)

// topology is the cache servers as the ring places keys now. It is
// immutable and replaced whole, so a command reads it once without a lock.
type topology struct {
	ring  *ring.Ring
	cache []*backend // by ring index
}

func (t *topology) pick(key []byte) *backend { return t.cache[t.ring.Pick(key)] }

// routing owns where requests go: the topology now, and the backend of
// every server, cache and lock servers alike. Its lock guards changes of
// the topology; commands read the topology without it.
type routing struct {
	topo    atomic.Pointer[topology] // the cache ring now; replaced on reload and ejection
	lockers []*backend               // fixed for the proxy's life: a lock is never re-routed
	// impliedLocks: the lock servers are the cache servers as first
	// configured, so a reload that changes those would change them.
	impliedLocks bool
	lockServers  []ring.Server
	conns        int           // per backend
	timeout      time.Duration // per request
	failureLimit int           // failed calls in a row that eject a cache server
	retryTimeout time.Duration // how long an ejected server stays out
	latency      *prometheus.HistogramVec
	logger       *slog.Logger

	mu                 sync.Mutex
	servers            []ring.Server // the cache servers as configured
	distribution, hash string
	pools              map[string]*backend // every backend, by address
	ejected            map[string]time.Time
}

// newRouting connects to the lock servers; Reload adds the cache servers.
// latency, when set, gets each server's request durations.
func newRouting(cfg Config, impliedLocks bool, latency *prometheus.HistogramVec) *routing {
	rt := &routing{
		impliedLocks: impliedLocks, lockServers: cfg.LockServers,
		conns: cfg.ServerConns, timeout: cfg.Timeout,
		failureLimit: cfg.FailureLimit, retryTimeout: cfg.RetryTimeout,
		latency: latency, logger: cfg.Logger,
		distribution: cfg.Distribution, hash: cfg.Hash,
		pools:   make(map[string]*backend),
		ejected: make(map[string]time.Time),
	}
	for _, srv := range cfg.LockServers {
		rt.lockers = append(rt.lockers, rt.pool(srv.Addr))
	}
	return rt
}

// pool returns the backend for addr, creating it; one per address, shared
// when a server holds both caches and locks. rt.mu or newRouting only.
func (rt *routing) pool(addr string) *backend {
	b := rt.pools[addr]
	if b == nil {
		b = newBackend(addr, rt.conns, rt.timeout, rt.logger)
		if rt.latency != nil {
			b.latency = rt.latency.WithLabelValues(addr)
		}
		rt.pools[addr] = b
	}
	return b
}

// backend returns the backend of a configured server.
func (rt *routing) backend(addr string) *backend {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.pools[addr]
}

// all returns every backend: the cache servers as configured, then the
// lock servers that are not among them.
func (rt *routing) all() []*backend {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	all := make([]*backend, 0, len(rt.pools))
	for _, srv := range rt.servers {
		all = append(all, rt.pools[srv.Addr])
	}
	for _, b := range rt.lockers {
		if !slices.Contains(all, b) {
			all = append(all, b)
		}
	}
	return all
}

// close stops every backend.
func (rt *routing) close() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, b := range rt.pools {
		b.close()
	}
}

// Reload replaces the cache servers, distribution and hash. Servers that
// stay keep their connections and, with ketama, their keys; new ones are
// dialled; removed ones are closed once their requests in flight are done.
// Lock servers do not change: a lock must never be looked for on another
// server while it is held.
func (s *Server) Reload(servers []ring.Server, distribution, hash string) error {
	return s.routes.reload(servers, distribution, hash)
}

func (rt *routing) reload(servers []ring.Server, distribution, hash string) error {
	if len(servers) == 0 {
		return errors.New("proxy: reload: no servers")
	}
	if _, err := ring.New(servers, distribution, hash); err != nil {
		return fmt.Errorf("proxy: reload: %w", err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.impliedLocks && differ(rt.lockServers, servers) {
		rt.logger.Error("the new server list would change the lock servers (they default to the cache servers): "+
			"keeping the old lock servers, since a held lock must never be looked for elsewhere; "+
			"to change lock servers, restart every proxy with the same new list (see README, Changing lock servers)",
			"lock_servers", serverList(rt.lockServers))
	}
	old := rt.servers
	rt.servers, rt.distribution, rt.hash = slices.Clone(servers), distribution, hash
	keep := make(map[string]bool)
	for _, srv := range servers {
		keep[srv.Addr] = true
		rt.pool(srv.Addr)
	}
	for _, b := range rt.lockers {
		keep[b.addr] = true
	}
	if err := rt.rebuild(); err != nil {
		return err
	}
	if old == nil {
		return nil
	}
	var added, removed []string
	for _, srv := range servers {
		if !slices.ContainsFunc(old, func(o ring.Server) bool { return o.Addr == srv.Addr }) {
			added = append(added, srv.String())
		}
	}
	for addr, b := range rt.pools {
		if !keep[addr] {
			removed = append(removed, addr)
			delete(rt.pools, addr)
			delete(rt.ejected, addr)
			time.AfterFunc(2*rt.timeout, b.close) // let requests in flight finish
		}
	}
	rt.logger.Info("server list reloaded", "servers", len(servers), "added", added, "removed", removed,
		"distribution", distribution, "hash", hash)
	return nil
}

// differ reports whether the lock servers differ from servers.
func differ(lock, servers []ring.Server) bool {
	return !slices.EqualFunc(lock, servers, func(a, b ring.Server) bool { return a.Addr == b.Addr && a.Weight == b.Weight && a.Name == b.Name })
}

func serverList(list []ring.Server) string {
	addrs := make([]string, len(list))
	for i, s := range list {
		addrs[i] = s.String()
	}
	return strings.Join(addrs, ",")
}

// rebuild makes the topology from the configured servers less the ejected
// ones (all of them, rather than none). rt.mu must be held.
func (rt *routing) rebuild() error {
	live := make([]ring.Server, 0, len(rt.servers))
	for _, srv := range rt.servers {
		if _, out := rt.ejected[srv.Addr]; !out {
			live = append(live, srv)
		}
	}
	if len(live) == 0 {
		live = rt.servers
	}
	r, err := ring.New(live, rt.distribution, rt.hash)
	if err != nil {
		return err
	}
	t := &topology{ring: r}
	for _, srv := range r.Servers() {
		t.cache = append(t.cache, rt.pools[srv.Addr])
	}
	rt.topo.Store(t)
	return nil
}

// ejectLoop takes failing cache servers out of the ring and puts them back
// after the retry timeout, as twemproxy's auto_eject_hosts does.
func (rt *routing) ejectLoop(quit <-chan struct{}) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-quit:
			return
		case now := <-tick.C:
			rt.mu.Lock()
			changed := false
			for _, srv := range rt.servers {
				b := rt.pools[srv.Addr]
				until, out := rt.ejected[srv.Addr]
				switch {
				case !out && b.failures.Load() >= int64(rt.failureLimit):
					rt.ejected[srv.Addr] = now.Add(rt.retryTimeout)
					b.ejections.Add(1)
					rt.logger.Warn("memcached server ejected: its keys go to the others", "server", srv.Addr, "retry_in", rt.retryTimeout)
					changed = true
				case out && now.After(until):
					delete(rt.ejected, srv.Addr)
					b.failures.Store(0)
					rt.logger.Info("memcached server back in the ring", "server", srv.Addr)
					changed = true
				}
			}
			if changed {
				if err := rt.rebuild(); err != nil {
					rt.logger.Error("rebuilding the ring", "err", err)
				}
			}
			rt.mu.Unlock()
		}
	}
}
