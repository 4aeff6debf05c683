package lockservice

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockext"
)

// A peer is taken for gone only when that is certain: its address refuses
// connections, or what answers there knows no such hello. A proxy that
// answers anything else, such as one at its connection limit, may be
// alive with clients holding their locks.
func TestPeerGoneOnlyWhenCertain(t *testing.T) {
	s := newTestService(t, fakes("a:1"), 1, 5, "a:1")
	answering := func(reply string) string {
		return testmc.Serve(t, func(c net.Conn) {
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte(reply))
			c.Close()
		})
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		what, addr string
		gone       bool
	}{
		{"the proxy itself", answering("PEER\r\n"), false},
		{"the proxy at its connection limit", answering("SERVER_ERROR too many open connections\r\n"), false},
		{"memcached or a new proxy", answering("ERROR\r\n"), true},
		{"nothing listening", closedAddr, true},
	} {
		if got := s.peerGone(member{instance: "peer", addr: tc.addr, token: "t"}); got != tc.gone {
			t.Errorf("%s: gone %v, want %v", tc.what, got, tc.gone)
		}
	}
}

// A proxy that hung before it died may have left the registry by the time
// its link breaks: the home still knows it from when it granted the lock,
// finds it gone, and releases its connection lock.
func TestDeadPeerOutOfTheRegistryIsStillReleased(t *testing.T) {
	s := newTestService(t, fakes("a:1"), 1, 5, "a:1")
	g, err := s.manager.LockConn(context.Background(), lockext.Request{Name: "k", TTL: 5}, "deadpeer:1")
	if err != nil {
		t.Fatal(err)
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	held := newConnGrants()
	got, ok := held.note("L", []string{"k", "5", "0", "x", "c", "deadpeer:1"}, fmt.Sprintf("LOCKED %d 5 1 deadpeer:1", g.Fence))
	if !ok {
		t.Fatal("grant not noted")
	}
	held.know(got, []member{{instance: "deadpeer", addr: addr, token: "t"}})
	s.releaseIfGone(held) // the registry of s has never heard of it
	if _, err := tryLock(s, "k", "next"); err != nil {
		t.Fatalf("lock after the dead peer's grant was released: %v", err)
	}
}

// A proxy whose address refuses connections, but which renews its
// registry entry, is running: a firewall between the proxies that rejects
// connections (ICMP port unreachable, a TCP reset) looks to the home like
// a proxy gone. Its clients may hold their connection locks, which are
// kept; a proxy whose entry stands still is gone, and its are released.
func TestRefusingPeerThatRenewsIsNotGone(t *testing.T) {
	f := fakes("a:1")
	s := newTestService(t, f, 1, 5, "a:1")
	var refusing [2]string // two: of two entries at one address, only the later counts
	var ls [2]net.Listener
	for i := range ls {
		ls[i], _ = net.Listen("tcp", "127.0.0.1:0")
		refusing[i] = ls[i].Addr().String()
	}
	for _, l := range ls {
		l.Close()
	}
	live := newTestService(t, f, 1, 5, "a:1")
	live.Advertise(refusing[0]) // renews every second from now on
	cfg := testConfig(t, 1, 5, "a:1")
	register(f["a:1"], cfg, member{instance: "dead", addr: refusing[1], token: "t",
		expires: time.Now().Add(time.Hour).UnixMilli()}) // never renewed
	s.refreshMembers()
	for _, c := range []struct {
		instance string
		released bool
	}{{live.cfg.Instance, false}, {"dead", true}} {
		name := "k" + c.instance
		conn := c.instance + ":1"
		g, err := s.manager.LockConn(context.Background(), lockext.Request{Name: name, TTL: 5}, conn)
		if err != nil {
			t.Fatal(err)
		}
		held := newConnGrants()
		got, ok := held.note("L", []string{name, "5", "0", "x", "c", conn}, fmt.Sprintf("LOCKED %d 5 1 %s", g.Fence, conn))
		if !ok {
			t.Fatal("grant not noted")
		}
		held.know(got, s.members.list())
		if !s.peerGone(held.proxies[c.instance]) {
			t.Fatalf("%s: its address does not refuse connections", c.instance)
		}
		s.releaseIfGone(held)
		if _, err := tryLock(s, name, "next"); (err == nil) != c.released {
			t.Errorf("%s: lock after its link broke: %v, want released %v", c.instance, err, c.released)
		}
	}
}

// registryBlind is a lock server as one proxy reaches it: while blind is
// set, what that proxy asks of the registry fails (a lock server it
// cannot reach for a moment, or one paused ahead of the others, which
// uses up the time a refresh of the registry has for all of them).
type registryBlind struct {
	*fakeMC
	blind *atomic.Bool
}

func (r registryBlind) Exchange(ctx context.Context, batch, reply []byte) ([]byte, error) {
	if r.blind.Load() && bytes.Contains(batch, []byte("\x01members")) {
		return nil, errFakeDown
	}
	return r.fakeMC.Exchange(ctx, batch, reply)
}

// A home that cannot read the registry cannot tell whether a proxy
// renews its entry: what it read before stands still in its own view.
// A proxy that refuses connections (a firewall between the proxies) and
// renews its entry runs, and its clients may hold their connection
// locks: a home that reads nothing must keep them, as it keeps those of
// a proxy it cannot reach.
func TestUnreadableRegistryDoesNotMakeARenewingPeerGone(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	var blind atomic.Bool
	s, err := New(cfg, func(addr string) Conn { return registryBlind{f[addr], &blind} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	refusing := l.Addr().String()
	l.Close()
	live := newTestService(t, f, 1, 5, "a:1")
	live.Advertise(refusing) // renews every second from now on
	s.refreshMembers()
	conn := live.cfg.Instance + ":1"
	g, err := s.manager.LockConn(context.Background(), lockext.Request{Name: "k", TTL: 5}, conn)
	if err != nil {
		t.Fatal(err)
	}
	held := newConnGrants()
	got, ok := held.note("L", []string{"k", "5", "0", "x", "c", conn}, fmt.Sprintf("LOCKED %d 5 1 %s", g.Fence, conn))
	if !ok {
		t.Fatal("grant not noted")
	}
	held.know(got, s.members.list())
	if !s.peerGone(held.proxies[live.cfg.Instance]) {
		t.Fatal("its address does not refuse connections")
	}
	blind.Store(true)
	s.releaseIfGone(held)
	blind.Store(false)
	if _, err := tryLock(s, "k", "next"); err == nil {
		t.Error("a live proxy's connection lock was released while the registry could not be read")
	}
}
