package lockservice

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockext"
)

// listenAsHome serves s's peer connections on a loopback listener, as a
// proxy's client port does, and advertises it: s becomes home for a share
// of the lock names. It returns the address.
func listenAsHome(t *testing.T, s *Service) string {
	t.Helper()
	addr := testmc.Serve(t, func(nc net.Conn) { servePeerConn(s, nc) })
	s.Advertise(addr)
	return addr
}

// servePeerConn answers one connection as a proxy's client port would: a
// peer's hello with this proxy's token is served by ServePeer, anything
// else is an unknown command.
func servePeerConn(s *Service, nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	hello, err := br.ReadString('\n')
	if err != nil {
		return
	}
	if !s.IsPeerHello([]byte(hello)) {
		nc.Write([]byte("ERROR\r\n"))
		return
	}
	nc.Write([]byte("PEER\r\n"))
	var mu sync.Mutex
	next := func() ([]byte, error) {
		line, err := br.ReadString('\n')
		return []byte(line), err
	}
	s.ServePeer(context.Background(), next, func(b []byte) {
		mu.Lock()
		nc.Write(b)
		mu.Unlock()
	})
}

// fakeHome accepts peer connections, says hello back and answers each
// request with answer(its fields), or not at all when that is "". It
// returns the address.
func fakeHome(t *testing.T, answer func(f []string) string) string {
	t.Helper()
	return testmc.Serve(t, func(nc net.Conn) {
		br := bufio.NewReader(nc)
		if _, err := br.ReadString('\n'); err != nil {
			return
		}
		nc.Write([]byte("PEER\r\n"))
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if f := strings.Fields(line); len(f) > 1 {
				if out := answer(f); out != "" {
					nc.Write([]byte(f[0] + " " + out + "\r\n"))
				}
			}
		}
	})
}

// silentHome is a home proxy that hangs (paused, or stuck) with its
// connections open: it never answers.
func silentHome(t *testing.T) string {
	return fakeHome(t, func([]string) string { return "" })
}

// register adds m to the registry of proxies on mc, as m's own renewal
// would have, at once with respect to the proxies renewing theirs.
func register(mc *fakeMC, cfg Config, m member) {
	key := newMembers(cfg.Prefix, "", Layout(cfg)).key
	mc.mu.Lock()
	defer mc.mu.Unlock()
	it, _ := mc.live(key)
	mc.cas++
	mc.items[key] = fakeItem{value: append(append([]byte(nil), it.value...), encodeMembers([]member{m})...), cas: mc.cas}
}

// nameHomedAt returns a lock name whose home, as s sees the registry, is
// the proxy with the given instance.
func nameHomedAt(t *testing.T, s *Service, instance string) string {
	t.Helper()
	for i := 0; i < 1000; i++ {
		name := "k" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26%26))
		if m, ok := s.members.home(name); ok && m.instance == instance {
			return name
		}
	}
	t.Fatalf("no name is homed at %s", instance)
	return ""
}

