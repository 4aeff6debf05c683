package lockservice

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// IsPeerHello reports whether line opens a peer connection from another
// proxy: "peer" and this proxy's token, which only readers of the lock
// namespace in memcached (proxies) know. Anything else is a client's.
func (s *Service) IsPeerHello(line []byte) bool {
	token, ok := strings.CutPrefix(strings.TrimRight(string(line), "\r\n"), peerHello)
	return ok && token == s.members.me().token
}

// ServePeer serves a peer connection after its hello: next reads a request
// line, send queues a reply line (they are written in the order queued).
// Each request runs on its own; ServePeer returns when next fails, after
// cancelling the requests still running and waiting for them.
func (s *Service) ServePeer(ctx context.Context, next func() ([]byte, error), send func([]byte)) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	running := make(map[string]context.CancelFunc)
	held := newConnGrants() // connection locks granted over this link, not released over it
	defer func() {
		cancel()
		wg.Wait()
		if len(held.grants) > 0 {
			go s.releaseIfGone(held)
		}
	}()
	for {
		line, err := next()
		if err != nil {
			return
		}
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		tag, op, args := f[0], f[1], f[2:]
		if op == "C" {
			mu.Lock()
			if stop := running[tag]; stop != nil {
				stop()
			}
			mu.Unlock()
			continue
		}
		// A wait ends with the link; anything else (a few memcached round
		// trips) runs to its end and is answered if the link still writes:
		// cancelled half way it may be done all the same, and the proxy
		// that sent it, told "cancelled", would carry it out again.
		parent := ctx
		if op != "L" {
			parent = context.WithoutCancel(ctx)
		}
		rctx, stop := context.WithCancel(parent)
		mu.Lock()
		running[tag] = stop
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := s.servePeerRequest(rctx, op, args)
			mu.Lock()
			delete(running, tag)
			if g, ok := held.note(op, args, out); ok {
				held.know(g, s.members.list())
			}
			mu.Unlock()
			stop()
			send([]byte(tag + " " + out + "\r\n"))
		}()
	}
}

// servePeerRequest carries out one forwarded request here, as home.
func (s *Service) servePeerRequest(ctx context.Context, op string, args []string) string {
	s.forwardedIn.Add(1)
	need := map[string]int{"L": 6, "U": 2, "E": 3, "I": 1, "R": 4}[op]
	if need == 0 || len(args) != need {
		return encodeErr(lockext.ErrBadRequest)
	}
	name := args[0]
	switch op {
	case "L":
		req, conn, err := parseLock(args)
		if err != nil {
			return encodeErr(err)
		}
		var g lockext.Grant
		if conn != "" {
			g, err = s.manager.LockConn(ctx, req, conn)
		} else {
			g, err = s.manager.Lock(ctx, req)
		}
		if err != nil {
			return encodeErr(err)
		}
		again := ""
		if g.Again {
			again = " again"
		}
		return fmt.Sprintf("LOCKED %d %d %d %s %d%s", g.Fence, g.TTL, g.Count, g.Owner, g.Reply, again)
	case "R":
		fence, err1 := strconv.ParseUint(args[1], 10, 64)
		reply, err2 := strconv.ParseUint(args[2], 10, 64)
		if err1 != nil || err2 != nil {
			return encodeErr(lockext.ErrBadRequest)
		}
		left, err := s.manager.Undelivered(ctx, lockext.Grant{Name: name, Fence: fence, Reply: reply, By: args[3]})
		if err != nil {
			return encodeErr(err)
		}
		return fmt.Sprintf("UNLOCKED %d", left)
	case "U", "E":
		fence, err := strconv.ParseUint(args[1], 10, 64)
		if err != nil {
			return encodeErr(lockext.ErrBadRequest)
		}
		if op == "U" {
			left, err := s.manager.Unlock(ctx, name, fence)
			if err != nil {
				return encodeErr(err)
			}
			return fmt.Sprintf("UNLOCKED %d", left)
		}
		ttl, err := strconv.Atoi(args[2])
		if err != nil {
			return encodeErr(lockext.ErrBadRequest)
		}
		n, err := s.manager.Extend(ctx, name, fence, ttl)
		if err != nil {
			return encodeErr(err)
		}
		return fmt.Sprintf("EXTENDED %d", n)
	default:
		info, err := s.manager.Info(ctx, name)
		if err != nil {
			return encodeErr(err)
		}
		return fmt.Sprintf("LOCK %d %d %d %s %d", info.Fence, info.TTL, info.Count, info.Owner, info.Waiters)
	}
}

// connGrants are the connection locks a peer's sessions hold through this
// proxy, by name, and the proxies those sessions belong to as the
// registry named them when they were granted (a proxy that hung before
// it died may have left the registry by the time its link breaks).
type connGrants struct {
	grants  map[string]connGrant
	proxies map[string]member // by instance
}

type connGrant struct {
	fence uint64
	conn  string // "<instance>:<session>"
}

func newConnGrants() *connGrants {
	return &connGrants{grants: make(map[string]connGrant), proxies: make(map[string]member)}
}

func (g connGrant) instance() string {
	instance, _, _ := strings.Cut(g.conn, ":")
	return instance
}

