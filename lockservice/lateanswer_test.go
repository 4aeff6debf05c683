package lockservice

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockext"
)

// slowHome is a home proxy that grants every lock request, but only once
// the test lets it answer (a home paused, then resumed), and records the
// grants given back and released there. keep: it keeps what is given back
// (its owner may have been told of it).
type slowHome struct {
	addr   string
	resume chan struct{}
	keep   bool
	mu     sync.Mutex
	back   []string // the R and U requests, without their tags
}

func newSlowHome(t *testing.T, keep bool) *slowHome {
	h := &slowHome{resume: make(chan struct{}), keep: keep}
	h.addr = testmc.Serve(t, func(nc net.Conn) {
		br := bufio.NewReader(nc)
		if _, err := br.ReadString('\n'); err != nil {
			return
		}
		var wmu sync.Mutex
		write := func(s string) { wmu.Lock(); nc.Write([]byte(s)); wmu.Unlock() }
		write("PEER\r\n")
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			switch {
			case len(f) > 1 && f[1] == "L":
				go func() {
					<-h.resume
					write(f[0] + " LOCKED 5 10 1 o 7\r\n")
				}()
			case len(f) > 1 && (f[1] == "R" || f[1] == "U"):
				h.mu.Lock()
				h.back = append(h.back, strings.Join(f[1:], " "))
				h.mu.Unlock()
				if f[1] == "R" && h.keep {
					write(f[0] + " ERR KP 0\r\n")
				} else {
					write(f[0] + " UNLOCKED 0\r\n")
				}
			}
		}
	})
	return h
}

func (h *slowHome) given() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.back...)
}

// A home that grants a lock after the proxy that forwarded it gave up
// (its client hung up, or the home took so long that the name was served
// here) made a grant that reached nobody. It must be given back, not
// left to stand for its ttl with nobody to release it.
func TestLateGrantFromTheHomeIsGivenBack(t *testing.T) {
	for _, c := range []struct {
		name   string
		hangUp bool
		owner  string
		keep   bool
		want   []string
	}{
		{"client hung up", true, "o", false, []string{"R k 5 7 slow"}},
		{"home too slow", false, "o", false, []string{"R k 5 7 slow"}},
		// A connection's lock the home keeps is released once its
		// connection has closed.
		{"connection closed, kept", true, "", true, []string{"R k 5 7 slow", "U k 5"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := fakes("a:1")
			cfg := testConfig(t, 1, 30, "a:1")
			s := startService(t, f, cfg)
			home := newSlowHome(t, c.keep)
			register(f["a:1"], cfg, member{instance: "slow", addr: home.addr, token: "t",
				expires: time.Now().Add(time.Hour).UnixMilli()})
			s.refreshMembers()
			if m, _ := s.members.home("k"); m.instance != "slow" {
				t.Fatalf("home of k is %+v", m)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req := lockext.Request{Name: "k", TTL: 10, Wait: 50 * time.Millisecond, Owner: c.owner}
			if c.hangUp {
				req.Wait = time.Minute
				req.OnWait = cancel // hangs up as soon as it waits
			}
			ss := s.NewSession()
			ss.Lock(ctx, req) // fails, or is granted here: either way, after the forwarder gave up
			if c.owner == "" {
				ss.Close(context.Background())
			}
			close(home.resume)
			within(10*time.Second, func() bool { return len(home.given()) >= len(c.want) })
			if got := home.given(); strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Errorf("given back to the home: %q, want %q", got, c.want)
			}
		})
	}
}

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
