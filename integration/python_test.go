package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// python finds a python3 that has the memcached client libraries: Debian's
// packages install them for /usr/bin/python3, which may not be first on PATH.
func python(t testing.TB) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if exec.Command(p, "-c", "import memcache, pymemcache").Run() == nil {
			return p
		}
	}
	t.Fatalf("no python3 with python-memcached and pymemcache: apt-get install python3-memcache python3-pymemcache")
	return ""
}

// runPython runs a script, failing the test with its output if it fails.
func runPython(t testing.TB, py, script string, args ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "script.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, append([]string{path}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return string(out)
}
