package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/ring"
)

// brokenConn is a client connection that sends lines and whose replies
// cannot be written: the client is gone by the time they are.
type brokenConn struct {
	net.Conn // nil: only what a connection's reader and writer use is here
	in       io.Reader
}

func (c *brokenConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *brokenConn) Write(p []byte) (int, error)      { return 0, errors.New("broken pipe") }
func (c *brokenConn) Close() error                     { return nil }
func (c *brokenConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (c *brokenConn) SetDeadline(time.Time) error      { return nil }
func (c *brokenConn) SetReadDeadline(time.Time) error  { return nil }
func (c *brokenConn) SetWriteDeadline(time.Time) error { return nil }

// serveBroken runs one client connection of s that sends lines and can
// be written nothing, until it has read them all.
func serveBroken(s *Server, lines string) {
	env := *s.env
	env.untrack = func(*clientConn) {}
	newClientConn(&env, &brokenConn{in: strings.NewReader(lines)}, 1).serve()
}

// A lease's owner asks for its lock again (the same grant back, ttl
// refreshed) on a connection that breaks before the reply: the grant it
// holds is not released. Its holder knows the grant from the reply that
// granted it, and its ttl still runs; only what the lost reply would have
// added is given back: a new grant, or a reentrant lock's new level.
func TestUndeliveredLockAgainKeepsTheLease(t *testing.T) {
	addr, s := startProxy(t, Config{}, testmc.Start(t))
	holder := testmc.Dial(t, addr)
	fence := strings.Fields(holder.RoundTrip("lock k 30 0 owner-a"))[1]
	serveBroken(s, "lock k 30 0 owner-a\r\n")
	other := testmc.Dial(t, addr)
	if got := other.RoundTrip("lock k 30 0 owner-b"); !strings.HasPrefix(got, "NOT_LOCKED ") {
		t.Fatalf("another owner while owner-a's lease runs: %q, want NOT_LOCKED", got)
	}
	if got := holder.RoundTrip("unlock k " + fence); got != "UNLOCKED 0" {
		t.Fatalf("owner-a's unlock: %q", got)
	}

	holder.RoundTrip("rlock r 30 0 owner-a")
	serveBroken(s, "rlock r 30 0 owner-a\r\n")
	if got := holder.RoundTrip("lockinfo r"); !strings.HasPrefix(got, "LOCK ") || strings.Fields(got)[3] != "1" {
		t.Fatalf("a reentrant lock's level whose reply was lost: %q, want its one level delivered", got)
	}
}

// A new grant whose LOCKED line cannot be delivered is released: nobody
// knows of it.
func TestUndeliveredGrantIsReleased(t *testing.T) {
	addr, s := startProxy(t, Config{}, testmc.Start(t))
	serveBroken(s, "lock k 30 0 owner-a\r\n")
	if got := testmc.Dial(t, addr).RoundTrip("lock k 30 0 owner-b"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("after a grant that could not be delivered: %q, want LOCKED", got)
	}
}

// relay passes connections through to target, calling hook with each
// chunk a client sends before passing it on; hook may block, holding that
// connection's writes as a slow server would.
func relay(t *testing.T, target string, hook func(chunk []byte)) string {
	t.Helper()
	return testmc.Serve(t, func(in net.Conn) {
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			return
		}
		defer out.Close()
		go io.Copy(in, out)
		buf := make([]byte, 64<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				hook(buf[:n])
				if _, err := out.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
}

// An unlock read before the proxy began to shut down is carried out, even
// when it has to wait for a write of the proxy's own on the same lock (the
// head waiter's attempt): the shutdown only stops the reading of commands.
// It used to end the unlock's wait with the connection's context, answer
// "SERVER_ERROR client gone" and leave the lease held for its ttl.
func TestUnlockDuringShutdownIsCarriedOut(t *testing.T) {
	mc := testmc.Start(t)
	var (
		attempt, open = make(chan struct{}), make(chan struct{})
		unlockRead    = make(chan struct{})
		fired         atomic.Bool
		readOnce      sync.Once
	)
	lockServer := relay(t, mc.Addr, func(chunk []byte) {
		switch {
		case bytes.Contains(chunk, []byte(" o waiter-w\r\n")) && !fired.Swap(true):
			close(attempt) // the head waiter's add is at the server, its reply held
			<-open
		case fired.Load() && bytes.Contains(chunk, []byte("mg __memcachedlock:k ")):
			readOnce.Do(func() { close(unlockRead) })
		}
	})
	cfg := Config{LockServers: []ring.Server{{Addr: lockServer, Weight: 1}}, Timeout: 10 * time.Second}
	addr, s := startProxy(t, cfg, mc)
	// owner-a holds the lease, granted through another proxy.
	direct := testmc.Dial(t, mc.Addr)
	if got := direct.RoundTrip("ms __memcachedlock:k 30 T30\r\n1000000000000001 x 1 o owner-a"); got != "HD" {
		t.Fatalf("writing owner-a's grant: %q", got)
	}
	waiter := testmc.Dial(t, addr)
	waiter.Send("lock k 30 60000 waiter-w\r\n")
	<-attempt
	holder := testmc.Dial(t, addr)
	holder.Send("unlock k 1000000000000001\r\n")
	<-unlockRead // the unlock has read the grant; it now waits for the attempt

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	for stopped := false; !stopped; {
		s.mu.Lock()
		stopped = s.closing // connections are told to stop under the same lock
		s.mu.Unlock()
	}
	close(open)
	if got := holder.Line(); got != "UNLOCKED 0" {
		t.Fatalf("an unlock read before the shutdown: %q, want UNLOCKED 0", got)
	}
	waiter.Line() // LOCKED, or the shutdown's SERVER_ERROR
	<-shut
	if got := direct.RoundTrip("mg __memcachedlock:k v"); strings.Contains(got, "owner-a") {
		t.Fatalf("owner-a still holds the lock after its unlock: %q", got)
	}
}

// gatedBrokenConn is a brokenConn whose first write waits for open before
// it fails: a reply on its way to a client that is gone.
type gatedBrokenConn struct {
	brokenConn
	writing, open chan struct{}
}

func (c *gatedBrokenConn) Write(p []byte) (int, error) {
	close(c.writing)
	<-c.open
	return 0, errors.New("broken pipe")
}

// A new grant's LOCKED line fails to be written only after its owner, asking
// again on another connection (the README's "a client that lost a reply
// simply asks again"), has been given the same grant back. The undelivered
// grant must then be kept: released, it was taken from a holder that knows
// it, and the next owner was granted it while that holder's ttl ran.
func TestUndeliveredGrantGivenAgainMeanwhile(t *testing.T) {
	addr, s := startProxy(t, Config{}, testmc.Start(t))
	nc := &gatedBrokenConn{brokenConn: brokenConn{in: strings.NewReader("lock k 30 0 owner-a\r\n")},
		writing: make(chan struct{}), open: make(chan struct{})}
	env := *s.env
	env.untrack = func(*clientConn) {}
	done := make(chan struct{})
	go func() {
		defer close(done)
		newClientConn(&env, nc, 1).serve()
	}()
	<-nc.writing // granted; its LOCKED line on its way to a client that is gone
	if got := testmc.Dial(t, addr).RoundTrip("lock k 30 0 owner-a"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("owner-a again: %q", got)
	}
	close(nc.open)
	<-done
	if got := testmc.Dial(t, addr).RoundTrip("lock k 30 0 owner-b"); !strings.HasPrefix(got, "NOT_LOCKED ") {
		t.Fatalf("owner-b while owner-a holds the grant it was told of: %q, want NOT_LOCKED", got)
	}
}
