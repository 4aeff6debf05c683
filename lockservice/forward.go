package lockservice

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// peerDownFor is how long a home that could not be reached is not tried
// again: meanwhile its names are served here, at polling speed.
const peerDownFor = 2 * time.Second

// peerLink is this proxy's connection to one home proxy, shared by every
// request forwarded there.
type peerLink struct {
	addr     string
	token    string
	instance string // the home's; it names the grants made there (lockext.Grant.By)
	timeout  time.Duration

	mu        sync.Mutex
	nc        net.Conn
	bw        *bufio.Writer
	next      uint64
	pending   map[uint64]chan []string
	downUntil time.Time
	awaited   int // answers its callers gave up on, still awaited (see abandon)
}

// maxAwaited bounds the answers a link awaits for callers that gave up: a
// home hung with its connection open would otherwise collect one waiting
// goroutine for every lock asked of it.
const maxAwaited = 1024

// peers holds the links to home proxies, by address.
type peers struct {
	timeout time.Duration
	mu      sync.Mutex
	links   map[string]*peerLink
	closed  bool // closeAll ran: no link is opened again
}

// link returns the link to m, or nil once closeAll has run.
func (p *peers) link(m member) *peerLink {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	l := p.links[m.addr]
	if l == nil || l.token != m.token { // a new proxy at that address
		if l != nil {
			l.close()
		}
		l = &peerLink{addr: m.addr, token: m.token, instance: m.instance, timeout: p.timeout}
		p.links[m.addr] = l
	}
	return l
}

func (p *peers) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, l := range p.links {
		l.close()
	}
}

// connect dials the home and says hello; p.mu held.
func (l *peerLink) connect() error {
	if l.nc != nil {
		return nil
	}
	if time.Now().Before(l.downUntil) {
		return errPeer
	}
	nc, err := net.DialTimeout("tcp", l.addr, l.timeout)
	if err == nil {
		nc.SetDeadline(time.Now().Add(l.timeout))
		_, err = fmt.Fprintf(nc, "%s%s\r\n", peerHello, l.token)
		br := bufio.NewReader(nc)
		var line string
		if err == nil {
			line, err = br.ReadString('\n')
		}
		if err == nil && line != "PEER\r\n" {
			err = fmt.Errorf("hello answered %q", line)
		}
		if err == nil {
			nc.SetDeadline(time.Time{})
			l.nc, l.bw, l.pending = nc, bufio.NewWriter(nc), make(map[uint64]chan []string)
			go l.read(nc, br)
			return nil
		}
		nc.Close()
	}
	l.downUntil = time.Now().Add(peerDownFor)
	return fmt.Errorf("%w: %s: %v", errPeer, l.addr, err)
}

// read delivers the home's replies to the requests waiting for them.
func (l *peerLink) read(nc net.Conn, br *bufio.Reader) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			l.broken(nc)
			return
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		tag, _ := strconv.ParseUint(f[0], 10, 64)
		// Under the mutex, so that broken cannot close ch meanwhile; ch has
		// room for the one W and the one answer a request gets.
		l.mu.Lock()
		ch := l.pending[tag]
		final := ch != nil && f[1] != "W"
		if ch != nil {
			if final {
				delete(l.pending, tag)
			}
			select {
			case ch <- f[1:]:
			default:
			}
		}
		l.mu.Unlock()
		if final {
			// Let the caller just woken write its client's reply now (a grant
			// handed over at the home is waiting in it) rather than after
			// whatever else this loop finds to read.
			runtime.Gosched()
		}
	}
}

// broken fails every request in flight on nc: their callers serve the
// names themselves.
func (l *peerLink) broken(nc net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nc != nc {
		return
	}
	nc.Close()
	for _, ch := range l.pending {
		close(ch)
	}
	l.nc, l.pending = nil, nil
	l.downUntil = time.Now().Add(peerDownFor)
}

func (l *peerLink) close() {
	l.mu.Lock()
	nc := l.nc
	l.mu.Unlock()
	if nc != nil {
		l.broken(nc)
	}
}

// send writes one tagged request; p.mu held.
func (l *peerLink) send(tag uint64, req string) error {
	l.nc.SetWriteDeadline(time.Now().Add(l.timeout))
	fmt.Fprintf(l.bw, "%d %s\r\n", tag, req)
	return l.bw.Flush()
}

