package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
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
