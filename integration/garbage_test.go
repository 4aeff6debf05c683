package integration

import (
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/proxy"
)

// Garbage, truncated commands, absurd lengths, binary-protocol packets and
// idle half-open connections, while ordinary clients keep working: none of
// them may notice, and nothing may be left behind afterwards.
func TestGarbageDoesNotHurtOthers(t *testing.T) {
	c := startCluster(t, 2)
	addr, srv := startProxy(t, proxy.Config{Servers: c.servers(t), Timeout: 500 * time.Millisecond})
	time.Sleep(50 * time.Millisecond)
	baseline := runtime.NumGoroutine()

	var stop atomic.Bool
	var wg sync.WaitGroup
	var good atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			mc := memcache.New(addr)
			defer mc.Close()
			for i := 0; !stop.Load(); i++ {
				k := fmt.Sprintf("good:%d:%d", w, i%50)
				if err := mc.Set(&memcache.Item{Key: k, Value: []byte(k)}); err != nil {
					t.Errorf("set: %v", err)
					return
				}
				it, err := mc.Get(k)
				if err != nil || string(it.Value) != k {
					t.Errorf("get %s: %v", k, err)
					return
				}
				good.Add(1)
			}
		}(w)
	}

	attacks := [][]byte{
		[]byte("\x80\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00hello"), // binary get
		[]byte("set k 0 0 4294967296\r\n"),
		[]byte("set k 0 0 99999999999999999999999\r\n"),
		[]byte("set k 0 0 100000000\r\nshort"),
		[]byte("get"),
		[]byte("ms k 999999999999 T0\r\n"),
		[]byte("mg k v\r\nmg"),
		[]byte("\r\n\r\n\r\n\x00\x00\x00"),
		[]byte("lock k 30 300000\r\n"), // then hang up while waiting
		[]byte("get " + string(make([]byte, 5000)) + "\r\n"),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var idle []net.Conn
	for i := 0; i < 300; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		var payload []byte
		if i%3 == 0 {
			payload = make([]byte, rng.IntN(4096))
			for j := range payload {
				payload[j] = byte(rng.IntN(256))
			}
		} else {
			payload = attacks[i%len(attacks)]
		}
		conn.Write(payload)
		if i%10 == 0 {
			idle = append(idle, conn) // left open and idle: half a conversation
			continue
		}
		conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		conn.Read(make([]byte, 512))
		conn.Close()
	}
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if good.Load() == 0 {
		t.Fatal("the ordinary clients did no work")
	}

	// Hang up the idle ones; everything they held must go.
	if n := srv.Stats().CurrConnections; n < int64(len(idle)) {
		t.Errorf("only %d connections open, %d idle ones expected", n, len(idle))
	}
	for _, conn := range idle {
		conn.Close()
	}
	for i := 0; i < 300 && runtime.NumGoroutine() > baseline+2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines left, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
	t.Logf("%d good set+get pairs alongside 300 hostile connections", good.Load())
}
