package integration

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/proxy"
)

// Every method gomemcache has, through the proxy, over three servers.
func TestGomemcacheEveryMethod(t *testing.T) {
	c := startCluster(t, 3)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	mc := memcache.New(addr)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := mc.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	must(mc.Set(&memcache.Item{Key: "a", Value: []byte("1"), Flags: 42}))
	it, err := mc.Get("a")
	must(err)
	if string(it.Value) != "1" || it.Flags != 42 {
		t.Fatalf("Get: %+v", it)
	}
	if _, err := mc.Get("missing"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get missing: %v", err)
	}
	if err := mc.Add(&memcache.Item{Key: "a", Value: []byte("x")}); !errors.Is(err, memcache.ErrNotStored) {
		t.Fatalf("Add existing: %v", err)
	}
	must(mc.Add(&memcache.Item{Key: "b", Value: []byte("2")}))
	if err := mc.Replace(&memcache.Item{Key: "nope", Value: []byte("x")}); !errors.Is(err, memcache.ErrNotStored) {
		t.Fatalf("Replace missing: %v", err)
	}
	must(mc.Replace(&memcache.Item{Key: "b", Value: []byte("20")}))
	must(mc.Append(&memcache.Item{Key: "b", Value: []byte("0")}))
	must(mc.Prepend(&memcache.Item{Key: "b", Value: []byte("1")}))
	if it, _ := mc.Get("b"); string(it.Value) != "1200" {
		t.Fatalf("after append/prepend: %q", it.Value)
	}

	it, err = mc.Get("b")
	must(err)
	it.Value = []byte("cas1")
	must(mc.CompareAndSwap(it))
	it.Value = []byte("cas2")
	if err := mc.CompareAndSwap(it); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("stale CompareAndSwap: %v", err)
	}

	must(mc.Set(&memcache.Item{Key: "n", Value: []byte("10")}))
	if v, err := mc.Increment("n", 5); err != nil || v != 15 {
		t.Fatalf("Increment: %d, %v", v, err)
	}
	if v, err := mc.Decrement("n", 100); err != nil || v != 0 {
		t.Fatalf("Decrement below zero: %d, %v", v, err)
	}
	if _, err := mc.Increment("missing", 1); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Increment missing: %v", err)
	}
	must(mc.Touch("a", 100))
	if err := mc.Touch("missing", 100); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Touch missing: %v", err)
	}
	it, err = mc.GetAndTouch("a", 100)
	if err != nil || string(it.Value) != "1" {
		t.Fatalf("GetAndTouch: %v %v", it, err)
	}

	// Many keys over all servers, in one GetMulti.
	var keys []string
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("multi:%d", i)
		keys = append(keys, k)
		if i%3 != 0 {
			must(mc.Set(&memcache.Item{Key: k, Value: []byte(k)}))
		}
	}
	got, err := mc.GetMulti(keys)
	must(err)
	for i, k := range keys {
		_, ok := got[k]
		if ok != (i%3 != 0) || ok && string(got[k].Value) != k {
			t.Fatalf("GetMulti %s: %v %v", k, ok, got[k])
		}
	}

	must(mc.Delete("a"))
	if err := mc.Delete("a"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Delete twice: %v", err)
	}
	must(mc.DeleteAll())
	must(mc.FlushAll())
	if _, err := mc.Get("b"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after FlushAll: %v", err)
	}
	// Every server was flushed, not just one.
	for _, m := range c {
		if _, err := memcache.New(m.Addr).Get("multi:1"); !errors.Is(err, memcache.ErrCacheMiss) {
			t.Fatalf("%s not flushed: %v", m.Addr, err)
		}
	}
	// Values of every size up to the limit, byte for byte.
	for _, n := range []int{0, 1, 1000, 100000, 1000000} {
		v := bytes.Repeat([]byte{0, '\r', '\n', 0xff}, n/4+1)[:n]
		must(mc.Set(&memcache.Item{Key: "big", Value: v}))
		it, err := mc.Get("big")
		if err != nil || !bytes.Equal(it.Value, v) {
			t.Fatalf("value of %d bytes: %v", n, err)
		}
	}
	if err := mc.Set(&memcache.Item{Key: "huge", Value: make([]byte, 2<<20)}); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("2 MiB value: %v", err)
	}
	must(mc.Ping()) // and the connection still works
}

// The Python clients Zope and Plone sites use, through the proxy.
func TestPythonClients(t *testing.T) {
	py := python(t)
	c := startCluster(t, 2)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	out := runPython(t, py, `
import sys
import memcache
from pymemcache.client.base import Client

addr = sys.argv[1]
host, port = addr.split(":")

mc = memcache.Client([addr])
assert mc.set("pm:a", "hello")
assert mc.get("pm:a") == "hello"
assert mc.set_multi({"pm:%d" % i: i for i in range(100)}) == []
got = mc.get_multi(["pm:%d" % i for i in range(100)] + ["pm:missing"])
assert got == {"pm:%d" % i: i for i in range(100)}, got
assert mc.add("pm:a", "x") == 0
assert mc.replace("pm:a", "world")
assert mc.append("pm:a", "!")
assert mc.prepend("pm:a", "<")
assert mc.get("pm:a") == "<world!"
assert mc.set("pm:n", 5)
assert mc.incr("pm:n", 3) == 8
assert mc.decr("pm:n") == 7
assert mc.delete("pm:a")
assert mc.get("pm:a") is None
mc.set("pm:obj", {"nested": [1, 2, 3]})
assert mc.get("pm:obj") == {"nested": [1, 2, 3]}
mc.cas_ids = {}
assert mc.gets("pm:n") == 7
assert mc.cas("pm:n", 70)
assert mc.get("pm:n") == 70
stats = mc.get_stats()
assert stats and "proxy_version" in stats[0][1], stats
assert mc.touch("pm:n", 100)

pc = Client((host, int(port)), default_noreply=False)
pc.set("py:a", b"1")
assert pc.get("py:a") == b"1"
pc.set_many({"py:%d" % i: str(i) for i in range(50)})
got = pc.get_many(["py:%d" % i for i in range(50)])
assert len(got) == 50 and got["py:7"] == b"7", got
assert pc.add("py:a", b"2") is False
assert pc.incr("py:num", 1) is None
pc.set("py:num", b"1")
assert pc.incr("py:num", 41) == 42
v, cas = pc.gets("py:a")
assert pc.cas("py:a", b"3", cas) is True
assert pc.cas("py:a", b"4", cas) is False
assert pc.delete("py:a") is True
assert pc.delete("py:a", noreply=False) is False
# noreply, pymemcache's default for writes, then a read on the same connection
nr = Client((host, int(port)))
for i in range(200):
    nr.set("nr:%d" % i, str(i))
assert nr.get("nr:199") == b"199"
assert nr.get_many(["nr:%d" % i for i in range(200)])["nr:0"] == b"0"
assert pc.version().startswith(b"1.")
assert pc.cache_memlimit(64) is True  # an admin command, to every server
assert pc.stats("slabs") is not None and pc.stats("items") is not None
pc.flush_all()
assert pc.get("nr:5") is None
print("ok")
`, addr)
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("python said: %s", out)
	}
}
