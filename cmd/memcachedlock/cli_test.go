package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// These tests run the built program as an operator does: exit statuses,
// what goes to stdout and stderr, --check, the health endpoints.

// bin is the program under test, built once by TestMain with the version
// and commit stamped in as make release stamps them.
var bin string

const (
	stampedVersion = "9.8.7-test"
	stampedCommit  = "abcdef123456"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "memcachedlock-cli")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "memcachedlock")
	ldflags := "-X github.com/memcachedlock/memcachedlock/proxy.Version=" + stampedVersion +
		" -X github.com/memcachedlock/memcachedlock/proxy.Commit=" + stampedCommit
	if out, err := exec.Command("go", "build", "-ldflags", ldflags, "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the program to its end; env entries are added to the environment.
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// cleanEnv is the environment without MEMCACHEDLOCK_ variables, which
// would change what the program does.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MEMCACHEDLOCK_") {
			out = append(out, kv)
		}
	}
	return out
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-V"}, {"version"}} {
		r := run(t, nil, args...)
		want := "memcachedlock " + stampedVersion + " (commit " + stampedCommit + ", go"
		if r.code != 0 || !strings.HasPrefix(r.stdout, want) || r.stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q...", args, r.code, r.stdout, r.stderr, want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},                             // bare
		{"bogus"},                      // no such command
		{"serve", "--bogus"},           // no such flag
		{"serve", "--timeout", "soon"}, // not a duration
		{"lock", "key-only"},           // no command
		{"unlock", "k", "not-a-fence"}, // FENCE not a number
	} {
		r := run(t, nil, args...)
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "USAGE:") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2, nothing, the usage", args, r.code, r.stdout, r.stderr)
		}
	}
	// Asked for, help goes to stdout.
	if r := run(t, nil, "serve", "--help"); r.code != 0 || !strings.Contains(r.stdout, "--check") {
		t.Errorf("serve --help: exit %d, stdout %q", r.code, r.stdout)
	}
}

// A list of errors is one line, not go-multierror's indented block.
func TestErrorsAreOneLine(t *testing.T) {
	r := run(t, nil, "ring", "--servers", "nohost,127.0.0.1:99999", "k")
	if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || strings.Contains(r.stderr, "occurred") ||
		!strings.Contains(r.stderr, `"nohost"`) || !strings.Contains(r.stderr, "; ") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nutcracker.yml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheck(t *testing.T) {
	good := writeConfig(t, "alpha:\n  listen: 127.0.0.1:22121\n  timeout: 400\n  preconnect: true\n  servers:\n   - 10.0.0.1:11211:1 cache1\n   - 10.0.0.2:11211:1 cache2\n")
	r := run(t, nil, "serve", "--config", good, "--check")
	for _, want := range []string{
		"listen                 127.0.0.1:22121\n",
		"servers                2: 10.0.0.1:11211 cache1,10.0.0.2:11211 cache2\n",
		"hash                   fnv1a_64\n", // twemproxy's default when the file names none
		"timeout                400ms\n",
		"configuration ok\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("exit %d, stdout lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"typo in the file", []string{"--config", writeConfig(t, "alpha:\n  auto_eject_host: true\n  servers:\n   - 10.0.0.1:11211:1\n")},
			`unknown key "auto_eject_host" ignored (did you mean "auto_eject_hosts"?)`},
		{"twemproxy hash we lack", []string{"--config", writeConfig(t, "alpha:\n  hash: murmur\n  servers:\n   - 10.0.0.1:11211:1\n")},
			`hash "murmur" is twemproxy's, but not implemented here; supported: crc32, crc32a, fnv1a_64, md5, one_at_a_time`},
		{"hash flag", []string{"--servers", "10.0.0.1:11211", "--hash", "hsieh"}, `hash "hsieh" is twemproxy's`},
		{"space for a comma", []string{"--servers", "10.0.0.1:11211 10.0.0.2:11211"},
			`its name "10.0.0.2:11211" looks like an address; separate servers with commas`},
		{"server is the listen address", []string{"--servers", "127.0.0.1:11311", "--listen", "127.0.0.1:11311"},
			"server 127.0.0.1:11311 is the proxy's own listen address"},
		{"ttl over the maximum", []string{"--lock-ttl", "2h"}, "lock ttl 7200 must be 1 to lock ttl max ("},
		{"ttl max beyond memcached's 30 days for two grants", []string{"--lock-ttl-max", "1296000"}, "lock ttl max 1296000 must be 1 to 1295999 seconds"},
		{"ttl not whole seconds", []string{"--lock-ttl", "1500ms"}, "--lock-ttl 1.5s: must be whole seconds"},
		{"log format", []string{"--log-format", "xml"}, `--log-format "xml": want text or json`},
	} {
		r := run(t, nil, append([]string{"serve", "--check"}, tc.args...)...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stdout, "configuration ok") {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", tc.name, r.code, r.stderr, tc.want)
		}
	}
}

