package proxy

import (
	"bufio"
	"fmt"
	"time"

	"github.com/memcachedlock/memcachedlock/lockservice"
)

// Stats are the proxy's own counters.
type Stats struct {
	CurrConnections     int64
	TotalConnections    uint64
	RejectedConnections uint64
	Commands            uint64
	GetServerErrorMiss  uint64 // multi-get keys answered as misses because their server failed
	Locks               lockservice.Stats
}

// Stats returns the proxy's counters.
func (s *Server) Stats() Stats {
	return Stats{
		CurrConnections:     s.connsCurr.Load(),
		TotalConnections:    s.connsTotal.Load(),
		RejectedConnections: s.connsRefused.Load(),
		Commands:            s.commands.Load(),
		GetServerErrorMiss:  s.getMisses.Load(),
		Locks:               s.locks.Stats(),
	}
}

// writeProxyStats adds the proxy's own counters to the general stats group.
func (s *Server) writeProxyStats(w *bufio.Writer) {
	stat := func(name string, v any) { fmt.Fprintf(w, "STAT proxy_%s %v\r\n", name, v) }
	stat("version", Version)
	stat("uptime", int64(time.Since(s.started).Seconds()))
	stat("curr_connections", s.connsCurr.Load())
	stat("total_connections", s.connsTotal.Load())
	stat("rejected_connections", s.connsRefused.Load())
	stat("cmd_total", s.commands.Load())
	stat("get_server_error_misses", s.getMisses.Load())
	seen := make(map[*backend]bool)
	s.topoMu.Lock()
	all := make([]*backend, 0, len(s.pools))
	for _, srv := range s.servers {
		all = append(all, s.pools[srv.Addr])
	}
	s.topoMu.Unlock()
	for _, b := range append(all, s.lockers...) {
		if seen[b] {
			continue
		}
		seen[b] = true
		up := 0
		if b.up.Load() {
			up = 1
		}
		stat("server:"+b.addr+":up", up)
		stat("server:"+b.addr+":requests", b.requests.Load())
		stat("server:"+b.addr+":errors", b.errors.Load())
		stat("server:"+b.addr+":timeouts", b.timeouts.Load())
		stat("server:"+b.addr+":ejections", b.ejections.Load())
		stat("server:"+b.addr+":latency_us", b.meanLatency().Microseconds())
	}
	ls := s.locks.Stats()
	stat("lock_grants", ls.Grants)
	stat("lock_waits", ls.Waits)
	stat("lock_timeouts", ls.Timeouts)
	stat("lock_handoffs", ls.Handoffs)
	stat("lock_waiters", ls.Waiters)
	stat("lock_forwarded", ls.ForwardedOut)
	stat("lock_forwarded_in", ls.ForwardedIn)
	stat("lock_forward_failed", ls.ForwardFailed)
	stat("lock_proxies", ls.Proxies)
	for _, st := range s.locks.States() {
		state := "ready"
		switch {
		case st.Differs:
			state = "differs"
		case st.Recovering:
			state = "recovering_until_" + st.Until.UTC().Format(time.RFC3339)
		case !st.Ready:
			state = "unknown"
		}
		stat("lock_server:"+st.Addr+":state", state)
	}
}
