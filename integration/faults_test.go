package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// keysOn returns n keys that the ring puts on server i.
func keysOn(t *testing.T, servers []ring.Server, i, n int) []string {
	t.Helper()
	r, err := ring.New(servers, ring.Ketama, "md5")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := 0; len(out) < n; k++ {
		key := fmt.Sprintf("key:%d", k)
		if r.Pick([]byte(key)) == i {
			out = append(out, key)
		}
	}
	return out
}

// ask sends one command on a fresh connection and reads the reply up to
// and including a line that starts with one of ends.
func ask(t *testing.T, addr, cmd string, ends ...string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Generous: this bounds a hang, it does not time the proxy.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(cmd))
	br := bufio.NewReader(c)
	var out strings.Builder
	for {
		l, err := br.ReadString('\n')
		out.WriteString(l)
		if err != nil {
			t.Fatalf("%q: %v after %q", cmd, err, out.String())
		}
		for _, e := range ends {
			if strings.HasPrefix(l, e) {
				return out.String()
			}
		}
	}
}

func TestDeadServerAndReconnect(t *testing.T) {
	c := startCluster(t, 2)
	servers := c.servers(t)
	addr, _ := startProxy(t, proxy.Config{Servers: servers, Timeout: 300 * time.Millisecond})
	live, dead := keysOn(t, servers, 0, 1)[0], keysOn(t, servers, 1, 1)[0]
	mc := memcache.New(addr)
	for _, k := range []string{live, dead} {
		if err := mc.Set(&memcache.Item{Key: k, Value: []byte(k)}); err != nil {
			t.Fatal(err)
		}
	}
	c[1].Stop()

	if got := ask(t, addr, "get "+dead+"\r\n", "END", "SERVER_ERROR"); !strings.HasPrefix(got, "SERVER_ERROR ") {
		t.Fatalf("get on a dead server: %q", got)
	}
	if got := ask(t, addr, "set "+dead+" 0 0 1\r\nx\r\n", "STORED", "SERVER_ERROR"); !strings.HasPrefix(got, "SERVER_ERROR ") {
		t.Fatalf("set on a dead server: %q", got)
	}
	want := fmt.Sprintf("VALUE %s 0 %d\r\n%s\r\nEND\r\n", live, len(live), live)
	if got := ask(t, addr, "get "+live+"\r\n", "END"); got != want {
		t.Fatalf("get on the live server: %q", got)
	}
	// A multi-get over both answers what it can: the dead server's keys are misses.
	if got := ask(t, addr, "get "+dead+" "+live+"\r\n", "END"); got != want {
		t.Fatalf("multi-get over a dead server: %q", got)
	}

	c[1].Restart(t)
	reconnected := false
	for i := 0; i < 100 && !reconnected; i++ {
		reconnected = mc.Set(&memcache.Item{Key: dead, Value: []byte("back")}) == nil
		time.Sleep(20 * time.Millisecond)
	}
	if !reconnected {
		t.Fatal("the proxy did not reconnect to the restarted server")
	}
	if it, err := memcache.New(c[1].Addr).Get(dead); err != nil || string(it.Value) != "back" {
		t.Fatalf("value on the restarted server: %v %v", it, err)
	}
}

func TestHungServerTimesOut(t *testing.T) {
	c := startCluster(t, 2)
	servers := c.servers(t)
	addr, _ := startProxy(t, proxy.Config{Servers: servers, Timeout: 200 * time.Millisecond})
	live, hung := keysOn(t, servers, 0, 1)[0], keysOn(t, servers, 1, 1)[0]
	c[1].Pause()
	defer c[1].Resume()
	if got := ask(t, addr, "get "+hung+"\r\n", "END", "SERVER_ERROR"); !strings.HasPrefix(got, "SERVER_ERROR server") {
		t.Fatalf("get on a hung server: %q", got)
	}
	if got := ask(t, addr, "get "+live+"\r\n", "END", "SERVER_ERROR"); got != "END\r\n" {
		t.Fatalf("get on the other server: %q", got)
	}
	c[1].Resume()
	ok := false
	for i := 0; i < 100 && !ok; i++ {
		ok = ask(t, addr, "get "+hung+"\r\n", "END", "SERVER_ERROR") == "END\r\n"
		time.Sleep(20 * time.Millisecond)
	}
	if !ok {
		t.Fatal("no recovery after the server resumed")
	}
}

// Many clients, pipelined and noreply traffic, while one server is killed
// and restarted: keys on the other server never see an error, and every
// value read is one that was written.
func TestServerKilledUnderLoad(t *testing.T) {
	c := startCluster(t, 2)
	servers := c.servers(t)
	addr, _ := startProxy(t, proxy.Config{Servers: servers, Timeout: 300 * time.Millisecond})
	safe, doomed := keysOn(t, servers, 0, 60), keysOn(t, servers, 1, 40)
	piped := safe[40:] // the pipelining client's own keys
	safe = safe[:40]

	var stop atomic.Bool
	var wg sync.WaitGroup
	var safeErrors, doomedErrors, ops atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			mc := memcache.New(addr)
			mc.Timeout = 5 * time.Second
			for i := 0; !stop.Load(); i++ {
				for set, keys := range [][]string{safe, doomed} {
					k := keys[(w*5+i)%len(keys)]
					v := fmt.Sprintf("%s=%d", k, i)
					err := mc.Set(&memcache.Item{Key: k, Value: []byte(v)})
					if err == nil {
						var it *memcache.Item
						it, err = mc.Get(k)
						if err == nil && !strings.HasPrefix(string(it.Value), k+"=") {
							t.Errorf("read %q for key %s", it.Value, k)
						}
					}
					ops.Add(1)
					if err != nil && err != memcache.ErrCacheMiss {
						if set == 0 {
							safeErrors.Add(1)
							t.Errorf("key on the healthy server failed: %v", err)
						} else {
							doomedErrors.Add(1)
						}
					}
				}
			}
		}(w)
	}
	// A pipelining client: noreply sets, then one get, over and over.
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		for i := 0; !stop.Load(); i++ {
			var b strings.Builder
			for j := 0; j < 20; j++ {
				fmt.Fprintf(&b, "set %s 0 0 1 noreply\r\n%d\r\n", piped[j], j%10)
			}
			fmt.Fprintf(&b, "get %s\r\n", piped[19])
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Write([]byte(b.String()))
			want := fmt.Sprintf("VALUE %s 0 1\r\n9\r\nEND\r\n", piped[19])
			got := make([]byte, len(want))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
				t.Errorf("pipelined noreply sets then get: %q %v", got, err)
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	c[1].Stop()
	time.Sleep(500 * time.Millisecond)
	c[1].Restart(t)
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if doomedErrors.Load() == 0 {
		t.Error("no errors for keys on the killed server: was it killed?")
	}
	t.Logf("%d operations; %d errors on the killed server's keys, %d on the healthy one's", ops.Load(), doomedErrors.Load(), safeErrors.Load())
}
