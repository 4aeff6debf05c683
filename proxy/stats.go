package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
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

// serverCounts is what the proxy counts of one server, as "stats" and
// /metrics report it.
type serverCounts struct {
	addr                                  string
	up                                    bool
	requests, errors, timeouts, ejections uint64
	latency                               time.Duration // mean time to an answer
}

// counts reads the counters of every server, cache and lock servers, in
// the order of routing.all.
func (rt *routing) counts() []serverCounts {
	all := rt.all()
	counts := make([]serverCounts, len(all))
	for i, b := range all {
		counts[i] = serverCounts{
			addr: b.addr, up: b.up.Load(),
			requests: b.requests.Load(), errors: b.errors.Load(), timeouts: b.timeouts.Load(),
			ejections: b.ejections.Load(), latency: b.meanLatency(),
		}
	}
	return counts
}

// proxyStats writes the proxy's own counters into the general stats group,
// after the servers' merged ones.
type proxyStats struct {
	started  time.Time
	counters *counters
	routes   *routing
	locks    *lockservice.Service
}

func (p *proxyStats) write(w *bufio.Writer) {
	stat := func(name string, v any) { fmt.Fprintf(w, "STAT proxy_%s %v\r\n", name, v) }
	stat("version", Version)
	stat("uptime", int64(time.Since(p.started).Seconds()))
	stat("curr_connections", p.counters.connsCurr.Load())
	stat("total_connections", p.counters.connsTotal.Load())
	stat("rejected_connections", p.counters.connsRefused.Load())
	stat("cmd_total", p.counters.commands.Load())
	stat("get_server_error_misses", p.counters.getMisses.Load())
	for _, sc := range p.routes.counts() {
		stat("server:"+sc.addr+":up", b2i(sc.up))
		stat("server:"+sc.addr+":requests", sc.requests)
		stat("server:"+sc.addr+":errors", sc.errors)
		stat("server:"+sc.addr+":timeouts", sc.timeouts)
		stat("server:"+sc.addr+":ejections", sc.ejections)
		stat("server:"+sc.addr+":latency_us", sc.latency.Microseconds())
	}
	ls := p.locks.Stats()
	stat("lock_grants", ls.Grants)
	stat("lock_waits", ls.Waits)
	stat("lock_timeouts", ls.Timeouts)
	stat("lock_handoffs", ls.Handoffs)
	stat("lock_handoffs_early", ls.EarlyHandoffs)
	stat("lock_waiters", ls.Waiters)
	stat("lock_forwarded", ls.ForwardedOut)
	stat("lock_forwarded_in", ls.ForwardedIn)
	stat("lock_forward_failed", ls.ForwardFailed)
	stat("lock_proxies", ls.Proxies)
	for _, st := range p.locks.States() {
		stat("lock_server:"+st.Addr+":state", lockServerState(st))
	}
}

// lockServerState is a lock server's state as one word.
func lockServerState(st lockservice.State) string {
	switch {
	case st.Differs:
		return "differs"
	case st.Recovering:
		return "recovering_until_" + st.Until.UTC().Format(time.RFC3339)
	case !st.Ready:
		return "unknown"
	}
	return "ready"
}

// parseStat splits a stats line, "STAT <name> <value>" without its line
// end; the value may hold spaces.
func parseStat(line []byte) (name, value []byte, ok bool) {
	rest, ok := bytes.CutPrefix(line, []byte("STAT "))
	if !ok {
		return nil, nil, false
	}
	return bytes.Cut(rest, []byte(" "))
}

// mergeStats writes the servers' stats replies as one: same-named STAT
// lines summed, except values that are not numbers and those that describe
// a server rather than count in it (firstServerStats, perClassSettings),
// which are the first server's. The first server's other lines pass on.
// A listing group is the first server's answer as it is. A nil reply is a
// server that failed. Each reply ends in END; the merged one does not, so
// that the caller can add lines of its own.
func mergeStats(w *bufio.Writer, replies [][]byte, group string) {
	if listingGroups[group] {
		w.Write(bytes.TrimSuffix(replies[0], replyEND))
		return
	}
	var m statMerge
	for n, r := range replies {
		for len(r) > 0 {
			var line []byte
			line, r, _ = bytes.Cut(r, crlf)
			name, value, ok := parseStat(line)
			switch {
			case ok:
				m.add(string(name), string(value))
			case len(line) > 0 && n == 0 && !bytes.Equal(line, replyEND[:3]):
				w.Write(line)
				w.Write(crlf)
			}
		}
	}
	m.write(w)
}

// statMerge is the stats seen so far, in the first order they came in.
type statMerge struct {
	order  []*mergedStat
	byName map[string]*mergedStat
}

// mergedStat is one stat's value over the servers: a sum while every
// server's value is a number, else the first server's value.
type mergedStat struct {
	name, first string
	isum        int64
	fsum        float64
	kind        byte // 'i' integers so far, 'f' a float among them, 's' not all numbers
}

func (m *statMerge) add(name, value string) {
	st := m.byName[name]
	switch {
	case st == nil:
		if m.byName == nil {
			m.byName = make(map[string]*mergedStat)
		}
		st = &mergedStat{name: name, first: value, kind: 'i'}
		m.byName[name] = st
		m.order = append(m.order, st)
	case isFirstServerStat(name):
		return
	}
	st.add(value)
}

func (st *mergedStat) add(value string) {
	if st.kind == 's' {
		return
	}
	if i, err := strconv.ParseInt(value, 10, 64); err == nil && st.kind == 'i' {
		st.isum += i
	} else if x, err := strconv.ParseFloat(value, 64); err == nil {
		st.fsum += x + float64(st.isum)
		st.isum, st.kind = 0, 'f'
	} else {
		st.kind = 's'
	}
}

func (m *statMerge) write(w *bufio.Writer) {
	for _, st := range m.order {
		value := st.first
		switch {
		case isFirstServerStat(st.name):
		case st.kind == 'i':
			value = strconv.FormatInt(st.isum, 10)
		case st.kind == 'f':
			value = strconv.FormatFloat(st.fsum, 'f', 6, 64)
		}
		w.WriteString("STAT " + st.name + " " + value + "\r\n")
	}
}

// firstServerStats are taken from the first server, never summed.
var firstServerStats = map[string]bool{
	"pid": true, "uptime": true, "time": true, "version": true, "libevent": true,
	"pointer_size": true, "max_connections": true, "threads": true,
}

// perClassSettings are stats (items and slabs groups, "<class>:<name>")
// that describe a slab class rather than count in it: the first server's.
var perClassSettings = map[string]bool{
	"chunk_size": true, "chunks_per_page": true, "age": true, "age_hot": true, "age_warm": true,
}

func isFirstServerStat(name string) bool {
	if i := strings.LastIndexByte(name, ':'); i >= 0 {
		return perClassSettings[name[i+1:]]
	}
	return firstServerStats[name]
}

// listingGroups are stats groups that describe one server's settings or
// contents rather than count (cachedump's ITEM lines among them): the
// first server's answer stands.
var listingGroups = map[string]bool{"settings": true, "cachedump": true, "detail": true, "conns": true}
