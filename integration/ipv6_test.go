package integration

import (
	"fmt"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

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