// call sends req and returns the home's reply fields. wait is how long the
// request may wait there; onWait runs once it is sent, if it may wait at
// all (the caller then watches its client for hanging up, which cancels
// the request). When ctx ends first, the home is told to cancel and its
// answer is still awaited (briefly): a grant that won the race must reach
// the caller, who releases what it cannot deliver. An answer that comes
// after the caller gave up goes to late, if set, for up to lateFor.
func (l *peerLink) call(ctx context.Context, req string, onWait func(), wait time.Duration, late func([]string), lateFor time.Duration) ([]string, error) {
	l.mu.Lock()
	if err := l.connect(); err != nil {
		l.mu.Unlock()
		return nil, err
	}
	l.next++
	tag, nc := l.next, l.nc
	ch := make(chan []string, 2)
	l.pending[tag] = ch
	if err := l.send(tag, req); err != nil {
		l.mu.Unlock()
		l.broken(nc)
		return nil, fmt.Errorf("%w: %v", errPeer, err)
	}
	l.mu.Unlock()
	if onWait != nil && wait > 0 {
		// Rather than when the home says the request waits: that message
		// cost both proxies a wake-up for nearly every lock under
		// contention, a sixth of the CPU a forwarded grant takes.
		onWait()
	}

	done := ctx.Done()
	// Past its wait a request is a few memcached round trips at the home,
	// and a home that takes longer (paused, stuck) is as good as gone: its
	// names are served here. Without this bound a lock would wait for a
	// hung home until its client hung up, whatever its wait.
	giveUp := time.After(wait + 4*l.timeout)
	for {
		select {
		case f, ok := <-ch:
			if !ok {
				return nil, errAnswerLost
			}
			if f[0] == "W" {
				continue // from a home of an older version
			}
			return f, nil
		case <-done:
			done = nil
			l.cancel(tag, nc)
			giveUp = time.After(2 * l.timeout)
		case <-giveUp:
			l.abandon(tag, ch, late, lateFor)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			l.cancel(tag, nc) // a home that is merely slow stops waiting too
			return nil, errAnswerLost
		}
	}
}

// abandon stops waiting for the answer to tag on its caller's behalf. A
// grant the home makes after all would stand for its ttl with nobody
// knowing of it: while the link lasts, up to lateFor, a final answer still
// goes to late (which gives a grant back). Past that, with no late, or
// with maxAwaited answers awaited already, it is dropped.
func (l *peerLink) abandon(tag uint64, ch chan []string, late func([]string), lateFor time.Duration) {
	l.mu.Lock()
	if l.pending == nil || l.pending[tag] != ch { // the link broke, or the answer came
		l.mu.Unlock()
		// An answer that came as the caller gave up (its select found both
		// ready and picked the give-up) is in ch, owed to late like one
		// that comes later.
		if f, ok := answered(ch); ok && late != nil {
			go late(f)
		}
		return
	}
	if late == nil || l.awaited >= maxAwaited {
		delete(l.pending, tag)
		l.mu.Unlock()
		return
	}
	l.awaited++
	l.mu.Unlock()
	go func() {
		defer func() {
			l.mu.Lock()
			l.awaited--
			if l.pending != nil && l.pending[tag] == ch {
				delete(l.pending, tag)
			}
			l.mu.Unlock()
		}()
		expired := time.After(lateFor)
		for {
			select {
			case f, ok := <-ch:
				if !ok {
					return
				}
				if f[0] != "W" { // W: from a home of an older version
					late(f)
					return
				}
			case <-expired:
				return
			}
		}
	}()
}

// answered returns the final answer already in ch, if any (past a W,
// from a home of an older version).
func answered(ch chan []string) ([]string, bool) {
	for {
		select {
		case f, ok := <-ch:
			if !ok {
				return nil, false
			}
			if f[0] != "W" {
				return f, true
			}
		default:
			return nil, false
		}
	}
}

// cancel tells the home to cancel the request tag, sent on nc.
func (l *peerLink) cancel(tag uint64, nc net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nc == nc {
		l.send(tag, "C")
	}
}
