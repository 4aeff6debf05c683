package lockservice

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A renewal of the registry that started before the proxy advertised its
// address, and ends after the renewal that followed it, must not leave the
// proxy out: neither out of its own view of the homes (it would forward
// its own names for a second) nor out of the registry (it would write its
// entry out).
func TestRenewalFromBeforeAdvertiseLeavesNobodyOut(t *testing.T) {
	mc := newFakeMC()
	ms := newMembers("__memcachedlock:", "me", "layout")
	var first atomic.Bool
	resume := mc.stallOn(func([]byte) bool { return first.CompareAndSwap(false, true) })
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ms.refresh(ctx, []Conn{mc}) }() // held at its first read
	within(time.Second, first.Load)
	ms.advertise("127.0.0.1:1")
	go func() { defer wg.Done(); ms.refresh(ctx, []Conn{mc}) }()
	// Without the renewals in turn, the second writes the entry now.
	within(time.Second, func() bool { return bytes.Contains(mc.value(ms.key), []byte("127.0.0.1:1")) })
	resume()
	wg.Wait()
	if m, ok := ms.home("any"); !ok || m.instance != "me" {
		t.Errorf("home of any name, in the proxy's own view: %+v, want itself", m)
	}
	if !bytes.Contains(mc.value(ms.key), []byte("127.0.0.1:1")) {
		t.Errorf("registry %q lacks the proxy", mc.value(ms.key))
	}
}

// One lock server paused costs the registry nothing: the others are asked
// at the same time, not after it has used up the time they share.
func TestRegistryRenewedPastAPausedServer(t *testing.T) {
	f := fakes("a:1", "b:1", "c:1")
	ms := newMembers("__memcachedlock:", "me", "layout")
	ms.advertise("127.0.0.1:1")
	gate := f["a:1"].hold()
	defer close(gate)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // the paused one uses it all
	defer cancel()
	if !ms.refresh(ctx, []Conn{f["a:1"], f["b:1"], f["c:1"]}) {
		t.Fatal("nothing read with only the first of three lock servers paused")
	}
	for _, n := range []string{"b:1", "c:1"} {
		if !bytes.Contains(f[n].value(ms.key), []byte("127.0.0.1:1")) {
			t.Errorf("%s: registry %q lacks the proxy", n, f[n].value(ms.key))
		}
	}
}

// A proxy that advertises is one of the homes in its own view even when
// its renewal reached no lock server (all of them down, or the registry
// contended by other proxies' renewals): else it forwards its own names.
func TestAdvertisedProxyIsAHomeWithoutTheRegistry(t *testing.T) {
	var blind atomic.Bool
	blind.Store(true)
	mc := registryBlind{newFakeMC(), &blind}
	ms := newMembers("__memcachedlock:", "me", "layout")
	ms.advertise("127.0.0.1:1")
	if ms.refresh(context.Background(), []Conn{mc}) {
		t.Fatal("the registry was read")
	}
	if m, ok := ms.home("any"); !ok || m.instance != "me" {
		t.Errorf("home of any name, in the proxy's own view: %+v, want itself", m)
	}
}