// A forwarded lock whose home never answers (a proxy paused with its
// connections open) ends when its wait does, plus the limit any other
// forwarded request has, and is then served here: a lock with a wait of
// 50 ms must not hang until the client hangs up.
func TestForwardedLockEndsWhenHomeNeverAnswers(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	s := startService(t, f, cfg)
	register(f["a:1"], cfg, member{instance: "hung", addr: silentHome(t), token: "t",
		expires: time.Now().Add(time.Hour).UnixMilli()})
	s.refreshMembers()
	if m, _ := s.members.home("k"); m.instance != "hung" {
		t.Fatalf("home of k is %+v", m)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.NewSession().Lock(context.Background(), lockext.Request{Name: "k", TTL: 1, Wait: 50 * time.Millisecond, Owner: "o"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("a free lock whose home never answers: %v, want it granted here", err)
		}
	case <-time.After(20 * time.Second): // bounds a hang, times nothing
		t.Fatal("a forwarded lock with a 50 ms wait still waits for a home that never answers")
	}
}

// A proxy replaced by a new one at the same address leaves its registry
// entry behind until the entry expires. Only the process still renewing
// its entry listens there: the old entry must not be anybody's home,
// and asking for a name that it was home for must not break the link to
// the new proxy, under the requests waiting on it.
func TestReplacedProxyEntryDoesNotBreakTheNewOnesLink(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	homeCfg := cfg
	homeCfg.Instance = "new"
	home := startService(t, f, homeCfg)
	addr := listenAsHome(t, home)
	home.refreshMembers() // its entry now outlives the old one's
	register(f["a:1"], cfg, member{instance: "old", addr: addr, token: "gone",
		expires: time.Now().Add(memberLease - time.Second).UnixMilli()})
	s := startService(t, f, cfg)
	s.refreshMembers()
	waitedFor := nameHomedAt(t, home, "new")
	if _, err := home.NewSession().Lock(context.Background(), lockext.Request{Name: waitedFor, TTL: 5, Owner: "holder"}); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		_, err := s.NewSession().Lock(context.Background(), lockext.Request{Name: waitedFor, TTL: 5, Wait: time.Minute,
			Owner: "waiter", OnWait: func() { close(waiting) }})
		got <- err
	}()
	<-waiting
	// Names homed at either entry, asked for meanwhile.
	for i := 0; i < 50; i++ {
		name := strings.Repeat("n", 1+i%5) + string(rune('a'+i%26))
		s.NewSession().Info(context.Background(), name)
	}
	if _, err := home.NewSession().Unlock(context.Background(), waitedFor, holderFence(t, home, waitedFor)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().ForwardFailed; n != 0 {
		t.Fatalf("%d forwarded requests failed and were served here: the entry of a proxy replaced at the same address "+
			"was taken for a home, and its link replaced the new proxy's", n)
	}
}

// holderFence reads the fence of the grant in force on name.
func holderFence(t *testing.T, s *Service, name string) uint64 {
	t.Helper()
	info, err := s.manager.Info(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return info.Fence
}

// A grant forwarded back from the home says whether its holder had it
// already (the same owner asking again), as one made here does: the proxy
// keeps such a grant when its reply cannot be delivered.
func TestForwardedGrantSaysAgain(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	home := startService(t, f, cfg)
	listenAsHome(t, home)
	s := startService(t, f, cfg)
	s.refreshMembers()
	name := nameHomedAt(t, s, home.cfg.Instance)
	var grants []lockext.Grant
	for _, r := range []lockext.Request{
		{Name: name, TTL: 5, Owner: "o"}, {Name: name, TTL: 5, Owner: "o"},
		{Name: name + "r", TTL: 5, Owner: "o", Reentrant: true}, {Name: name + "r", TTL: 5, Owner: "o", Reentrant: true},
	} {
		g, err := s.NewSession().Lock(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		grants = append(grants, g)
	}
	if grants[0].Again || !grants[1].Again || grants[1].Fence != grants[0].Fence {
		t.Errorf("lock, and the same owner again: %+v", grants[:2])
	}
	if grants[3].Again || grants[3].Count != 2 {
		t.Errorf("a reentrant lock taken again is a new level: %+v", grants[3])
	}
	if s.Stats().ForwardedOut == 0 {
		t.Fatal("nothing was forwarded")
	}
}

// A home that cancels a request the forwarding proxy did not cancel (its
// link to that proxy ended under it, or it is shutting down) says "ERR
// CX": the request is served here, as when the home cannot be reached.
// It used to reach the client as the forwarder's own cancellation:
// "SERVER_ERROR client gone" to a client that was there, its unlock not
// done and its lease held for its ttl.
func TestRequestCancelledByTheHomeIsServedHere(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	s := startService(t, f, cfg)
	g, err := s.manager.Lock(context.Background(), lockext.Request{Name: "k", TTL: 5, Owner: "o"})
	if err != nil {
		t.Fatal(err)
	}
	register(f["a:1"], cfg, member{instance: "going", addr: fakeHome(t, func([]string) string { return "ERR CX 0" }),
		token: "t", expires: time.Now().Add(time.Hour).UnixMilli()})
	s.refreshMembers()
	if left, err := s.NewSession().Unlock(context.Background(), "k", g.Fence); err != nil || left != 0 {
		t.Fatalf("unlock the home cancelled: %d %v, want it done here", left, err)
	}
	if _, err := tryLock(s, "k", "next"); err != nil {
		t.Fatalf("after the unlock: %v", err)
	}
}

// A proxy that closes takes its entry out of the registry, so that the
// others stop forwarding to it at once rather than when the entry expires
// (every forward meanwhile bounced, and its names served at polling speed).
func TestClosedProxyLeavesTheRegistry(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	home, err := New(cfg, func(string) Conn { return f["a:1"] })
	if err != nil {
		t.Fatal(err)
	}
	listenAsHome(t, home)
	s := startService(t, f, cfg)
	s.refreshMembers()
	if n := len(s.members.list()); n != 1 {
		t.Fatalf("%d proxies registered, want the home", n)
	}
	home.Close()
	s.refreshMembers()
	if list := s.members.list(); len(list) != 0 {
		t.Fatalf("a closed proxy is still in the registry: %+v", list)
	}
}

// A closed service forwards nothing: a request made after Close (a client
// connection finishing while its proxy shuts down releases its locks) is
// served here rather than open a link to a home that nobody closes again.
func TestClosedServiceOpensNoLinks(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	home := startService(t, f, cfg)
	listenAsHome(t, home)
	s, err := New(cfg, func(string) Conn { return f["a:1"] })
	if err != nil {
		t.Fatal(err)
	}
	s.refreshMembers()
	name := nameHomedAt(t, s, home.cfg.Instance)
	s.Close()
	if _, err := s.NewSession().Info(context.Background(), name); !errors.Is(err, lockext.ErrNotFound) {
		t.Fatalf("lockinfo after Close: %v", err)
	}
	if n := home.Stats().ForwardedIn; n != 0 {
		t.Fatalf("a closed service forwarded %d requests over a link opened after Close", n)
	}
}

// A proxy that begins to shut down stops its waits and leaves the
// registry, but keeps its links to homes until its client connections
// have finished: a connection lock they held at a home is then released
// there, over the link, and handed to the home's next waiter at once.
// (Served here instead, the home learns of it at its head waiter's next
// look, which may be the holder's whole ttl away, and a grant the home
// made to a waiter of ours as the link closed reached nobody.)
func TestStoppedServiceReleasesAtTheHome(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 60, "a:1")
	cfg.Poll = time.Minute // only a handoff at the home is prompt
	home := startService(t, f, cfg)
	listenAsHome(t, home)
	s := startService(t, f, cfg)
	s.refreshMembers()
	name := nameHomedAt(t, s, home.cfg.Instance)
	sess := s.NewSession()
	if _, err := sess.Lock(context.Background(), lockext.Request{Name: name, TTL: 60}); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		_, err := home.NewSession().Lock(context.Background(), lockext.Request{Name: name, TTL: 5, Wait: time.Minute,
			Owner: "next", OnWait: func() { close(waiting) }})
		got <- err
	}()
	<-waiting
	s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	sess.Close(ctx)
	cancel()
	s.Close()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second): // bounds a hang: the holder's ttl is 60 s
		t.Fatal("the home's waiter still waits after the connection lock was released by a proxy shutting down")
	}
}

// A proxy that has begun to shut down still serves the names it is home
// for itself, though it has left the registry: its manager holds their
// state (a successor it reserved, and just wrote out because its waiter
// left), which the proxy the names move to would not know.
func TestStoppedServiceServesItsOwnNames(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	other := startService(t, f, cfg)
	listenAsHome(t, other)
	s := startService(t, f, cfg)
	listenAsHome(t, s)
	s.refreshMembers()
	name := nameHomedAt(t, s, s.cfg.Instance)
	s.Stop()
	s.NewSession().Info(context.Background(), name)
	if n := s.Stats().ForwardedOut; n != 0 {
		t.Fatalf("a name homed here was forwarded %d times after Stop", n)
	}
}
