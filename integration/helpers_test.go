// Package integration runs the proxy end to end against real memcached
// processes and real clients.
package integration

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// cluster is n memcached servers.
type cluster []*testmc.Memcached

func startCluster(t testing.TB, n int) cluster {
	t.Helper()
	c := make(cluster, n)
	for i := range c {
		c[i] = testmc.Start(t)
	}
	return c
}

func (c cluster) addrs() []string {
	out := make([]string, len(c))
	for i, m := range c {
		out[i] = m.Addr
	}
	return out
}

func (c cluster) servers(t testing.TB) []ring.Server {
	s, err := ring.ParseServers(c.addrs())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startProxy runs a proxy until the test ends and returns its address.
// The test's memcached servers were just started, so the proxy trusts lock
// servers without a marker (LockFresh); startProxyStrict does not.
func startProxy(t testing.TB, cfg proxy.Config) (string, *proxy.Server) {
	t.Helper()
	cfg.LockFresh = true
	return startProxyStrict(t, cfg)
}

// startProxyStrict runs a proxy as production runs it: lock servers found
// without their marker recover first.
func startProxyStrict(t testing.TB, cfg proxy.Config) (string, *proxy.Server) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String(), srv
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }
