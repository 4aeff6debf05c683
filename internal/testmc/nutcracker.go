package testmc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Nutcracker is a running twemproxy, our reference for placement and speed.
type Nutcracker struct {
	Addr string
	cmd  *exec.Cmd
}

// StartNutcracker runs nutcracker in front of servers ("host:port:weight
// [name]" each) with the given hash and distribution, until the test ends.
func StartNutcracker(t testing.TB, servers []string, hash, distribution string) *Nutcracker {
	t.Helper()
	addr := FreeAddr(t)
	var conf strings.Builder
	fmt.Fprintf(&conf, "pool:\n  listen: %s\n  hash: %s\n  distribution: %s\n", addr, hash, distribution)
	fmt.Fprintf(&conf, "  timeout: 2000\n  auto_eject_hosts: false\n  servers:\n")
	for _, s := range servers {
		fmt.Fprintf(&conf, "   - %s\n", s)
	}
	path := filepath.Join(t.TempDir(), "nutcracker.yml")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return StartNutcrackerConfig(t, path, addr)
}

// StartNutcrackerConfig runs nutcracker with a configuration file whose
// pool listens on addr.
func StartNutcrackerConfig(t testing.TB, path, addr string) *Nutcracker {
	t.Helper()
	bin, err := exec.LookPath("nutcracker")
	if err != nil {
		bin = "/usr/sbin/nutcracker"
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("nutcracker (twemproxy) is not installed: placement tests and benchmarks compare against it (apt-get install nutcracker)")
		}
	}
	dir := t.TempDir()
	conf, _ := os.ReadFile(path)
	stats, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	n := &Nutcracker{Addr: addr}
	n.cmd = exec.Command(bin, "-c", path, "-s", strconv.Itoa(stats), "-a", "127.0.0.1",
		"-o", filepath.Join(dir, "nutcracker.log"), "-p", filepath.Join(dir, "nutcracker.pid"), "-v", "2")
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("nutcracker: %v", err)
	}
	t.Cleanup(func() { n.cmd.Process.Kill(); n.cmd.Wait() })
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", n.Addr, 100*time.Millisecond); err == nil {
			c.Close()
			return n
		}
	}
	log, _ := os.ReadFile(filepath.Join(dir, "nutcracker.log"))
	t.Fatalf("nutcracker did not listen on %s; config:\n%s\nlog:\n%s", n.Addr, conf, log)
	return nil
}
