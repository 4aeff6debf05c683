package lockservice

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// twoProxiesAndHome starts a home proxy and two proxies that forward to
// it, and returns them with a name homed there.
func twoProxiesAndHome(t *testing.T) (home, p1, p2 *Service, name string) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 30, "a:1")
	home = startService(t, f, cfg)
	listenAsHome(t, home)
	p1, p2 = startService(t, f, cfg), startService(t, f, cfg)
	p1.refreshMembers()
	p2.refreshMembers()
	return home, p1, p2, nameHomedAt(t, p1, home.cfg.Instance)
}

func lockVia(t *testing.T, s *Service, name, owner string) lockext.Grant {
	t.Helper()
	g, err := s.NewSession().Lock(context.Background(), lockext.Request{Name: name, TTL: 30, Owner: owner})
	if err != nil {
		t.Fatalf("lock %s for %s: %v", name, owner, err)
	}
	return g
}

// The owner of a grant whose LOCKED line a proxy fails to deliver asks
// again through another proxy, and is given the grant back by the home
// both forward to. The first proxy's release of the undelivered grant
// reaches the home, which must keep it: the owner knows it now.
func TestUndeliveredForwardedGrantGivenAgainElsewhere(t *testing.T) {
	home, p1, p2, name := twoProxiesAndHome(t)
	first := lockVia(t, p1, name, "o")
	if first.By != home.cfg.Instance || first.Reply == 0 {
		t.Fatalf("a forwarded grant does not say where it was made: %+v", first)
	}
	if again := lockVia(t, p2, name, "o"); !again.Again || again.Fence != first.Fence {
		t.Fatalf("asked again through another proxy: %+v", again)
	}
	if _, err := p1.NewSession().Undelivered(context.Background(), first); !errors.Is(err, lockext.ErrKept) {
		t.Fatalf("undelivered after its owner got it back: %v, want ErrKept", err)
	}
	if g, err := tryLock(p2, name, "other"); !errors.Is(err, lockext.ErrNotLocked) {
		t.Fatalf("another owner: %+v %v: the lock was freed under its holder", g, err)
	}
	if p1.Stats().ForwardFailed+p2.Stats().ForwardFailed != 0 {
		t.Fatal("a request was served away from the home")
	}
}

// An undelivered forwarded grant that nobody asked for again is given
// back at the home: its lock is free at once, not after its ttl.
func TestUndeliveredForwardedGrantGivenBack(t *testing.T) {
	_, p1, p2, name := twoProxiesAndHome(t)
	first := lockVia(t, p1, name, "o")
	if left, err := p1.NewSession().Undelivered(context.Background(), first); err != nil || left != 0 {
		t.Fatalf("undelivered: %d %v", left, err)
	}
	lockVia(t, p2, name, "other")
}

// The owner asks again through a proxy that serves the name itself (its
// home out of reach from there): that proxy renews the grant in
// memcached, and the home, which made the undelivered reply, keeps it.
func TestUndeliveredGrantGivenAgainByAProxyServingItself(t *testing.T) {
	_, p1, p2, name := twoProxiesAndHome(t)
	first := lockVia(t, p1, name, "o")
	again, err := p2.NewSession().ls.Lock(context.Background(), lockext.Request{Name: name, TTL: 30, Owner: "o"})
	if err != nil || !again.Again {
		t.Fatalf("asked again where the name is served itself: %+v %v", again, err)
	}
	if _, err := p1.NewSession().Undelivered(context.Background(), first); !errors.Is(err, lockext.ErrKept) {
		t.Fatalf("undelivered after its owner got it back: %v, want ErrKept", err)
	}
	if g, err := tryLock(p2, name, "other"); !errors.Is(err, lockext.ErrNotLocked) {
		t.Fatalf("another owner: %+v %v: the lock was freed under its holder", g, err)
	}
}

// A grant is given back only where it was made, and only when that
// proxy says it did: a home whose LOCKED line carries no reply number (an
// older version) or that refuses the request, or a name whose home has
// changed since, keeps the grant; nothing is released here instead.
func TestUndeliveredKeptUnlessItsHomeGivesItBack(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 30, "a:1")
	s := startService(t, f, cfg)
	var locked atomic.Value
	locked.Store("LOCKED 7 30 1 o")
	var asked atomic.Int32
	register(f["a:1"], cfg, member{instance: "old", token: "t", expires: time.Now().Add(time.Hour).UnixMilli(),
		addr: fakeHome(t, func(f []string) string {
			if f[1] == "L" {
				return locked.Load().(string)
			}
			asked.Add(1)
			return "ERR BR 0" // an op it does not know
		})})
	s.refreshMembers()
	sess := s.NewSession()
	g, err := sess.Lock(context.Background(), lockext.Request{Name: "k", TTL: 30, Owner: "o"})
	if err != nil || g.Reply != 0 {
		t.Fatalf("lock at an older home: %+v %v", g, err)
	}
	if _, err := sess.Undelivered(context.Background(), g); !errors.Is(err, lockext.ErrKept) || asked.Load() != 0 {
		t.Fatalf("undelivered, no reply number: %v (asked %d times), want ErrKept without asking", err, asked.Load())
	}
	locked.Store("LOCKED 7 30 1 o 3")
	if g, err = sess.Lock(context.Background(), lockext.Request{Name: "k", TTL: 30, Owner: "o"}); err != nil || g.Reply != 3 || g.By != "old" {
		t.Fatalf("lock: %+v %v", g, err)
	}
	if _, err := sess.Undelivered(context.Background(), g); err == nil || asked.Load() != 1 {
		t.Fatalf("undelivered, refused by the home: %v (asked %d times)", err, asked.Load())
	}
	moved := g
	moved.By = "gone"
	if _, err := sess.Undelivered(context.Background(), moved); !errors.Is(err, lockext.ErrKept) || asked.Load() != 1 {
		t.Fatalf("undelivered, made by a proxy that is no longer home: %v, want ErrKept without asking", err)
	}
	if n := s.Stats().Grants; n != 0 {
		t.Fatalf("%d grants made here", n)
	}
}
