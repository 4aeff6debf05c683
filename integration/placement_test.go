package integration

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// placementKeys are a few thousand keys, a third of them with bytes >= 0x80
// (UTF-8 text and raw bytes), where signed-char hashing shows.
func placementKeys() []string {
	var keys []string
	for i := 0; i < 1500; i++ {
		keys = append(keys, fmt.Sprintf("user:%d:profile", i))
	}
	for i := 0; i < 750; i++ {
		keys = append(keys, fmt.Sprintf("clé:ключ:%d", i))
		keys = append(keys, fmt.Sprintf("\xe9\xff\x80%d\xc0", i))
	}
	return keys
}

// locate asks every server directly which keys it holds.
func locate(t *testing.T, c cluster, keys []string) map[string]int {
	t.Helper()
	where := make(map[string]int)
	for i, m := range c {
		mc := memcache.New(m.Addr)
		for start := 0; start < len(keys); start += 100 {
			got, err := mc.GetMulti(keys[start:min(start+100, len(keys))])
			if err != nil {
				t.Fatalf("reading %s directly: %v", m.Addr, err)
			}
			for k := range got {
				if prev, dup := where[k]; dup {
					t.Fatalf("key %q on server %d and %d", k, prev, i)
				}
				where[k] = i
			}
		}
	}
	if len(where) != len(keys) {
		t.Fatalf("found %d of %d keys on the servers", len(where), len(keys))
	}
	return where
}

func writeAll(t *testing.T, mc *memcache.Client, keys []string) {
	t.Helper()
	for _, k := range keys {
		if err := mc.Set(&memcache.Item{Key: k, Value: []byte("v")}); err != nil {
			t.Fatalf("set %q: %v", k, err)
		}
	}
}

func flushAll(t *testing.T, c cluster) {
	t.Helper()
	for _, m := range c {
		if err := memcache.New(m.Addr).FlushAll(); err != nil {
			t.Fatal(err)
		}
	}
}

// compare writes keys through the reference and through the proxy, and
// requires every key to land on the same server both times.
func compare(t *testing.T, c cluster, keys []string, reference func(), cfg proxy.Config) {
	t.Helper()
	reference()
	want := locate(t, c, keys)
	flushAll(t, c)
	addr, _ := startProxy(t, cfg)
	writeAll(t, memcache.New(addr), keys)
	got := locate(t, c, keys)
	differ := 0
	for _, k := range keys {
		if got[k] != want[k] {
			if differ < 5 {
				t.Errorf("key %q: reference put it on server %d, proxy on %d", k, want[k], got[k])
			}
			differ++
		}
	}
	if differ > 0 {
		t.Fatalf("%d of %d keys placed differently", differ, len(keys))
	}
	t.Logf("%d keys placed as the reference places them", len(keys))
}

func TestPlacementMatchesNutcracker(t *testing.T) {
	keys := placementKeys()
	for _, tc := range []struct {
		name, hash string
		weights    []int
		names      []string
	}{
		{name: "ketama-md5", hash: "md5", weights: []int{1, 1, 1}},
		{name: "ketama-fnv1a_64", hash: "fnv1a_64", weights: []int{1, 1, 1}},
		{name: "ketama-md5-weighted", hash: "md5", weights: []int{1, 2, 3}},
		{name: "ketama-fnv1a_64-weighted", hash: "fnv1a_64", weights: []int{3, 1, 2}},
		{name: "ketama-one_at_a_time", hash: "one_at_a_time", weights: []int{1, 1, 1}},
		{name: "ketama-md5-named", hash: "md5", weights: []int{1, 1, 2}, names: []string{"alpha", "beta", "gamma"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, 3)
			var specs []string
			for i, m := range c {
				spec := fmt.Sprintf("%s:%d", m.Addr, tc.weights[i])
				if tc.names != nil {
					spec += " " + tc.names[i]
				}
				specs = append(specs, spec)
			}
			servers, err := ring.ParseServers(specs)
			if err != nil {
				t.Fatal(err)
			}
			compare(t, c, keys, func() {
				nc := testmc.StartNutcracker(t, specs, tc.hash, "ketama").Addr
				writeAll(t, memcache.New(nc), keys)
			}, proxy.Config{Servers: servers, Distribution: ring.Ketama, Hash: tc.hash})
		})
	}
}

// gomemcache's own sharding: ServerList picks crc32(key) % n.
func TestPlacementMatchesGomemcache(t *testing.T) {
	c := startCluster(t, 3)
	keys := placementKeys()
	compare(t, c, keys, func() {
		writeAll(t, memcache.New(c.addrs()...), keys)
	}, proxy.Config{Servers: c.servers(t), Distribution: ring.Modula, Hash: "crc32a"})
}

// python-memcached's own sharding: buckets by weight, cmemcache_hash.
func TestPlacementMatchesPythonMemcached(t *testing.T) {
	py := python(t)
	keys := placementKeys()
	for _, weights := range [][]int{{1, 1, 1}, {2, 1, 3}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			c := startCluster(t, 3)
			var specs, pyServers []string
			for i, m := range c {
				specs = append(specs, fmt.Sprintf("%s:%d", m.Addr, weights[i]))
				pyServers = append(pyServers, fmt.Sprintf("(%q, %d)", m.Addr, weights[i]))
			}
			servers, _ := ring.ParseServers(specs)
			compare(t, c, keys, func() {
				keyFile := filepath.Join(t.TempDir(), "keys")
				var hexKeys []string
				for _, k := range keys {
					hexKeys = append(hexKeys, hex.EncodeToString([]byte(k)))
				}
				os.WriteFile(keyFile, []byte(strings.Join(hexKeys, "\n")), 0o644)
				script := fmt.Sprintf(`
import memcache, sys
mc = memcache.Client([%s])
for line in open(sys.argv[1]):
    key = bytes.fromhex(line.strip())
    assert mc.set(key, b"v"), key
`, strings.Join(pyServers, ", "))
				runPython(t, py, script, keyFile)
			}, proxy.Config{Servers: servers, Distribution: ring.Modula, Hash: "crc32"})
		})
	}
}
