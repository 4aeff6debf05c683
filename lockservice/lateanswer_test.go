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
