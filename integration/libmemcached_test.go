package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/memcachedlock/memcachedlock/proxy"
)

// tool finds a libmemcached program, or fails saying how to get it.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: these tests run libmemcached's tools (apt-get install libmemcached-tools)", name)
	}
	return p
}

var capableResult = regexp.MustCompile(`(?m)^(ascii|binary) .*\[(pass|fail|skip)\]\s*$`)

// memccapable, text and binary, passes through the proxy exactly as it
// passes against memcached itself (it flushes: each run has its servers).
func TestMemccapableThroughProxy(t *testing.T) {
	bin := tool(t, "memccapable")
	run := func(addr string) string {
		host, port, _ := strings.Cut(addr, ":")
		out, _ := exec.Command(bin, "-h", host, "-p", port, "-t", "5").CombinedOutput()
		results := capableResult.FindAllString(string(out), -1)
		if len(results) == 0 {
			t.Fatalf("memccapable against %s said:\n%s", addr, out)
		}
		return strings.Join(results, "\n")
	}
	want := run(startCluster(t, 1)[0].Addr)
	for _, n := range []int{1, 3} {
		addr, _ := startProxy(t, proxy.Config{Servers: startCluster(t, n).servers(t)})
		if got := run(addr); got != want {
			t.Errorf("memccapable through the proxy over %d servers:\n%s\nagainst memcached:\n%s", n, got, want)
		}
	}
}

// libmemcached's copy and cat tools in binary mode: files in, the same
// bytes out, over three servers.
func TestLibmemcachedToolsBinary(t *testing.T) {
	memccp, memccat := tool(t, "memccp"), tool(t, "memccat")
	addr, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 3).servers(t)})
	dir := t.TempDir()
	var files []string
	for i, size := range []int{0, 1, 100, 70000, 900000} {
		name := fmt.Sprintf("file%d", i)
		data := bytes.Repeat([]byte{byte('a' + i), '\r', '\n', 0}, size/4+1)[:size]
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, name)
	}
	cp := exec.Command(memccp, append([]string{"--binary", "--servers=" + addr}, files...)...)
	cp.Dir = dir
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("memccp --binary: %v\n%s", err, out)
	}
	for _, name := range files {
		out, err := exec.Command(memccat, "--binary", "--servers="+addr, name).Output()
		if err != nil {
			t.Fatalf("memccat --binary %s: %v", name, err)
		}
		want, _ := os.ReadFile(filepath.Join(dir, name))
		want = append(want, '\n') // memccat ends each value with one
		if !bytes.Equal(out, want) {
			t.Errorf("memccat --binary %s: %d bytes back, want %d", name, len(out), len(want))
		}
	}
	if out, err := exec.Command(memccat, "--binary", "--servers="+addr, "missing").CombinedOutput(); err == nil {
		t.Errorf("memccat --binary of a missing key succeeded: %s", out)
	}
}

// memcaslap in binary mode, verifying every value it reads back.
func TestMemcaslapBinaryVerifies(t *testing.T) {
	bin := tool(t, "memcaslap")
	addr, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 3).servers(t)})
	out, err := exec.Command(bin, "-s", addr, "-B", "-x", "2000", "-v", "1", "-c", "4", "-T", "1").CombinedOutput()
	if err != nil {
		t.Fatalf("memcaslap -B: %v\n%s", err, out)
	}
	for _, want := range []string{"cmd_get: 1800", "cmd_set: 200", "verify_failed: 0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("memcaslap -B: want %q in\n%s", want, out)
		}
	}
}
