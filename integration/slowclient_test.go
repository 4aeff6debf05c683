package integration

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
)

// A client that sends its data block long after the command line is slow,
// not the server: the value is stored, and nobody else's traffic on that
// server notices, even with ejection on (one failure ejects).
func TestSlowClientIsNotASlowServer(t *testing.T) {
	c := startCluster(t, 2)
	servers := c.servers(t)
	const timeout = 150 * time.Millisecond
	addr, _ := startProxy(t, proxy.Config{Servers: servers, Timeout: timeout,
		AutoEject: true, FailureLimit: 1, RetryTimeout: time.Minute})
	keys := keysOn(t, servers, 1, 5)
	slow, others := keys[0], keys[1:]

	var stop atomic.Bool
	var wg sync.WaitGroup
	var ops atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		mc := memcache.New(addr)
		mc.Timeout = 5 * time.Second
		for i := 0; !stop.Load(); i++ {
			k := others[i%len(others)]
			v := fmt.Sprint(i)
			if err := mc.Set(&memcache.Item{Key: k, Value: []byte(v)}); err != nil {
				t.Errorf("set %s beside the slow client: %v", k, err)
				return
			}
			if it, err := mc.Get(k); err != nil || string(it.Value) != v {
				t.Errorf("get %s beside the slow client: %v %v", k, it, err)
				return
			}
			ops.Add(1)
		}
	}()

	rc := testmc.Dial(t, addr)
	rc.Send("set " + slow + " 0 0 5\r\n")
	time.Sleep(2 * timeout)
	rc.Send("hel")
	time.Sleep(timeout)
	for _, b := range "lo\r\n" {
		rc.Send(string(b))
		time.Sleep(timeout / 4)
	}
	if got := rc.Line(); got != "STORED" {
		t.Errorf("slow data block: %q, want STORED", got)
	}
	stop.Store(true)
	wg.Wait()
	if got := rc.RoundTrip("get " + slow); got != "VALUE "+slow+" 0 5" {
		t.Errorf("get after the slow set: %q", got)
	}
	stats := ask(t, addr, "stats\r\n", "END")
	for _, s := range servers {
		for _, bad := range []string{":timeouts ", ":ejections ", ":errors "} {
			if want := "STAT proxy_server:" + s.Addr + bad + "0\r\n"; !strings.Contains(stats, want) {
				t.Errorf("stats: want %q in\n%s", want, stats)
			}
		}
	}
	if ops.Load() == 0 {
		t.Error("the other client made no requests meanwhile")
	}
}
