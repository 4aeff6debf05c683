package lockclient_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/lockclient"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// proxyAddr is a real proxy in front of a real memcached (mcAddr), for
// the examples.
var proxyAddr, mcAddr string

func TestMain(m *testing.M) {
	mc, err := testmc.Launch()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mcAddr = mc.Addr
	srv, err := proxy.New(proxy.Config{
		Servers:   []ring.Server{{Addr: mc.Addr, Weight: 1}},
		LockFresh: true, // memcached was just started for this test
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(l)
	proxyAddr = l.Addr().String()
	code := m.Run()
	srv.Shutdown(context.Background())
	mc.Stop()
	os.Exit(code)
}

func Example() {
	ctx := context.Background()
	c, err := lockclient.Dial(ctx, proxyAddr)
	if err != nil {
		panic(err)
	}
	defer c.Close()

	g, err := c.Lock(ctx, "catalog", lockclient.Options{TTL: 30 * time.Second, Wait: 5 * time.Second, Owner: "zeo1:4711:1"})
	if err != nil {
		panic(err)
	}
	fmt.Println("locked, depth", g.Count, "fence > 0:", g.Fence > 0)

	info, _ := c.Info(ctx, "catalog")
	fmt.Println("held by", info.Owner)

	left, _ := c.Unlock(ctx, g)
	fmt.Println("unlocked, levels left:", left)
	// Output:
	// locked, depth 1 fence > 0: true
	// held by zeo1:4711:1
	// unlocked, levels left: 0
}

func ExampleHold() {
	ctx := context.Background()
	c, _ := lockclient.Dial(ctx, proxyAddr)
	defer c.Close()

	// The lease is renewed at about half its ttl while the function runs,
	// and released when it returns.
	err := lockclient.Hold(ctx, c, "nightly-report", lockclient.Options{TTL: 3 * time.Second},
		func(ctx context.Context, g lockclient.Grant) error {
			fmt.Println("working under fence", g.Fence > 0)
			return nil
		})
	fmt.Println("done:", err)
	// Output:
	// working under fence true
	// done: <nil>
}

func ExampleClient_Lock_busy() {
	ctx := context.Background()
	a, _ := lockclient.Dial(ctx, proxyAddr)
	defer a.Close()
	b, _ := lockclient.Dial(ctx, proxyAddr)
	defer b.Close()

	g, _ := a.Lock(ctx, "job", lockclient.Options{})
	_, err := b.Lock(ctx, "job", lockclient.Options{TryOnce: true})
	fmt.Println(err == nil, errors.Is(err, lockclient.ErrNotLocked))
	a.Unlock(ctx, g)
	// Output:
	// false true
}

// A lease renewed by Hold outlives several ttls; another client cannot
// take it meanwhile.
func TestHoldKeepsLeaseAlive(t *testing.T) {
	ctx := context.Background()
	c, err := lockclient.Dial(ctx, proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, _ := lockclient.Dial(ctx, proxyAddr)
	defer other.Close()
	err = lockclient.Hold(ctx, c, "long", lockclient.Options{TTL: 2 * time.Second, Owner: "me"}, func(ctx context.Context, g lockclient.Grant) error {
		time.Sleep(4 * time.Second) // two ttls
		if _, err := other.Lock(ctx, "long", lockclient.Options{TryOnce: true, Owner: "you"}); !errors.Is(err, lockclient.ErrNotLocked) {
			t.Errorf("lease lapsed while held: %v", err)
		}
		return context.Cause(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Info(ctx, "long"); !errors.Is(err, lockclient.ErrNotFound) {
		t.Fatalf("not released after Hold: %v", err)
	}
}

// startProxy runs a proxy in front of the test's memcached on addr
// ("127.0.0.1:0" for a free port) and returns it and where it listens.
func startProxy(t *testing.T, addr string) (*proxy.Server, string) {
	t.Helper()
	srv, err := proxy.New(proxy.Config{
		Servers: []ring.Server{{Addr: mcAddr, Weight: 1}}, LockFresh: true,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv, l.Addr().String()
}

// The proxy restarts while Hold's function runs: the release at its end
// tries again, reaches the new proxy, and the lock is free at once rather
// than when its ttl runs out.
func TestHoldReleasesThroughARestartedProxy(t *testing.T) {
	ctx := context.Background()
	first, addr := startProxy(t, "127.0.0.1:0")
	c, err := lockclient.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = lockclient.Hold(ctx, c, "restarted", lockclient.Options{TTL: 30 * time.Second, Owner: "me"}, func(ctx context.Context, g lockclient.Grant) error {
		stop, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		first.Shutdown(stop)
		startProxy(t, addr)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	other, err := lockclient.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Lock(ctx, "restarted", lockclient.Options{TryOnce: true, Owner: "you"}); err != nil {
		t.Fatalf("the lock is still held after Hold returned: %v", err)
	}
}
