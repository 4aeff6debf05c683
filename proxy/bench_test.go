package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/ring"
)

// benchRoundTrip sends req and reads exactly len(want) bytes per op, over
// one connection through a proxy in front of real memcached. allocs/op is
// the proxy's: the client reuses its buffers.
func benchRoundTrip(b *testing.B, servers int, setup, req, want string) {
	var mcs []*testmc.Memcached
	for i := 0; i < servers; i++ {
		mcs = append(mcs, testmc.Start(b))
	}
	benchRoundTripOn(b, mcs, setup, req, want)
}

func benchRoundTripOn(b *testing.B, mcs []*testmc.Memcached, setup, req, want string) {
	addr, _ := startBenchProxy(b, mcs)
	c := dialB(b, addr)
	if setup != "" {
		c.Write([]byte(setup))
		io.ReadFull(c, make([]byte, strings.Count(setup, "\r\n")/2*len("STORED\r\n")))
	}
	buf := make([]byte, len(want))
	reqb := []byte(req)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Write(reqb)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if string(buf) != want {
		b.Fatalf("got %q", buf)
	}
}

func BenchmarkGet(b *testing.B) {
	benchRoundTrip(b, 1, "set k 0 0 100\r\n"+strings.Repeat("x", 100)+"\r\n", "get k\r\n",
		"VALUE k 0 100\r\n"+strings.Repeat("x", 100)+"\r\nEND\r\n")
}

func BenchmarkSet(b *testing.B) {
	benchRoundTrip(b, 1, "", "set k 0 0 100\r\n"+strings.Repeat("x", 100)+"\r\n", "STORED\r\n")
}

func BenchmarkMultiGet10Keys2Servers(b *testing.B) {
	mcs := []*testmc.Memcached{testmc.Start(b), testmc.Start(b)}
	r, _ := ring.New([]ring.Server{{Addr: mcs[0].Addr, Weight: 1}, {Addr: mcs[1].Addr, Weight: 1}}, ring.Ketama, "md5")
	// Five keys on each server, so the get is really split and merged.
	var keys []string
	count := [2]int{}
	for i := 0; len(keys) < 10; i++ {
		k := fmt.Sprintf("k%d", i)
		if p := r.Pick([]byte(k)); count[p] < 5 {
			count[p]++
			keys = append(keys, k)
		}
	}
	var setup, req, want strings.Builder
	req.WriteString("get")
	for _, k := range keys {
		setup.WriteString("set " + k + " 0 0 1\r\nx\r\n")
		req.WriteString(" " + k)
		want.WriteString("VALUE " + k + " 0 1\r\nx\r\n")
	}
	req.WriteString("\r\n")
	want.WriteString("END\r\n")
	benchRoundTripOn(b, mcs, setup.String(), req.String(), want.String())
}

func BenchmarkLockUnlock(b *testing.B) {
	mc := testmc.Start(b, "-M") // a lock server that cannot evict: no stats behind each add
	addr, _ := startBenchProxy(b, []*testmc.Memcached{mc})
	c := dialB(b, addr)
	buf := make([]byte, 256)
	lock, unlock := []byte("lock bench\r\n"), []byte("unlock bench ")
	line := make([]byte, 0, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ { // the client allocates nothing: allocs/op are the proxy's
		c.Write(lock)
		n, err := c.Read(buf)
		if err != nil || !bytes.HasPrefix(buf[:n], []byte("LOCKED ")) {
			b.Fatalf("%q %v", buf[:n], err)
		}
		fence := buf[len("LOCKED "):n]
		fence = fence[:bytes.IndexByte(fence, ' ')]
		line = append(append(append(line[:0], unlock...), fence...), "\r\n"...)
		c.Write(line)
		if n, err := c.Read(buf); err != nil || !bytes.Equal(buf[:n], []byte("UNLOCKED 0\r\n")) {
			b.Fatalf("%q %v", buf[:n], err)
		}
	}
}

func startBenchProxy(b *testing.B, mcs []*testmc.Memcached) (string, *Server) {
	b.Helper()
	var cfg Config
	for _, m := range mcs {
		cfg.Servers = append(cfg.Servers, ring.Server{Addr: m.Addr, Weight: 1})
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.LockFresh = true // the servers were just started
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(l)
	b.Cleanup(func() { s.Shutdown(context.Background()) })
	return l.Addr().String(), s
}

func dialB(b *testing.B, addr string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}
