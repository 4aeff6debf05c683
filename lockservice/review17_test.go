package lockservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// A forwarded lock's answer may come just as its caller gives up: read
// takes the tag out of pending and puts the answer in the caller's
// channel, and the caller's select, with that answer and its give-up both
// ready, picks the give-up (select picks at random). The grant in it then
// reached nobody, like one that comes later: it goes to late, to be given
// back, not dropped to stand for its ttl.
func TestAbandonPassesOnAnAnswerThatJustCame(t *testing.T) {
	l := &peerLink{pending: make(map[uint64]chan []string)}
	ch := make(chan []string, 2)
	ch <- []string{"LOCKED", "5", "10", "1", "o", "7"} // delivered by read: tag 1 is no longer pending
	got := make(chan []string, 1)
	l.abandon(1, ch, func(f []string) { got <- f }, time.Minute)
	select {
	case f := <-got:
		if f[0] != "LOCKED" {
			t.Errorf("late got %q", f)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the answer that came as its caller gave up was dropped: the grant in it stands for its ttl")
	}
	if l.awaited != 0 {
		t.Errorf("awaited %d, want 0", l.awaited)
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

// A grant written by a proxy older than the change numbers carries none;
// once a newer proxy changes it (an extend), it does. A version read
// before that, without a number, is of a state that is gone, even though
// the bytes are the same again: a change of it must fail, as it fails
// for a numbered one. Compared by bytes because the version has no
// number, it succeeded on every replica: the double grant the numbers
// prevent, for every grant that outlives the upgrade of its proxies.
func TestChangeOfAnUnnumberedVersionFailsOnceNumbered(t *testing.T) {
	for _, n := range []int{1, 3} {
		f := fakes("a:1", "b:1", "c:1")
		s := newTestService(t, f, n, 30, "a:1", "b:1", "c:1")
		st, ctx, k := s.store, context.Background(), lockext.Key{Name: "k", Item: "__memcachedlock:k"}
		granted := []byte("7 x 1 o owner")
		for _, mc := range f {
			mc.put(k.Item, granted, 1<<40) // as an older proxy wrote it: no number
		}
		it, err := st.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.CompareAndSwap(ctx, k, granted, 20, it.Version); err != nil { // the owner's extend
			t.Fatal(err)
		}
		_, err = st.CompareAndSwap(ctx, k, []byte("8 x 1 o next"), 10, it.Version)
		if !errors.Is(err, lockext.ErrStoreExists) {
			t.Errorf("%d replicas: a change of the unnumbered version before the extend: %v, want ErrStoreExists", n, err)
		}
	}
}

// A late grant the home keeps is held by the session, to be released when
// it closes; by then the session may hold a later grant of the name (the
// client was told of the late one by asking again, released it, and took
// the lock again, while the home decided). A connection holds one grant of
// a name at a time, the one with the highest fence: the later one must be
// released at close, not the late one, or it stands for its ttl with its
// connection gone.
func TestLateGrantKeptDoesNotHideALaterOne(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 30, "a:1")
	s := startService(t, f, cfg)
	home := newSlowHome(t, true)
	register(f["a:1"], cfg, member{instance: "slow", addr: home.addr, token: "t",
		expires: time.Now().Add(time.Hour).UnixMilli()})
	s.refreshMembers()
	if m, _ := s.members.home("k"); m.instance != "slow" {
		t.Fatalf("home of k is %+v", m)
	}
	ss := s.NewSession()
	ss.forwarded = map[string]uint64{"k": 9} // the connection's lock, granted by the home after the late one
	ss.late(lockext.Request{Name: "k", TTL: 10}, "slow", []string{"LOCKED", "5", "10", "1", "o", "7"})
	ss.Close(context.Background())
	want := []string{"R k 5 7 slow", "U k 9"}
	if got := home.given(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("given back and released at the home: %q, want %q", got, want)
	}
}
