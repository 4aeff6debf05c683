package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// startCLIProxy runs the built binary with args and waits for it to listen.
func startCLIProxy(t *testing.T, bin, listen string, args ...string) *exec.Cmd {
	t.Helper()
	// The test's memcached servers were just started: no recovery to wait out.
	cmd := exec.Command(bin, append([]string{"serve", "--listen", listen, "--log-level", "warn", "--lock-fresh-servers"}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("tcp", listen); err == nil {
			c.Close()
			return cmd
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("proxy did not listen on %s", listen)
	return nil
}

// The same nutcracker configuration file, read by nutcracker and by the
// proxy, places every key on the same server; SIGHUP rereads its servers.
func TestTwemproxyConfigFile(t *testing.T) {
	bin := buildCLI(t)
	c := startCluster(t, 4)
	ncListen := testmc.FreeAddr(t)
	writeConf := func(n int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "alpha:\n  listen: %s\n  hash: fnv1a_64\n  distribution: ketama\n  auto_eject_hosts: false\n", ncListen)
		fmt.Fprintf(&b, "  redis: false\n  timeout: 400\n  server_retry_timeout: 2000\n  server_failure_limit: 1\n  preconnect: true\n  servers:\n")
		for i, m := range c[:n] {
			fmt.Fprintf(&b, "   - %s:%d server%d\n", m.Addr, i+1, i)
		}
		return b.String()
	}
	path := filepath.Join(t.TempDir(), "nutcracker.yml")
	os.WriteFile(path, []byte(writeConf(3)), 0o644)

	keys := placementKeys()[:1500]
	compareConfig := func() {
		nc := testmc.StartNutcrackerConfig(t, path, ncListen)
		writeAll(t, memcache.New(nc.Addr), keys)
	}
	compareConfig()
	want := locate(t, c, keys)
	flushAll(t, c)
	listen := testmc.FreeAddr(t)
	proxy := startCLIProxy(t, bin, listen, "--config", path)
	writeAll(t, memcache.New(listen), keys)
	got := locate(t, c, keys)
	for _, k := range keys {
		if got[k] != want[k] {
			t.Fatalf("key %q: nutcracker put it on server %d, the proxy with the same file on %d", k, want[k], got[k])
		}
	}

	// Add the fourth server to the file and send SIGHUP: some keys move to it.
	os.WriteFile(path, []byte(writeConf(4)), 0o644)
	proxy.Process.Signal(syscall.SIGHUP)
	moved := false
	for i := 0; i < 100 && !moved; i++ {
		flushAll(t, c)
		writeAll(t, memcache.New(listen), keys[:200])
		for _, k := range keys[:200] {
			if _, err := memcache.New(c[3].Addr).Get(k); err == nil {
				moved = true
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !moved {
		t.Fatal("after SIGHUP no key went to the added server")
	}
}

// SIGTERM: commands already sent are answered, a lock waiter is told the
// proxy is going, and the process exits cleanly.
func TestSigtermShutsDownCleanly(t *testing.T) {
	bin := buildCLI(t)
	c := startCluster(t, 1)
	listen := testmc.FreeAddr(t)
	cmd := startCLIProxy(t, bin, listen, "--servers", c[0].Addr, "--shutdown-timeout", "5s")
	holder := testmc.Dial(t, listen)
	holder.RoundTrip("lock going")
	waiter := testmc.Dial(t, listen)
	waiter.Send("lock going 30 60000\r\n")
	waitStat(t, listen, "proxy_lock_waiters", "1")
	client := testmc.Dial(t, listen)
	client.Send("set k 0 0 1\r\nx\r\n")
	if got := client.Line(); got != "STORED" {
		t.Fatal(got)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := waiter.Line(); got != "SERVER_ERROR proxy shutting down" {
		t.Fatalf("waiter: %q", got)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the proxy did not exit after SIGTERM")
	}
	if _, err := net.Dial("tcp", listen); err == nil {
		t.Fatal("still accepting after SIGTERM")
	}
}
