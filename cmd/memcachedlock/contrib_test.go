package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The files an operator installs from contrib/ work with this build.

const (
	contribConfig = "../../contrib/memcachedlock.yml"
	contribUnit   = "../../contrib/memcachedlock.service"
	// Where the unit expects the program and the configuration.
	installedBin    = "/usr/local/bin/memcachedlock"
	installedConfig = "/etc/memcachedlock/memcachedlock.yml"
)

func TestContribConfigChecks(t *testing.T) {
	r := run(t, nil, "serve", "--config", contribConfig, "--check")
	if r.code != 0 || r.stderr != "" || !strings.HasSuffix(r.stdout, "configuration ok\n") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// The unit's ExecStart line, with this build and the example
// configuration in place of the installed ones, passes --check.
func TestContribUnitExecStart(t *testing.T) {
	unit, err := os.ReadFile(contribUnit)
	if err != nil {
		t.Fatal(err)
	}
	var execStart []string
	for _, line := range strings.Split(string(unit), "\n") {
		if rest, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = strings.Fields(rest)
		}
	}
	if len(execStart) < 2 || execStart[0] != installedBin {
		t.Fatalf("ExecStart %q: want %s and its arguments", execStart, installedBin)
	}
	args := []string{}
	for _, a := range execStart[1:] {
		args = append(args, strings.ReplaceAll(a, installedConfig, contribConfig))
	}
	r := run(t, nil, append(args, "--check")...)
	if r.code != 0 || !strings.HasSuffix(r.stdout, "configuration ok\n") {
		t.Fatalf("%s %s --check: exit %d\n%s%s", bin, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
}

// systemd-analyze verify, where it is installed, finds nothing to say
// about the unit (it warns about unknown keys and bad values on stderr and
// exits 0, so any mention of the unit counts as a failure).
func TestContribUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed; TestContribUnitExecStart covers the ExecStart line")
	}
	unit, err := os.ReadFile(contribUnit)
	if err != nil {
		t.Fatal(err)
	}
	// verify wants the programs the unit names to exist.
	path := filepath.Join(t.TempDir(), "memcachedlock.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), installedBin, bin)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "memcachedlock.service") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
