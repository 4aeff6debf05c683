package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/memcachedlock/memcachedlock/ring"
)

// topology is the cache servers as the ring places keys now. It is
// immutable and replaced whole, so a command reads it once without a lock.
type topology struct {
	ring  *ring.Ring
	cache []*backend // by ring index
}

func (t *topology) pick(key []byte) *backend { return t.cache[t.ring.Pick(key)] }

// pool returns the backend for addr, creating it; one per address, shared
// when a server holds both caches and locks. s.topoMu or New only.
func (s *Server) pool(addr string) *backend {
	b := s.pools[addr]
	if b == nil {
		b = newBackend(addr, s.cfg.ServerConns, s.cfg.Timeout, s.cfg.Logger)
		if s.metrics != nil {
			b.latency = s.metrics.serverLat.WithLabelValues(addr)
		}
		s.pools[addr] = b
	}
	return b
}

// Reload replaces the cache servers, distribution and hash. Servers that
// stay keep their connections and, with ketama, their keys; new ones are
// dialled; removed ones are closed once their requests in flight are done.
// Lock servers do not change: a lock must never be looked for on another
// server while it is held.
func (s *Server) Reload(servers []ring.Server, distribution, hash string) error {
	if len(servers) == 0 {
		return errors.New("proxy: reload: no servers")
	}
	if _, err := ring.New(servers, distribution, hash); err != nil {
		return fmt.Errorf("proxy: reload: %w", err)
	}
	s.topoMu.Lock()
	defer s.topoMu.Unlock()
	if s.impliedLocks && differ(s.cfg.LockServers, servers) {
		s.cfg.Logger.Error("the new server list would change the lock servers (they default to the cache servers): "+
			"keeping the old lock servers, since a held lock must never be looked for elsewhere; "+
			"to change lock servers, restart every proxy with the same new list (see README, Changing lock servers)",
			"lock_servers", serverList(s.cfg.LockServers))
	}
	old := s.servers
	s.servers, s.cfg.Distribution, s.cfg.Hash = slices.Clone(servers), distribution, hash
	keep := make(map[string]bool)
	for _, srv := range servers {
		keep[srv.Addr] = true
		s.pool(srv.Addr)
	}
	for _, b := range s.lockers {
		keep[b.addr] = true
	}
	if err := s.rebuild(); err != nil {
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
	for addr, b := range s.pools {
		if !keep[addr] {
			removed = append(removed, addr)
			delete(s.pools, addr)
			delete(s.ejected, addr)
			time.AfterFunc(2*s.cfg.Timeout, b.close) // let requests in flight finish
		}
	}
	s.cfg.Logger.Info("server list reloaded", "servers", len(servers), "added", added, "removed", removed,
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
// ones (all of them, rather than none). s.topoMu must be held.
func (s *Server) rebuild() error {
	live := make([]ring.Server, 0, len(s.servers))
	for _, srv := range s.servers {
		if _, out := s.ejected[srv.Addr]; !out {
			live = append(live, srv)
		}
	}
	if len(live) == 0 {
		live = s.servers
	}
	r, err := ring.New(live, s.cfg.Distribution, s.cfg.Hash)
	if err != nil {
		return err
	}
	t := &topology{ring: r}
	for _, srv := range r.Servers() {
		t.cache = append(t.cache, s.pools[srv.Addr])
	}
	s.topo.Store(t)
	return nil
}

// ejectLoop takes failing cache servers out of the ring and puts them back
// after the retry timeout, as twemproxy's auto_eject_hosts does.
func (s *Server) ejectLoop() {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case now := <-tick.C:
			s.topoMu.Lock()
			changed := false
			for _, srv := range s.servers {
				b := s.pools[srv.Addr]
				until, out := s.ejected[srv.Addr]
				switch {
				case !out && b.failures.Load() >= int64(s.cfg.FailureLimit):
					s.ejected[srv.Addr] = now.Add(s.cfg.RetryTimeout)
					b.ejections.Add(1)
					s.cfg.Logger.Warn("memcached server ejected: its keys go to the others", "server", srv.Addr, "retry_in", s.cfg.RetryTimeout)
					changed = true
				case out && now.After(until):
					delete(s.ejected, srv.Addr)
					b.failures.Store(0)
					s.cfg.Logger.Info("memcached server back in the ring", "server", srv.Addr)
					changed = true
				}
			}
			if changed {
				if err := s.rebuild(); err != nil {
					s.cfg.Logger.Error("rebuilding the ring", "err", err)
				}
			}
			s.topoMu.Unlock()
		}
	}
}
