package integration

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
)

// buildCLI builds cmd/memcachedlock into a temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "memcachedlock")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/memcachedlock").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestCLILock(t *testing.T) {
	bin := buildCLI(t)
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})

	// Two jobs at once under one lock: their outputs never interleave.
	var mu sync.Mutex
	var out bytes.Buffer
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := exec.Command(bin, "lock", "--addr", addr, "cron", "--", "sh", "-c", "echo start; sleep 0.2; echo end").Output()
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			out.Write(o)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if got := out.String(); got != strings.Repeat("start\nend\n", 3) {
		t.Fatalf("jobs overlapped:\n%s", got)
	}

	// The command's exit status comes through, and the fence is in its environment.
	cmd := exec.Command(bin, "lock", "--addr", addr, "cron", "--", "sh", "-c", `test -n "$MEMCACHEDLOCK_FENCE" && exit 3`)
	if code := exitCode(cmd.Run()); code != 3 {
		t.Fatalf("exit status %d, want the command's 3", code)
	}

	// Busy for the whole wait: 75, or what -E says.
	holder := exec.Command(bin, "lock", "--addr", addr, "busy", "--", "sleep", "2")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	waitHeld(t, bin, addr, "busy")
	if code := exitCode(exec.Command(bin, "lock", "--addr", addr, "--wait", "0", "busy", "--", "true").Run()); code != 75 {
		t.Fatalf("busy lock: exit %d, want 75", code)
	}
	if code := exitCode(exec.Command(bin, "lock", "--addr", addr, "-E", "9", "--wait", "100ms", "busy", "--", "true").Run()); code != 9 {
		t.Fatalf("busy lock with -E 9: exit %d", code)
	}
	// Killing the holder frees its connection's lock at once.
	holder.Process.Kill()
	holder.Wait()
	if code := exitCode(exec.Command(bin, "lock", "--addr", addr, "--wait", "5s", "busy", "--", "true").Run()); code != 0 {
		t.Fatalf("after the holder died: exit %d", code)
	}

	// Proxy unreachable: 69.
	if code := exitCode(exec.Command(bin, "lock", "--addr", "127.0.0.1:1", "x", "--", "true").Run()); code != 69 {
		t.Fatalf("no proxy: exit %d, want 69", code)
	}
}

func waitHeld(t *testing.T, bin, addr, key string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if exec.Command(bin, "lockinfo", "--addr", addr, key).Run() == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never held", key)
}

func TestCLIUnlockAndLockinfo(t *testing.T) {
	bin := buildCLI(t)
	c := startCluster(t, 1)
	addr, _ := startProxy(t, proxy.Config{Servers: c.servers(t)})
	conn := testmc.Dial(t, addr)
	fence := strings.Fields(conn.RoundTrip("lock stuck 300 0 dead-host:1:1"))[1]
	out, err := exec.Command(bin, "lockinfo", "--addr", addr, "stuck").Output()
	if err != nil || !strings.Contains(string(out), "owner dead-host:1:1") || !strings.Contains(string(out), "fence "+fence) {
		t.Fatalf("lockinfo: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "unlock", "--addr", addr, "stuck", fence).Output()
	if err != nil || string(out) != "UNLOCKED 0\n" {
		t.Fatalf("unlock: %v %q", err, out)
	}
	if code := exitCode(exec.Command(bin, "lockinfo", "--addr", addr, "stuck").Run()); code != 1 {
		t.Fatalf("lockinfo of a free lock: exit %d, want 1", code)
	}
}