// note records what a request's reply changed: a connection lock granted
// (returned), or one released to its last level.
func (h *connGrants) note(op string, args []string, out string) (connGrant, bool) {
	f := strings.Fields(out)
	switch {
	case op == "L" && len(args) == 6 && args[4] == "c" && len(f) >= 2 && f[0] == "LOCKED":
		if fence, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			g := connGrant{fence: fence, conn: args[5]}
			h.grants[args[0]] = g
			return g, true
		}
	case (op == "U" || op == "R") && len(args) >= 2 && out == "UNLOCKED 0":
		if g, ok := h.grants[args[0]]; ok && strconv.FormatUint(g.fence, 10) == args[1] {
			delete(h.grants, args[0])
		}
	}
	return connGrant{}, false
}

// know remembers the registry's entry for g's proxy, once.
func (h *connGrants) know(g connGrant, registry []member) {
	instance := g.instance()
	if _, ok := h.proxies[instance]; ok {
		return
	}
	for _, m := range registry {
		if m.instance == instance {
			h.proxies[instance] = m
		}
	}
}

// releaseIfGone releases the connection locks a peer's sessions held when
// its link here broke, if that proxy is gone: its clients' connections went
// with it, and so did their locks. A proxy that may still run (it answers,
// cannot be reached to tell, or renews its registry entry) keeps them: its
// clients may hold them, and their ttl ends them otherwise.
func (s *Service) releaseIfGone(held *connGrants) {
	gone := make(map[string]bool)
	for name, g := range held.grants {
		instance := g.instance()
		if _, seen := gone[instance]; !seen {
			gone[instance] = s.peerGoneAfterTries(held.proxies[instance]) && !s.renewing(instance)
		}
		if !gone[instance] {
			continue
		}
		err := s.releaseGone(name, g.fence)
		s.cfg.Logger.Warn("released a connection lock of a proxy that is gone", "lock", name, "fence", g.fence, "err", err)
	}
}

// releaseGone releases a grant whose holder is gone, trying again for a
// while when the lock servers do not answer: left alone, it would stand
// for its whole ttl.
func (s *Service) releaseGone(name string, fence uint64) error {
	var err error
	for try := 0; try < 10; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 4*s.cfg.Timeout)
		err = s.manager.Release(ctx, name, fence)
		cancel()
		if err == nil || errors.Is(err, lockext.ErrNotFound) || errors.Is(err, lockext.ErrNotOwner) {
			return err // released, or no longer that grant
		}
		if !s.pause(s.cfg.Timeout) {
			return err
		}
	}
	return err
}

// pause waits d; false when the service closes first.
func (s *Service) pause(d time.Duration) bool {
	select {
	case <-s.quit:
		return false
	case <-time.After(d):
		return true
	}
}

// renewing reports whether the proxy instance still renews its registry
// entry: read twice, more than a renewal apart, its expiry moved on (both
// times off its own clock, so clocks out of step do not matter). Such a
// proxy runs, whatever its address answers: a firewall that rejects the
// connections between proxies makes a live one refuse them, and its
// clients may hold their locks. A registry that cannot be read says
// nothing, and so may be renewed.
func (s *Service) renewing(instance string) bool {
	first, ok, read := s.entry(instance)
	if !read {
		return true
	}
	if !ok {
		return false
	}
	if !s.pause(2 * memberRenew) {
		return true // closing: nothing is released, the ttl ends it
	}
	second, ok, read := s.entry(instance)
	return !read || ok && second.expires > first.expires
}

// entry reads the registry's entry for the proxy instance afresh; read
// is false when no lock server answered.
func (s *Service) entry(instance string) (m member, ok, read bool) {
	if !s.refreshMembers() {
		return member{}, false, false
	}
	for _, m := range s.members.list() {
		if m.instance == instance {
			return m, true, true
		}
	}
	return member{}, false, true
}

// peerGoneAfterTries asks peerGone a few times, a timeout apart: a busy
// machine may leave a dying proxy's address neither refusing nor
// answering for a moment.
func (s *Service) peerGoneAfterTries(m member) bool {
	if m.addr == "" {
		return false // not in the registry when granted: nothing to ask
	}
	for try := 0; try < 3; try++ {
		if s.peerGone(m) {
			return true
		}
		if !s.pause(s.cfg.Timeout) {
			return false
		}
	}
	return false
}

// peerGone reports whether the proxy m is certainly not running: its
// address refuses or resets connections, or what listens there does not
// know its token. Anything less certain (no answer in time) is not gone.
func (s *Service) peerGone(m member) bool {
	nc, err := net.DialTimeout("tcp", m.addr, s.cfg.Timeout)
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(s.cfg.Timeout))
	if _, err := fmt.Fprintf(nc, "%s%s\r\n", peerHello, m.token); err != nil {
		return false
	}
	line, err := bufio.NewReader(nc).ReadString('\n')
	if err != nil {
		// Reset: the kernel of a process that is exiting (its listener
		// still took the connection). A live proxy answers, and one out of
		// reach times out.
		return errors.Is(err, syscall.ECONNRESET)
	}
	// ERROR: something there that knows no such hello, memcached or a new
	// proxy with another token. PEER: the proxy itself. Anything else (a
	// proxy at its connection limit says so) tells nothing.
	return line == "ERROR\r\n"
}
