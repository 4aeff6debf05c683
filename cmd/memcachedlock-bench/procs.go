package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// procs are the processes a benchmark started; stop ends them all.
type procs []*exec.Cmd

// stop kills the processes, last started first: proxies before the
// memcached servers behind them, which they would otherwise log as down.
func (p *procs) stop() {
	for _, c := range slices.Backward(*p) {
		c.Process.Kill()
		c.Wait()
	}
	*p = nil
}

func need(tool, pkg string) (string, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/" + tool); serr == nil {
			return "/usr/sbin/" + tool, nil
		}
		return "", fmt.Errorf("%s is not installed (apt-get install %s, or make deps)", tool, pkg)
	}
	return path, nil
}

// start runs a program that will listen on addr and waits until it does.
func (p *procs) start(addr string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	*p = append(*p, cmd)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("%s did not listen on %s", filepath.Base(name), addr)
}

// memcached starts n memcached servers and returns their addresses.
func (p *procs) memcached(n int, threads int, extra ...string) ([]string, error) {
	bin, err := need("memcached", "memcached")
	if err != nil {
		return nil, err
	}
	var addrs []string
	for i := 0; i < n; i++ {
		port, err := testmc.FreePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-t", strconv.Itoa(threads), "-m", "256", "-c", "4096"}
		if os.Geteuid() == 0 {
			args = append(args, "-u", "root")
		}
		args = append(args, extra...)
		if err := p.start(addr, bin, args...); err != nil {
			return nil, err
		}
		addrs = append(addrs, addr)
	}
	return addrs, nil
}

// proxy starts bin/memcachedlock in front of servers.
func (p *procs) proxy(bin string, servers []string, extra ...string) (string, error) {
	port, err := testmc.FreePort()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := append([]string{"serve", "--listen", addr, "--servers", strings.Join(servers, ","), "--log-level", "warn"}, extra...)
	return addr, p.start(addr, bin, args...)
}

// nutcracker starts twemproxy in front of servers (ketama, md5).
func (p *procs) nutcracker(servers []string) (string, error) {
	bin, err := need("nutcracker", "nutcracker")
	if err != nil {
		return "", err
	}
	port, err := testmc.FreePort()
	if err != nil {
		return "", err
	}
	stats, err := testmc.FreePort()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "bench-nutcracker")
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	conf := fmt.Sprintf("pool:\n  listen: %s\n  hash: md5\n  distribution: ketama\n  timeout: 1000\n  servers:\n", addr)
	for _, s := range servers {
		conf += "   - " + s + ":1\n"
	}
	path := filepath.Join(dir, "nutcracker.yml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", err
	}
	return addr, p.start(addr, bin, "-c", path, "-s", strconv.Itoa(stats), "-a", "127.0.0.1",
		"-o", filepath.Join(dir, "log"), "-p", filepath.Join(dir, "pid"), "-v", "1")
}
