package integration

import (
	"fmt"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// IPv6 servers are placed as twemproxy places them (it writes them bare,
// "::1:port:weight"; the proxy in brackets): ketama names the points after
// the bare host.
func TestIPv6PlacementMatchesNutcracker(t *testing.T) {
	c := cluster{testmc.Start(t, "-l", "::1"), testmc.Start(t, "-l", "::1"), testmc.Start(t, "-l", "::1")}
	var bare, bracketed []string
	for i, m := range c {
		bare = append(bare, fmt.Sprintf("::1:%d:%d", m.Port, i+1))
		bracketed = append(bracketed, fmt.Sprintf("[::1]:%d:%d", m.Port, i+1))
	}
	servers, err := ring.ParseServers(bracketed)
	if err != nil {
		t.Fatal(err)
	}
	keys := placementKeys()
	compare(t, c, keys, func() {
		writeAll(t, memcache.New(testmc.StartNutcracker(t, bare, "md5", "ketama").Addr), keys)
	}, proxy.Config{Servers: servers, Distribution: ring.Ketama, Hash: "md5"})
}

// A server given by its IPv6 address is dialled there.
func TestIPv6ServerAddress(t *testing.T) {
	v6 := testmc.Start(t, "-l", "::1") // and 127.0.0.1, to look at it directly
	v4 := testmc.Start(t)
	servers, err := ring.ParseServers([]string{fmt.Sprintf("[::1]:%d", v6.Port), v4.Addr})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startProxy(t, proxy.Config{Servers: servers})
	for i, want := range []*testmc.Memcached{v6, v4} {
		key := keysOn(t, servers, i, 1)[0]
		if err := memcache.New(addr).Set(&memcache.Item{Key: key, Value: []byte(key)}); err != nil {
			t.Fatal(err)
		}
		it, err := memcache.New(want.Addr).Get(key)
		if err != nil || string(it.Value) != key {
			t.Errorf("%s on %s: %v %v", key, servers[i].Addr, it, err)
		}
	}
}
