// Package testmc starts real memcached processes on free loopback ports
// for tests. A test that needs memcached and cannot find it fails, loudly.
package testmc

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Memcached is one memcached process.
type Memcached struct {
	Addr string
	Port int
	args []string
	cmd  *exec.Cmd
}

// Start runs memcached on a free port until the test ends. Extra args go
// to memcached.
func Start(t testing.TB, args ...string) *Memcached {
	t.Helper()
	m, err := Launch(args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m
}

// Launch runs memcached on a free port, for callers without a testing.TB
// (TestMain); the caller stops it.
func Launch(args ...string) (*Memcached, error) {
	if _, err := exec.LookPath("memcached"); err != nil {
		return nil, errors.New("memcached is not installed: these tests run real memcached processes (apt-get install memcached)")
	}
	m := &Memcached{args: args}
	var err error
	for try := 0; try < 5; try++ {
		if m.Port, err = FreePort(); err != nil {
			return nil, err
		}
		if err = m.start(); err == nil {
			return m, nil
		}
	}
	return nil, fmt.Errorf("memcached would not start: %v", err)
}

// FreeAddr returns a loopback address, "127.0.0.1:<port>", whose port was
// free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (m *Memcached) start() error {
	m.Addr = "127.0.0.1:" + strconv.Itoa(m.Port)
	args := append([]string{"-l", "127.0.0.1", "-p", strconv.Itoa(m.Port), "-U", "0", "-t", "1", "-m", "64"}, m.args...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	bin, err := exec.LookPath("memcached")
	if err != nil {
		return err
	}
	m.cmd = exec.Command(bin, args...)
	m.cmd.Stderr = os.Stderr
	if err := m.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- m.cmd.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		select {
		case err := <-exited:
			m.cmd = nil
			return fmt.Errorf("memcached exited: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", m.Addr, 100*time.Millisecond); err == nil {
			c.Close()
			go func(cmd *exec.Cmd) { <-exited }(m.cmd)
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.Stop()
	return fmt.Errorf("memcached did not listen on %s", m.Addr)
}

// Stop kills the process; the port stays reserved for Restart.
func (m *Memcached) Stop() {
	if m.cmd != nil && m.cmd.Process != nil {
		m.cmd.Process.Signal(syscall.SIGCONT)
		m.cmd.Process.Kill()
		for i := 0; i < 200; i++ { // wait until the port is free again
			if c, err := net.DialTimeout("tcp", m.Addr, 50*time.Millisecond); err != nil {
				break
			} else {
				c.Close()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	m.cmd = nil
}

// Restart starts a fresh, empty memcached on the same port.
func (m *Memcached) Restart(t testing.TB) {
	t.Helper()
	m.Stop()
	var err error
	for try := 0; try < 20; try++ {
		if err = m.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("memcached would not restart on %s: %v", m.Addr, err)
}

// Pause stops the process without closing its sockets: a hung server. It
// returns once the process is stopped, not merely signalled.
func (m *Memcached) Pause() {
	m.cmd.Process.Signal(syscall.SIGSTOP)
	stat := fmt.Sprintf("/proc/%d/stat", m.cmd.Process.Pid)
	for i := 0; i < 500; i++ {
		if b, err := os.ReadFile(stat); err == nil {
			if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "T" {
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Resume undoes Pause.
func (m *Memcached) Resume() { m.cmd.Process.Signal(syscall.SIGCONT) }
