package lockservice

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockext"
)

// cutRelay stands between proxies and a home: it passes what they send
// on, and the home's answers back, except that it cuts the connection,
// both ways, in place of the first answer that cut picks.
type cutRelay struct {
	addr string
	cut  func(line string) bool
	mu   sync.Mutex
	done bool // a connection was cut: the next ones pass everything
}

func startCutRelay(t *testing.T, to string, cut func(line string) bool) *cutRelay {
	t.Helper()
	r := &cutRelay{cut: cut}
	r.addr = testmc.Serve(t, func(in net.Conn) {
		out, err := net.Dial("tcp", to)
		if err != nil {
			in.Close()
			return
		}
		go func() {
			io.Copy(out, in)
			out.Close()
		}()
		r.answers(in, out)
	})
	return r
}

func (r *cutRelay) answers(in, out net.Conn) {
	defer in.Close()
	defer out.Close()
	br := bufio.NewReader(out)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		r.mu.Lock()
		cut := !r.done && r.cut(line)
		r.done = r.done || cut
		r.mu.Unlock()
		if cut {
			return
		}
		if _, err := in.Write([]byte(line)); err != nil {
			return
		}
	}
}

// testPeerProxy runs a service with cfg over f behind a peer listener of
// its own, shut down at the end of the test.
func testPeerProxy(t *testing.T, f map[string]*fakeMC, cfg Config) *peerProxy {
	t.Helper()
	p, err := startPeerProxy(startService(t, f, cfg), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.shutdown(nil) })
	return p
}

// A proxy forwards an unlock to the name's home, which carries it out,
// and the link breaks before the answer arrives. Serving the unlock here
// as well would answer NOT_FOUND to a holder whose grant ran until its
// unlock, and take off a second level of a reentrant lock, freeing it
// under the outer holder: the unlock is unavailable instead, and the
// client, which knows its levels, may try again.
func TestForwardedUnlockAnswerLost(t *testing.T) {
	for _, levels := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d levels", levels), func(t *testing.T) {
			f := fakes("a:1")
			cfg := testConfig(t, 1, 5, "a:1")
			cfg.EarlyHandoff = true
			cfg.Instance = "home"
			home := testPeerProxy(t, f, cfg)
			relay := startCutRelay(t, home.addr, func(line string) bool { return strings.Contains(line, " UNLOCKED ") })
			home.svc.Advertise(relay.addr) // the others reach the home through the relay
			cfg.Instance = "other"
			other := testPeerProxy(t, f, cfg)
			other.svc.refreshMembers()
			name := nameHomedAt(t, other.svc, "home")

			ctx := context.Background()
			sess := other.svc.NewSession()
			req := lockext.Request{Name: name, TTL: 5, Owner: "holder", Reentrant: levels > 1}
			var g lockext.Grant
			var err error
			for level := 1; level <= levels; level++ {
				if g, err = sess.Lock(ctx, req); err != nil || g.Count != level {
					t.Fatalf("lock level %d: %+v %v", level, g, err)
				}
			}
			if n := home.svc.Stats().ForwardedIn; n != uint64(levels) {
				t.Fatalf("the lock was not forwarded to its home: %d requests there", n)
			}
			left, err := sess.Unlock(ctx, name, g.Fence) // its answer is lost
			if err == nil && left != levels-1 || err != nil && !errors.Is(err, lockext.ErrUnavailable) {
				t.Errorf("unlock of a grant that ran until then, its answer lost: %d levels left, %v", left, err)
			}
			_, err = tryLock(home.svc, name, "intruder")
			if levels > 1 && err == nil {
				t.Error("another owner took the lock while its holder's outer level stood")
			}
			if levels == 1 && err != nil {
				t.Errorf("the lock was not released at its home: %v", err)
			}
		})
	}
}

// A home whose connections stop being read (its proxy shuts down) while
// it carries out an unlock forwarded to it finishes the unlock and
// answers it: cancelled half way, the unlock may be done all the same,
// and the forwarding proxy, told "cancelled", would serve it again (it
// serves here what its home cancelled of itself), answering NOT_FOUND to
// a holder whose grant ran, or taking off a second level of an rlock.
// Found by TestCrossStress (NOT_OWNER to an unlock forwarded to a home
// that was shutting down).
func TestUnlockFinishedByAHomeShuttingDown(t *testing.T) {
	f := fakes("a:1")
	cfg := testConfig(t, 1, 5, "a:1")
	cfg.Timeout = 5 * time.Second // the slow lock server below is slow, not down
	cfg.Instance = "home"
	home := testPeerProxy(t, f, cfg)
	cfg.Instance = "other"
	other := testPeerProxy(t, f, cfg)
	other.svc.refreshMembers()
	name := nameHomedAt(t, other.svc, "home")

	ctx := context.Background()
	g, err := home.svc.NewSession().Lock(ctx, lockext.Request{Name: name, TTL: 5, Owner: "holder"})
	if err != nil {
		t.Fatal(err)
	}
	f["a:1"].set(false, 300*time.Millisecond)
	type result struct {
		left int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		left, err := other.svc.NewSession().Unlock(ctx, name, g.Fence)
		got <- result{left, err}
	}()
	for i := 0; home.svc.Stats().ForwardedIn == 0; i++ {
		if i == 1000 {
			t.Fatal("the unlock never reached its home")
		}
		time.Sleep(5 * time.Millisecond)
	}
	home.stopReading()
	r := <-got
	f["a:1"].set(false, 0)
	if r.err != nil || r.left != 0 {
		t.Fatalf("unlock of a grant that ran, its home shutting down meanwhile: %d %v", r.left, r.err)
	}
}
