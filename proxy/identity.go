package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"
)

// identity tells one run of a memcached server from the next: a restarted
// server has lost every item, lock items included.
type identity struct {
	pid  int64
	boot int64 // unix seconds: the server's time less its uptime
}

func (a identity) same(b identity) bool {
	d := a.boot - b.boot
	return a.pid == b.pid && d <= 2 && d >= -2 // time and uptime are read a moment apart
}

// fetchIdentity asks a freshly dialled connection for the server's pid
// and uptime, before any request goes over it.
func fetchIdentity(nc net.Conn, timeout time.Duration) (identity, error) {
	nc.SetDeadline(time.Now().Add(timeout))
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write([]byte("stats\r\n")); err != nil {
		return identity{}, err
	}
	br := bufio.NewReader(nc)
	var id identity
	var now, uptime int64
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return identity{}, err
		}
		if bytes.HasPrefix(line, replyEND) {
			break
		}
		if isErrorLine(line) {
			// Something that speaks the protocol but has no stats (another
			// proxy, say): carry on without restart detection.
			return identity{}, nil
		}
		f := bytes.Fields(line)
		if len(f) != 3 {
			continue
		}
		v, _ := strconv.ParseInt(string(f[2]), 10, 64)
		switch string(f[1]) {
		case "pid":
			id.pid = v
		case "uptime":
			uptime = v
		case "time":
			now = v
		}
	}
	if br.Buffered() > 0 {
		return identity{}, errors.New("stats: trailing bytes")
	}
	id.boot = now - uptime
	return id, nil
}

// recovery refuses new lock grants on a server that lost its lock items
// (it restarted, or was flushed) until every grant made before could have
// expired: a client that still believes it holds a lock must not see it
// granted to somebody else.
type recovery struct {
	hold time.Duration // the longest lock ttl

	mu    sync.Mutex
	known identity
	until time.Time
}

// observe records the identity seen on a new connection; a change means
// the server restarted.
func (r *recovery) observe(id identity) (restarted bool) {
	if id == (identity{}) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	restarted = r.known != (identity{}) && !r.known.same(id)
	r.known = id
	if restarted {
		r.until = time.Now().Add(r.hold)
	}
	return restarted
}

// flushed records a flush_all that takes effect after delay.
func (r *recovery) flushed(delay time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if until := time.Now().Add(delay + r.hold); until.After(r.until) {
		r.until = until
	}
}

// recovering reports whether new grants must be refused now.
func (r *recovery) recovering() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now().Before(r.until)
}

// flushWatchInterval is how often lock servers are asked whether somebody
// flushed them; a flush through this proxy is seen at once.
const flushWatchInterval = time.Second

// watchFlushes notices a flush_all sent to a lock server by something other
// than this proxy (another proxy, an operator), from memcached's cmd_flush
// counter, and puts the server into recovery. Between two looks a lock can
// still be granted on the flushed server: this narrows the window, it does
// not close it.
func (s *Server) watchFlushes() {
	seen := make(map[*backend]int64)
	tick := time.NewTicker(flushWatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
		for _, b := range s.lockers {
			c := newCall(shapeUntilEnd, s.cfg.Timeout)
			c.out = append(c.out, "stats\r\n"...)
			b.do(0, c)
			n, ok := statValue(c.reply, "cmd_flush")
			c.release()
			if !ok {
				continue
			}
			if prev, known := seen[b]; known && n > prev {
				b.lost.flushed(0)
				s.cfg.Logger.Warn("lock server was flushed: its lock items are lost; refusing new locks on it meanwhile",
					"server", b.addr, "for", b.lost.hold)
			}
			seen[b] = n
		}
	}
}

// statValue finds one counter in a stats reply.
func statValue(reply []byte, name string) (int64, bool) {
	for _, line := range bytes.Split(reply, crlf) {
		f := bytes.Fields(line)
		if len(f) == 3 && string(f[0]) == "STAT" && string(f[1]) == name {
			v, err := strconv.ParseInt(string(f[2]), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}
