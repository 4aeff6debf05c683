package lockservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
	"github.com/memcachedlock/memcachedlock/ring"
)

// testConfig is a service's configuration over fake lock servers named
// a:1, b:1, ...; tests change what they are about.
func testConfig(t *testing.T, replicas, maxTTL int, names ...string) Config {
	t.Helper()
	servers, err := ring.ParseServers(names)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Servers: servers, Distribution: ring.Ketama, Hash: "md5", Replicas: replicas,
		Prefix: "__memcachedlock:", MaxTTL: maxTTL, MaxWait: time.Minute, Poll: 10 * time.Millisecond,
		Timeout: 200 * time.Millisecond, Fresh: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// startService runs a service with cfg over the fakes, closed at the end
// of the test.
func startService(t *testing.T, fakes map[string]*fakeMC, cfg Config) *Service {
	t.Helper()
	s, err := New(cfg, func(addr string) Conn { return fakes[addr] })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// newTestService runs a service over fresh fake lock servers.
func newTestService(t *testing.T, fakes map[string]*fakeMC, replicas, maxTTL int, names ...string) *Service {
	t.Helper()
	return startService(t, fakes, testConfig(t, replicas, maxTTL, names...))
}

// onThree runs a service over the fakes a:1, b:1 and c:1, every name on
// all three: the setting of the tests of replicas that fall behind.
func onThree(t *testing.T, f map[string]*fakeMC) *Service {
	t.Helper()
	return newTestService(t, f, 3, 30, "a:1", "b:1", "c:1")
}

func fakes(names ...string) map[string]*fakeMC {
	m := make(map[string]*fakeMC)
	for _, n := range names {
		m[n] = newFakeMC()
	}
	return m
}

func tryLock(s *Service, name, owner string) (lockext.Grant, error) {
	return s.NewSession().Lock(context.Background(), lockext.Request{Name: name, TTL: 1, Owner: owner})
}

func TestReplicasSurviveOneServerDown(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := newTestService(t, f, 3, 5, "a:1", "b:1", "c:1")
	f["b:1"].set(true, 0)
	g, err := tryLock(s, "k", "one")
	if err != nil {
		t.Fatalf("one of three down: %v", err)
	}
	if _, err := tryLock(s, "k", "two"); !errors.Is(err, lockext.ErrNotLocked) {
		t.Fatalf("second owner while held: %v", err)
	}
	if _, err := s.NewSession().Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatal(err)
	}
	f["c:1"].set(true, 0)
	if _, err := tryLock(s, "k", "two"); !errors.Is(err, lockext.ErrUnavailable) {
		t.Fatalf("two of three down: %v, want unavailable", err)
	}
}

// A paused replica (answering after the timeout) costs no one its timeout
// when the others are a majority.
func TestReplicasDoNotWaitForASlowOne(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := newTestService(t, f, 3, 5, "a:1", "b:1", "c:1")
	f["a:1"].set(false, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // bounds a hang
	defer cancel()
	if _, err := s.NewSession().Lock(ctx, lockext.Request{Name: "k", TTL: 1, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
}

// A flushed lock server takes no grant while one made before could still
// be believed in; after the longest ttl it takes them again.
func TestFlushedServerRecovers(t *testing.T) {
	f := fakes("a:1")
	s := newTestService(t, f, 1, 1, "a:1")
	if _, err := tryLock(s, "k", "one"); err != nil {
		t.Fatal(err)
	}
	f["a:1"].flush()
	if g, err := tryLock(s, "k", "two"); !errors.Is(err, ErrRecovering) {
		t.Fatalf("after a flush: %+v %v, want recovering", g, err)
	}
	for i := 0; ; i++ {
		_, err := tryLock(s, "k", "two")
		if err == nil {
			break
		}
		if !errors.Is(err, ErrRecovering) || i == 100 {
			t.Fatalf("after the recovery: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An evicted lock item is noticed from the evictions counter read behind
// the next add: no second grant.
func TestEvictionPutsServerIntoRecovery(t *testing.T) {
	f := fakes("a:1")
	f["a:1"].evictable = true
	s := newTestService(t, f, 1, 300, "a:1")
	if _, err := tryLock(s, "k", "one"); err != nil {
		t.Fatal(err)
	}
	f["a:1"].evict("__memcachedlock:k")
	if g, err := tryLock(s, "k", "two"); !errors.Is(err, ErrRecovering) {
		t.Fatalf("after an eviction: %+v %v, want recovering", g, err)
	}
	if f["a:1"].has("__memcachedlock:k") {
		t.Fatal("the void grant's item was left behind")
	}
}

// Two of three replicas lose their state within the holder's ttl: the
// third still holds the grant and the other two take no writes, so no
// majority can form for anybody else.
func TestTwoReplicasLostNoSecondGrant(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := newTestService(t, f, 3, 300, "a:1", "b:1", "c:1")
	if _, err := tryLock(s, "k", "one"); err != nil {
		t.Fatal(err)
	}
	f["a:1"].flush()
	f["b:1"].flush()
	for i := 0; i < 3; i++ {
		if g, err := tryLock(s, "k", "two"); err == nil {
			t.Fatalf("granted again with two replicas lost: %+v", g)
		}
	}
}

// A replica whose add succeeds after the write was decided as failed
// takes it back, so that it blocks nobody.
func TestLateWriteIsUndone(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := newTestService(t, f, 3, 300, "a:1", "b:1", "c:1")
	// The name lives on all three; one is down, one holds somebody's item.
	f["a:1"].set(true, 0)
	f["c:1"].put("__memcachedlock:k", []byte("1 x 1 o other"), 999)
	f["b:1"].set(false, 300*time.Millisecond)
	if _, err := tryLock(s, "k", "me"); err == nil {
		t.Fatal("granted without a majority")
	}
	for i := 0; f["b:1"].has("__memcachedlock:k"); i++ {
		if i == 500 { // 10 s: bounds a hang on a loaded machine, times nothing
			t.Fatal("the late add on b was never undone")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A proxy configured with another lock server list finds its peers'
// markers and refuses rather than look for locks elsewhere.
func TestLayoutDiffers(t *testing.T) {
	f := fakes("a:1", "b:1")
	newTestService(t, f, 1, 300, "a:1")
	other := newTestService(t, f, 1, 300, "a:1", "b:1")
	if _, err := tryLock(other, "k", "o"); !errors.Is(err, ErrServersDiffer) {
		t.Fatalf("%v, want servers differ", err)
	}
}

// A new lock server (no marker anywhere) is adopted after a short wait in
// which a running proxy could announce a loss, even when each request's
// deadline is shorter than that wait.
func TestNewServerAdoptedWithShortDeadlines(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 300, "a:1")
	cfg.Timeout, cfg.Fresh = 50*time.Millisecond, false
	s := startService(t, f, cfg)
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := s.NewSession().Lock(ctx, lockext.Request{Name: "k", TTL: 1, Owner: "o"})
		cancel()
		if err == nil {
			return
		}
		if i == 200 {
			t.Fatalf("a new lock server was never adopted: %v", err)
		}
	}
}

// A proxy that sees a lock server lose its state announces it: a proxy
// started afterwards, which never knew the server, recovers too.
func TestLossAnnouncedToLaterProxy(t *testing.T) {
	f := fakes("a:1")
	first := newTestService(t, f, 1, 300, "a:1")
	if _, err := tryLock(first, "k", "one"); err != nil {
		t.Fatal(err)
	}
	f["a:1"].flush() // as a restart would
	for i := 0; ; i++ {
		if st := first.States()[0]; st.Recovering {
			break
		}
		if i == 500 {
			t.Fatal("the first proxy never saw the loss")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the announcement is written by then
	cfg := testConfig(t, 1, 300, "a:1")
	cfg.Timeout, cfg.Fresh = time.Second, false
	later := startService(t, f, cfg)
	if g, err := tryLock(later, "k", "two"); !errors.Is(err, ErrRecovering) {
		t.Fatalf("a proxy started after the loss: %+v %v, want recovering", g, err)
	}
}

// Lock servers of a new cluster, adopted one after the other, are not
// taken for ones that lost their state because the first already has its
// marker.
func TestNewClusterOfSeveralServers(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	cfg := testConfig(t, 1, 300, "a:1", "b:1", "c:1")
	cfg.Timeout, cfg.Fresh = time.Second, false
	s := startService(t, f, cfg)
	for i := 0; i < 30; i++ {
		if _, err := tryLock(s, fmt.Sprintf("k%d", i), "o"); err != nil {
			t.Fatalf("lock %d in a new cluster: %v", i, err)
		}
	}
	for _, st := range s.States() {
		if !st.Ready {
			t.Errorf("%s: %+v, want ready", st.Addr, st)
		}
	}
}

// With two of three replicas down nothing about a grant can be decided:
// extend, unlock and lockinfo answer "unavailable" (SERVER_ERROR), never
// NOT_OWNER or NOT_FOUND, which would tell the holder its lock is gone.
func TestNoMajorityIsUnavailableForEveryCommand(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	s := newTestService(t, f, 3, 5, "a:1", "b:1", "c:1")
	g, err := tryLock(s, "k", "one")
	if err != nil {
		t.Fatal(err)
	}
	f["b:1"].set(true, 0)
	f["c:1"].set(true, 0)
	// A fresh session and process state: nothing remembered helps.
	other := newTestService(t, f, 3, 5, "a:1", "b:1", "c:1")
	for i, svc := range []*Service{s, other} {
		sess := svc.NewSession()
		if _, err := sess.Extend(context.Background(), "k", g.Fence, 5); !errors.Is(err, lockext.ErrUnavailable) {
			t.Errorf("service %d: extend with two of three down: %v, want unavailable", i, err)
		}
		if _, err := sess.Info(context.Background(), "k"); !errors.Is(err, lockext.ErrUnavailable) {
			t.Errorf("service %d: lockinfo with two of three down: %v, want unavailable", i, err)
		}
		if _, err := sess.Unlock(context.Background(), "k", g.Fence); !errors.Is(err, lockext.ErrUnavailable) {
			t.Errorf("service %d: unlock with two of three down: %v, want unavailable", i, err)
		}
	}
}

// Every lock server restarting empty together with every proxy leaves
// nothing in memcached to say that grants may still run: a new proxy with
// the old one's state file recovers instead of taking the server for new,
// even when told the servers are fresh.
func TestStateFileRemembersAcrossAFullRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lockstate")
	f := fakes("a:1")
	cfg := testConfig(t, 1, 30, "a:1")
	cfg.StateFile = path
	first, err := New(cfg, func(string) Conn { return f["a:1"] })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tryLock(first, "k", "holder"); err != nil {
		t.Fatal(err)
	}
	for { // the first save comes with the first adoption; wait for it, not for a time
		if until, _ := loadState(path); until["a:1"].After(time.Now().Add(29 * time.Second)) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	first.Close()
	f["a:1"].flush() // memcached restarted empty, marker and all

	second, err := New(cfg, func(string) Conn { return f["a:1"] })
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := tryLock(second, "k", "intruder"); !errors.Is(err, ErrRecovering) {
		t.Fatalf("lock after every lock server and proxy restarted: %v, want recovering", err)
	}
}

func TestStateFileRefusesGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lockstate")
	os.WriteFile(path, []byte("a:1 yesterday\n"), 0o644)
	if _, err := loadState(path); err == nil {
		t.Fatal("a state file with a bad line was read")
	}
	if until, err := loadState(filepath.Join(t.TempDir(), "none")); err != nil || len(until) != 0 {
		t.Fatalf("a missing state file: %v %v", until, err)
	}
}
