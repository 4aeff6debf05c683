package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// The lock path's own faults: how the proxy talks to a lock server
// (connections of the lock service's own, used one exchange at a time) and
// how a release hands over to the next waiter.

// lockClient is a raw connection for use from several goroutines, which
// report failures with t.Error instead of t.Fatal.
type lockClient struct {
	nc net.Conn
	br *bufio.Reader
}

func dialLockClient(t *testing.T, addr string) *lockClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &lockClient{nc: nc, br: bufio.NewReader(nc)}
}

func (c *lockClient) ask(cmd string) (string, error) {
	c.nc.SetDeadline(time.Now().Add(20 * time.Second)) // bounds a hang only
	if _, err := fmt.Fprintf(c.nc, "%s\r\n", cmd); err != nil {
		return "", err
	}
	line, err := c.br.ReadString('\n')
	return strings.TrimSuffix(line, "\r\n"), err
}

// Holders that release the moment their grant arrives, through one proxy
// and a real memcached: the release that handed the grant over may still
// be finishing. Every release must find its own grant (two overlapping
// hand-ons once let the first one's end lift the second one's guard, and a
// release answered NOT_OWNER), and no two clients ever hold at once.
func TestReleaseRightAfterGrant(t *testing.T) {
	mc := startCluster(t, 1)
	addr, _ := startProxy(t, faultConfig(mc.servers(t)))
	var holders atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		c := dialLockClient(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 150; j++ {
				got, err := c.ask("lock hot 3 10000")
				if err != nil || !strings.HasPrefix(got, "LOCKED ") {
					t.Errorf("lock: %q %v", got, err)
					return
				}
				if n := holders.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				holders.Add(-1)
				if got, err := c.ask("unlock hot " + strings.Fields(got)[1]); got != "UNLOCKED 0" {
					t.Errorf("unlock right after the grant: %q %v", got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A lock server that hangs with exchanges in flight: each answers
// SERVER_ERROR, and once the server is back, its late replies to them are
// never read as the replies to later commands. Every connection on which
// an exchange failed is closed, so each command after the hang gets its
// own answer: a lock, its lockinfo and its unlock agree on one fence.
func TestLockServerHangsMidExchange(t *testing.T) {
	mc := startCluster(t, 1)
	addr, _ := startProxy(t, faultConfig(mc.servers(t)))
	warm(t, addr)
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		c := dialLockClient(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.ask(fmt.Sprintf("lock hang%d 3 0", i))
			if err != nil || !strings.HasPrefix(got, "SERVER_ERROR ") && !strings.HasPrefix(got, "LOCKED ") {
				t.Errorf("lock during the hang: %q %v", got, err)
			}
		}()
	}
	mc[0].Pause()
	time.Sleep(time.Second) // every exchange in flight times out (--timeout 300ms)
	mc[0].Resume()
	wg.Wait()

	c := dialLockClient(t, addr)
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("after%d", i)
		got, _ := c.ask("lock " + name + " 3 2000")
		if got == "SERVER_ERROR lock server recovering" {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if !strings.HasPrefix(got, "LOCKED ") {
			t.Fatalf("lock %s after the hang: %q", name, got)
		}
		fence := strings.Fields(got)[1]
		if info, _ := c.ask("lockinfo " + name); !strings.HasPrefix(info, "LOCK "+fence+" ") {
			t.Fatalf("lockinfo %s after LOCKED %s: %q", name, fence, info)
		}
		if got, _ := c.ask("unlock " + name + " " + fence); got != "UNLOCKED 0" {
			t.Fatalf("unlock %s %s: %q", name, fence, got)
		}
		if info, _ := c.ask("lockinfo " + name); info != "NOT_FOUND" {
			t.Fatalf("lockinfo %s after its unlock: %q", name, info)
		}
	}
}

// Two of three replicas hung: nothing about a grant can be decided, so
// extend, lockinfo and unlock answer SERVER_ERROR through every proxy,
// never NOT_OWNER or NOT_FOUND (which would tell a holder its lock is
// gone while the two dead servers, back, would still hold it). A failed
// unlock may have removed the one copy it reached; once the servers are
// back the grant still stands on the two others.
func TestNoMajorityAnswersServerError(t *testing.T) {
	mc := startCluster(t, 3)
	cfg := faultConfig(mc.servers(t))
	cfg.LockReplicas = 3
	cfg.LockTTLMax = 60 // the grant outlives the test however slow the machine
	a, _ := startProxy(t, cfg)
	b, _ := startProxy(t, cfg)
	warm(t, a, b)
	got := testmc.Dial(t, a).RoundTrip("lock kept 60 0 holder")
	if !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock: %q", got)
	}
	fence := strings.Fields(got)[1]
	mc[1].Pause()
	mc[2].Pause()
	for _, p := range []string{a, b} {
		c := testmc.Dial(t, p)
		for _, cmd := range []string{"extend kept " + fence + " 60", "lockinfo kept", "unlock kept " + fence} {
			if got := c.RoundTrip(cmd); !strings.HasPrefix(got, "SERVER_ERROR ") {
				t.Errorf("%s through %s with two of three replicas paused: %q", cmd, p, got)
			}
		}
	}
	mc[1].Resume()
	mc[2].Resume()
	if got := testmc.Dial(t, b).RoundTrip("lock kept 60 0 intruder"); !strings.HasPrefix(got, "NOT_LOCKED ") {
		t.Fatalf("lock kept by another owner after the replicas came back: %q", got)
	}
}

// The lock server restarts empty while the only proxy restarts too: no
// marker anywhere, no proxy that saw the loss. The proxy's state file,
// kept across its restart, says grants there may still run: the new proxy
// recovers and grants nothing until the first holder's ttl has run out.
func TestStateFileCoversAFullRestart(t *testing.T) {
	mc := startCluster(t, 1)
	cfg := faultConfig(mc.servers(t))
	cfg.LockStateFile = filepath.Join(t.TempDir(), "lockstate")
	cfg.LockTTLMax = 6 // long enough to outlast the restarts on a slow machine
	first, srv := startProxyStrict(t, cfg)
	sent := time.Now()
	if got := testmc.Dial(t, first).RoundTrip("lock power-cut 6 0 holder"); !strings.HasPrefix(got, "LOCKED ") {
		t.Fatalf("lock: %q", got)
	}
	until := sent.Add(6 * time.Second)
	time.Sleep(1500 * time.Millisecond) // a save after the grant (once a second)
	srv.Shutdown(context.Background())
	mc[0].Restart(t)

	second, _ := startProxyStrict(t, cfg)
	if recovering := neverGranted(t, "power-cut", until, second); recovering == 0 {
		t.Fatal("the new proxy never said the lock server was recovering")
	}
}

// Lock commands pipelined behind a retrieval whose reply is still queued:
// each LOCKED line is its own grant's (a reply written at once reuses the
// connection's buffer; one queued must not), and in command order.
func TestPipelinedLocksEachGetTheirOwnReply(t *testing.T) {
	mc := startCluster(t, 1)
	addr, _ := startProxy(t, faultConfig(mc.servers(t)))
	c := testmc.Dial(t, addr)
	c.Send("get nothing\r\nlock p1 3\r\nlock p2 2\r\nlock p3 1\r\nlockinfo p1\r\nlockinfo p2\r\nlockinfo p3\r\n")
	if got := c.Line(); got != "END" {
		t.Fatalf("get: %q", got)
	}
	var fences []string
	for i, ttl := range []string{"3", "2", "1"} {
		got := c.Line()
		f := strings.Fields(got)
		if len(f) != 4 || f[0] != "LOCKED" || f[2] != ttl {
			t.Fatalf("lock p%d %s: %q", i+1, ttl, got)
		}
		fences = append(fences, f[1])
	}
	for i, fence := range fences {
		if got := c.Line(); !strings.HasPrefix(got, "LOCK "+fence+" ") {
			t.Fatalf("lockinfo p%d after LOCKED %s: %q", i+1, fence, got)
		}
	}
}