// One rule for plain numbers: lifetimes (ttl) in seconds, every other
// duration in milliseconds; Go durations everywhere; environment too.
func TestDurationUnits(t *testing.T) {
	r := run(t, []string{"MEMCACHEDLOCK_LOCK_WAIT=2500"}, "serve", "--check", "--timeout", "1500", "--lock-ttl", "45", "--lock-ttl-max", "2h", "--lock-wait-max", "10m")
	for _, want := range []string{"timeout                1.5s\n", "lock ttl               45s (max 7200s)\n", "lock wait              2.5s (max 10m0s)\n"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("exit %d, stdout lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
		}
	}
	if r := run(t, nil, "serve", "--help"); !strings.Contains(r.stdout, "a plain number of milliseconds") || !strings.Contains(r.stdout, "a plain number of seconds") {
		t.Errorf("--help does not say what plain numbers mean:\n%s", r.stdout)
	}
}

// syncBuffer collects a process's stderr while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// shows reports whether s appears in the log within a few seconds: serve
// listens before it logs, so a client can connect before the line is written.
func (b *syncBuffer) shows(s string) bool {
	for i := 0; i < 500; i++ {
		if strings.Contains(b.String(), s) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// startServe runs "serve" until the test ends and waits until it accepts
// clients on listen.
func startServe(t *testing.T, listen string, args ...string) *syncBuffer {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--listen", listen}, args...)...)
	cmd.Env = cleanEnv()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); <-exited })
	for i := 0; i < 1000; i++ {
		if c, err := net.Dial("tcp", listen); err == nil {
			c.Close()
			return stderr
		}
		select {
		case <-exited:
			t.Fatalf("serve exited:\n%s", stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("serve never listened on %s:\n%s", listen, stderr)
	return nil
}

// A memcachedlock is refused as a server, unless asked for; the refusal is
// one log line naming its address, and a non-zero exit.
func TestRefusesProxyAsServer(t *testing.T) {
	mc := testmc.Start(t)
	front := testmc.FreeAddr(t)
	startServe(t, front, "--servers", mc.Addr)

	r := run(t, nil, "serve", "--listen", testmc.FreeAddr(t), "--servers", mc.Addr+","+front)
	if r.code == 0 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "server "+front+" is a memcachedlock proxy") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	// Its own address too, and among the lock servers.
	self := testmc.FreeAddr(t)
	r = run(t, nil, "serve", "--listen", self, "--servers", mc.Addr, "--lock-servers", self)
	if r.code == 0 || !strings.Contains(r.stderr, "server "+self+" is the proxy's own listen address") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	// Asked for: a proxy in front of a proxy serves.
	back := testmc.FreeAddr(t)
	log := startServe(t, back, "--servers", front, "--allow-proxy-servers")
	if !log.shows("server_count=1") {
		t.Errorf("start-up log does not count the servers:\n%s", log)
	}
}

// httpGet gets url, waiting for its listener (which serve opens after the
// proxy's own).
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	for i := 0; i < 500 && err != nil && strings.Contains(err.Error(), "refused"); i++ {
		time.Sleep(10 * time.Millisecond)
		resp, err = http.Get(url)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// /healthz against a dead server, /readyz, and the build's metric.
func TestHealthEndpoints(t *testing.T) {
	live := testmc.Start(t)
	dead := testmc.FreeAddr(t) // nothing listens here
	metrics := testmc.FreeAddr(t)
	startServe(t, testmc.FreeAddr(t), "--servers", live.Addr+","+dead, "--metrics-listen", metrics)
	if code, body := httpGet(t, "http://"+metrics+"/healthz"); code != 503 || body != "servers down:\n"+dead+"\n" {
		t.Errorf("/healthz with a dead server: %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+metrics+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	_, body := httpGet(t, "http://"+metrics+"/metrics")
	if want := `memcachedlock_build_info{commit="` + stampedCommit + `",goversion="go`; !strings.Contains(body, want) ||
		!strings.Contains(body, `version="`+stampedVersion+`"} 1`) {
		t.Errorf("no build info in /metrics (want %q)", want)
	}

	metrics = testmc.FreeAddr(t)
	startServe(t, testmc.FreeAddr(t), "--servers", live.Addr, "--metrics-listen", metrics)
	if code, body := httpGet(t, "http://"+metrics+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz with every server up: %d %q", code, body)
	}
}

// --log-level debug shows clients coming and going and refused commands;
// --log-format json writes one object per line.
func TestDebugLogJSON(t *testing.T) {
	mc := testmc.Start(t)
	listen := testmc.FreeAddr(t)
	log := startServe(t, listen, "--servers", mc.Addr, "--log-level", "debug", "--log-format", "json")
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "bogus\r\n")
	if line, _ := bufio.NewReader(c).ReadString('\n'); line != "ERROR\r\n" {
		t.Fatalf("reply %q", line)
	}
	c.Close()
	for i := 0; i < 500 && strings.Count(log.String(), `"msg":"client closed"`) < 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	out := log.String()
	for _, want := range []string{`"msg":"client connected"`, `"msg":"command refused"`, `"msg":"client closed"`, `"reason":"client closed the connection"`, `"msg":"server connection dialled"`} {
		if !strings.Contains(out, want) {
			t.Errorf("debug log lacks %s:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, "{") {
			t.Errorf("not JSON: %q", line)
		}
	}
}

// The wrapper's usage errors come from the proxy too: a refused argument
// exits 2 with the proxy's reason, not 69 (unreachable).
func TestLockRefusedArgument(t *testing.T) {
	mc := testmc.Start(t)
	listen := testmc.FreeAddr(t)
	startServe(t, listen, "--servers", mc.Addr)
	r := run(t, nil, "lock", "--addr", listen, "--ttl", "2h", "job", "--", "true")
	if r.code != 2 || !strings.Contains(r.stderr, "the proxy refused the request: ttl must be 1 to ") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	long := strings.Repeat("k", 300) // over memcached's 250 bytes
	if r := run(t, nil, "lockinfo", "--addr", listen, long); r.code != 2 || !strings.Contains(r.stderr, "the proxy refused the request: ") {
		t.Fatalf("lockinfo of a bad key: exit %d, stderr %q", r.code, r.stderr)
	}
}

// Unknown keys of a --config file are warnings when serving (errors only
// with --check).
func TestConfigWarningsAtStart(t *testing.T) {
	mc := testmc.Start(t)
	listen := testmc.FreeAddr(t)
	path := writeConfig(t, "alpha:\n  listen: "+listen+"\n  auto_eject_host: true\n  servers:\n   - "+mc.Addr+":1\n")
	log := startServe(t, listen, "--config", path)
	if !strings.Contains(log.String(), `level=WARN msg="--config: `+path+`: unknown key \"auto_eject_host\" ignored (did you mean \"auto_eject_hosts\"?)"`) {
		t.Fatalf("no warning:\n%s", log)
	}
}

// Killing the wrapper with SIGKILL kills the command it runs: the lock
// went with the wrapper's connection, so the command must not go on.
func TestLockChildDiesWithWrapper(t *testing.T) {
	mc := testmc.Start(t)
	listen := testmc.FreeAddr(t)
	startServe(t, listen, "--servers", mc.Addr, "--lock-fresh-servers")
	wrapper := exec.Command(bin, "lock", "--addr", listen, "job", "--", "sh", "-c", "echo $$; exec sleep 300")
	wrapper.Env = cleanEnv()
	out, err := wrapper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := wrapper.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	wrapper.Process.Kill()
	wrapper.Wait()
	for i := 0; i < 1000 && running(child); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if running(child) {
		t.Fatalf("the command (pid %d) outlived its killed wrapper", child)
	}
}

// running reports whether pid is a live process (a zombie is not).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// Several connections to a server that dies and comes back: one warning
// for the death, at most one for the lock state it lost, one line for it
// being up again, however many connections notice.
func TestServerStateLoggedOncePerChange(t *testing.T) {
	mc := testmc.Start(t)
	log := startServe(t, testmc.FreeAddr(t), "--servers", mc.Addr, "--server-connections", "4", "--log-level", "debug")
	waitCount := func(what string, n int) {
		t.Helper()
		for i := 0; i < 1000 && strings.Count(log.String(), what) < n; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if strings.Count(log.String(), what) < n {
			t.Fatalf("fewer than %d %q lines:\n%s", n, what, log)
		}
	}
	waitCount(`msg="server connection dialled"`, 4)
	before := len(log.String())
	mc.Stop()
	waitCount(`msg="server connection closed"`, 4)
	mc.Restart(t)
	waitCount(`msg="server connection dialled"`, 8)
	after := log.String()[before:]
	for what, n := range map[string]int{`msg="memcached server down"`: 1, `msg="memcached server up"`: 1} {
		if got := strings.Count(after, what); got != n {
			t.Errorf("%d %s lines, want %d:\n%s", got, what, n, log)
		}
	}
	if got := strings.Count(after, `msg="lock server lost its lock state`); got > 1 {
		t.Errorf("%d lines for one loss of lock state:\n%s", got, log)
	}
}

// Under systemd with StateDirectory=, the lock state file is on by default.
func TestDefaultStateFileFromSystemd(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/memcachedlock:/var/lib/other")
	if got := defaultStateFile(); got != "/var/lib/memcachedlock/lockstate" {
		t.Fatalf("STATE_DIRECTORY set: %q", got)
	}
	t.Setenv("STATE_DIRECTORY", "")
	if got := defaultStateFile(); got != "" {
		t.Fatalf("STATE_DIRECTORY empty: %q", got)
	}
}
