package proxy

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/ring"
)

// startProxy runs a proxy over the given memcached servers until the test ends.
func startProxy(t *testing.T, cfg Config, mcs ...*testmc.Memcached) (string, *Server) {
	t.Helper()
	for _, m := range mcs {
		cfg.Servers = append(cfg.Servers, ring.Server{Addr: m.Addr, Weight: 1})
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	cfg.LockFresh = true // the servers were just started
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return l.Addr().String(), s
}

func TestWireBadDataChunkCloses(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t))
	c := testmc.Dial(t, addr)
	c.Send("set a 0 0 2\r\nxxx\r\nget a\r\n")
	c.Expect("CLIENT_ERROR bad data chunk\r\n")
	c.ExpectClosed()
}

func TestWireReservedKeys(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t))
	c := testmc.Dial(t, addr)
	const refused = "CLIENT_ERROR key is reserved for locks\r\n"
	c.Send("get __memcachedlock:x\r\nset __memcachedlock:x 0 0 3\r\nabc\r\ndelete __memcachedlock:x\r\n" +
		"get a __memcachedlock:x\r\nmg __memcachedlock:x v\r\nmg X19tZW1jYWNoZWRsb2NrOng= b v\r\nmn\r\n")
	c.Expect(strings.Repeat(refused, 6) + "MN\r\n")
}

func TestWireLineLimits(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t))
	// A get line far longer than the read buffer is fine.
	c := testmc.Dial(t, addr)
	c.Send("set " + strings.Repeat("k", 250) + " 0 0 1\r\nx\r\n")
	c.Expect("STORED\r\n")
	c.Send("get" + strings.Repeat(" "+strings.Repeat("k", 250), 200) + "\r\n")
	c.Expect(strings.Repeat("VALUE "+strings.Repeat("k", 250)+" 0 1\r\nx\r\n", 200) + "END\r\n")
	// Any other line over 2048 bytes is refused, and framing is lost.
	c = testmc.Dial(t, addr)
	c.Send("set " + strings.Repeat("k", 3000) + " 0 0 1\r\nx\r\n")
	c.Expect("CLIENT_ERROR line too long\r\n")
	c.ExpectClosed()
	c = testmc.Dial(t, addr)
	c.Send(strings.Repeat("x", 100000))
	c.Expect("CLIENT_ERROR line too long\r\n")
	c.ExpectClosed()
	// Control bytes in keys pass, as memcached takes them (memcaslap's keys
	// start with 0x10 bytes); lock names must be printable.
	c = testmc.Dial(t, addr)
	c.Send("set \x10\x10k\x7f 0 0 1\r\nx\r\nget \x10\x10k\x7f\r\nlock a\x01b\r\nget a\x00b\r\n")
	c.Expect("STORED\r\nVALUE \x10\x10k\x7f 0 1\r\nx\r\nEND\r\nCLIENT_ERROR bad command line format\r\n" +
		"CLIENT_ERROR bad command line format\r\n") // NUL: memcached would cut the key there
}

// The same script, sent one byte per write, gets the same replies.
func TestWireOneByteAtATime(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t), testmc.Start(t))
	script := "set a 0 0 3\r\nabc\r\nset b 1 0 0\r\n\r\nget a b zz\r\nincr n 1\r\nms m 2 T0\r\nhi\r\nmg m v\r\n" +
		"delete a noreply\r\nget a\r\nmn\r\n"
	want := "STORED\r\nSTORED\r\nVALUE a 0 3\r\nabc\r\nVALUE b 1 0\r\n\r\nEND\r\nNOT_FOUND\r\nHD\r\nVA 2\r\nhi\r\nEND\r\nMN\r\n"
	c := testmc.Dial(t, addr)
	c.NetConn.(*net.TCPConn).SetNoDelay(true)
	for i := 0; i < len(script); i++ {
		c.Send(script[i : i+1])
		if i%7 == 0 {
			time.Sleep(time.Millisecond) // let some bytes arrive alone
		}
	}
	c.Expect(want)
}

func TestWireStatsMergedWithProxyCounters(t *testing.T) {
	m1, m2, locks := testmc.Start(t), testmc.Start(t), testmc.Start(t)
	// Lock state (markers, the proxy registry) on a server of its own, so
	// that the cache servers hold just the test's items.
	addr, _ := startProxy(t, Config{LockServers: []ring.Server{{Addr: locks.Addr, Weight: 1}}}, m1, m2)
	c := testmc.Dial(t, addr)
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		c.Send("set " + k + " 0 0 1\r\nx\r\n")
		c.Expect("STORED\r\n")
	}
	c.Send("stats\r\n")
	stats := map[string]string{}
	for {
		l := c.Line()
		if l == "END" {
			break
		}
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != "STAT" {
			t.Fatalf("stats line %q", l)
		}
		stats[f[1]] = f[2]
	}
	if stats["curr_items"] != "8" {
		t.Errorf("curr_items %q, want 8 summed over both servers", stats["curr_items"])
	}
	if stats["proxy_version"] != Version || stats["proxy_curr_connections"] != "1" {
		t.Errorf("proxy counters missing: %v", stats)
	}
	if stats["proxy_server:"+m1.Addr+":requests"] == "" || stats["proxy_lock_grants"] != "0" {
		t.Errorf("per-server or lock counters missing: %v", stats)
	}
	c.Send("stats settings\r\nstats reset\r\nversion\r\n")
	for !strings.HasPrefix(c.Line(), "END") {
	}
	c.Expect("RESET\r\nVERSION ")
}

func TestWireMaxConnections(t *testing.T) {
	addr, _ := startProxy(t, Config{MaxConns: 1}, testmc.Start(t))
	a := testmc.Dial(t, addr)
	a.Send("version\r\n")
	a.Line()
	b := testmc.Dial(t, addr)
	b.Expect("SERVER_ERROR too many open connections\r\n")
	b.ExpectClosed()
	a.Send("mn\r\n")
	a.Expect("MN\r\n")
}

// A client that sends without ever reading fills its own pipeline and
// socket, and is then simply not read: others carry on.
func TestWireClientThatDoesNotRead(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t))
	c := testmc.Dial(t, addr)
	c.Send("set big 0 0 500000\r\n" + strings.Repeat("x", 500000) + "\r\n")
	c.Expect("STORED\r\n")
	go func() {
		for i := 0; i < 2000; i++ {
			if _, err := c.NetConn.Write([]byte("get big\r\n")); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	other := testmc.Dial(t, addr)
	for i := 0; i < 100; i++ {
		other.Send("get big\r\n")
		other.Expect("VALUE big 0 500000\r\n" + strings.Repeat("x", 500000) + "\r\nEND\r\n")
	}
}
