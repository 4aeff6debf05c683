package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// A reload that adds a server moves only the keys ketama gives to it;
// one that removes a server leaves the others' keys where they are.
func TestReloadKeepsKeysOfUnchangedServers(t *testing.T) {
	c := startCluster(t, 3)
	all := c.servers(t)
	addr, srv := startProxy(t, proxy.Config{Servers: all[:2], Timeout: 200 * time.Millisecond})
	mc := memcache.New(addr)
	var keys []string
	for i := 0; i < 600; i++ {
		k := fmt.Sprintf("reload:%d", i)
		keys = append(keys, k)
		if err := mc.Set(&memcache.Item{Key: k, Value: []byte(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Reload(all, ring.Ketama, "md5"); err != nil {
		t.Fatal(err)
	}
	before, _ := ring.New(all[:2], ring.Ketama, "md5")
	after, _ := ring.New(all, ring.Ketama, "md5")
	moved, kept := 0, 0
	for _, k := range keys {
		_, err := mc.Get(k)
		stays := before.Servers()[before.Pick([]byte(k))].Addr == after.Servers()[after.Pick([]byte(k))].Addr
		switch {
		case stays && err != nil:
			t.Fatalf("%s stayed on its server but is gone: %v", k, err)
		case !stays && err != memcache.ErrCacheMiss:
			t.Fatalf("%s moved to the new server but was found: %v", k, err)
		}
		if stays {
			kept++
		} else {
			moved++
		}
	}
	if moved == 0 || moved > len(keys)/2 {
		t.Fatalf("%d of %d keys moved to the added server", moved, len(keys))
	}
	// Remove the second server: keys on the first and third stay put.
	for _, k := range keys {
		mc.Set(&memcache.Item{Key: k, Value: []byte(k)})
	}
	if err := srv.Reload([]ring.Server{all[0], all[2]}, ring.Ketama, "md5"); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		_, err := mc.Get(k)
		onRemoved := after.Servers()[after.Pick([]byte(k))].Addr == all[1].Addr
		if !onRemoved && err != nil {
			t.Fatalf("%s was on a server that stayed, and is gone: %v", k, err)
		}
		if onRemoved && err != memcache.ErrCacheMiss {
			t.Fatalf("%s was on the removed server, and was found: %v", k, err)
		}
	}
	t.Logf("added a server: %d keys kept, %d moved", kept, moved)
}

// With ejection on, a dead cache server leaves the ring after the failure
// limit and its keys are served by the others; it comes back after the
// retry timeout once it is up again.
func TestEjection(t *testing.T) {
	c := startCluster(t, 2)
	servers := c.servers(t)
	addr, _ := startProxy(t, proxy.Config{Servers: servers, Timeout: 200 * time.Millisecond,
		AutoEject: true, FailureLimit: 2, RetryTimeout: 500 * time.Millisecond})
	key := keysOn(t, servers, 1, 1)[0]
	c[1].Stop()
	ejected := false
	for i := 0; i < 200 && !ejected; i++ {
		ejected = ask(t, addr, "set "+key+" 0 0 1\r\nx\r\n", "STORED", "SERVER_ERROR") == "STORED\r\n"
		time.Sleep(10 * time.Millisecond)
	}
	if !ejected {
		t.Fatal("the dead server's key never found another server")
	}
	if _, err := memcache.New(c[0].Addr).Get(key); err != nil {
		t.Fatalf("the key was not written to the remaining server: %v", err)
	}
	if got := statValue(t, addr, "proxy_server:"+c[1].Addr+":ejections"); got == "0" || got == "" {
		t.Fatalf("ejections counter %q", got)
	}
	c[1].Restart(t)
	back := false
	for i := 0; i < 300 && !back; i++ {
		ask(t, addr, "set "+key+" 0 0 4\r\nback\r\n", "STORED", "SERVER_ERROR")
		it, err := memcache.New(c[1].Addr).Get(key)
		back = err == nil && string(it.Value) == "back"
		time.Sleep(10 * time.Millisecond)
	}
	if !back {
		t.Fatal("the server never came back into the ring")
	}
	// Locks are never re-routed: with its lock server down, a lock fails.
	c[1].Stop()
	name := keysOn(t, servers, 1, 1)[0]
	for i := 0; i < 20; i++ {
		got := testmc.Dial(t, addr).RoundTrip("lock " + name + " 30 0")
		if strings.HasPrefix(got, "LOCKED") {
			t.Fatalf("lock granted on another server while its own was down: %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
