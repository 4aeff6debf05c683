package integration

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
)

// lru_crawler metadump over three servers: every server's keys, one END.
// The sets before it are pipelined on the shared server connections, where
// memcached would refuse the dump: it goes on a connection of its own.
func TestMetadumpJoinsServers(t *testing.T) {
	c := startCluster(t, 3)
	servers := c.servers(t)
	addr, _ := startProxy(t, proxy.Config{Servers: servers})
	var sets strings.Builder
	var keys []string
	for i := range servers {
		for _, k := range keysOn(t, servers, i, 3) {
			fmt.Fprintf(&sets, "set %s 0 0 1 noreply\r\nx\r\n", k)
			keys = append(keys, k)
		}
	}
	dump := ask(t, addr, sets.String()+"lru_crawler metadump all\r\n", "END", "ERROR", "CLIENT_ERROR")
	if !strings.HasSuffix(dump, "\nEND\r\n") || strings.Count(dump, "END\r\n") != 1 {
		t.Fatalf("metadump: %q", dump)
	}
	for _, k := range keys {
		if !strings.Contains(dump, "key="+url.QueryEscape(k)+" ") { // memcached escapes keys
			t.Errorf("metadump lacks %s:\n%s", k, dump)
		}
	}
	// Admin commands reach every server: each one answers for itself.
	if got := ask(t, addr, "lru_crawler disable\r\n", "OK", "ERROR"); got != "OK\r\n" {
		t.Fatalf("lru_crawler disable: %q", got)
	}
	for _, m := range c {
		// Under load one server has been seen to report the crawler on
		// for a moment after every server answered OK (why, in memcached,
		// is not traced): look again for a while before calling it a miss.
		got := ask(t, m.Addr, "stats settings\r\n", "END")
		for i := 0; i < 100 && !strings.Contains(got, "STAT lru_crawler no\r\n"); i++ {
			time.Sleep(20 * time.Millisecond)
			got = ask(t, m.Addr, "stats settings\r\n", "END")
		}
		if !strings.Contains(got, "STAT lru_crawler no\r\n") {
			t.Errorf("%s after lru_crawler disable through the proxy:\n%s", m.Addr, got)
		}
	}
}

// watch through the proxy: one OK, then every server's log lines; a bad
// argument is refused as memcached refuses it, and the connection goes on.
func TestWatchStreamsEveryServer(t *testing.T) {
	c := startCluster(t, 2)
	servers := c.servers(t)
	addr, _ := startProxy(t, proxy.Config{Servers: servers})
	w := testmc.Dial(t, addr)
	if got := w.RoundTrip("watch bogus"); got != "ERROR" {
		t.Fatalf("watch bogus: %q", got)
	}
	if got := w.RoundTrip("watch mutations"); got != "OK" {
		t.Fatalf("watch mutations: %q", got)
	}
	keys := []string{keysOn(t, servers, 0, 1)[0], keysOn(t, servers, 1, 1)[0]}
	mc := memcache.New(addr)
	for _, k := range keys {
		if err := mc.Set(&memcache.Item{Key: k, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < len(keys) {
		l := w.Line()
		for _, k := range keys {
			if strings.Contains(l, "key="+url.QueryEscape(k)+" ") {
				seen[k] = true
			}
		}
	}
}
