package main

import (
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nutcracker.yml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadTwemproxy(t *testing.T) {
	path := writeFile(t, `
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: true
  timeout: 400
  server_retry_timeout: 2000
  server_failure_limit: 3
  servers:
   - 127.0.0.1:11211:1 one
   - 127.0.0.1:11212:2
beta:
  listen: 127.0.0.1:22122
  redis: true
  servers:
   - 127.0.0.1:6379:1
`)
	if _, err := loadTwemproxy(path, ""); err == nil || !strings.Contains(err.Error(), "alpha, beta") {
		t.Fatalf("two pools without --pool: %v", err)
	}
	if _, err := loadTwemproxy(path, "beta"); err == nil || !strings.Contains(err.Error(), "redis") {
		t.Fatalf("a redis pool: %v", err)
	}
	p, err := loadTwemproxy(path, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	servers, err := p.servers()
	if err != nil || len(servers) != 2 || servers[0].Name != "one" || servers[1].Weight != 2 {
		t.Fatalf("servers %+v, %v", servers, err)
	}
	if p.Hash != "fnv1a_64" || !p.AutoEjectHosts || p.ServerFailureLimit != 3 || ms(p.Timeout).Milliseconds() != 400 {
		t.Fatalf("pool %+v", p)
	}
}

func TestFlagsOverrideConfigFile(t *testing.T) {
	path := writeFile(t, "alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  timeout: 400\n  servers:\n   - 127.0.0.1:11211:1\n")
	app := newApp()
	var got []string
	app.Commands[0].Action = func(cc *cliContext) error {
		cfg, listen, err := configFrom(cc)
		if err != nil {
			return err
		}
		got = []string{listen, cfg.Hash, cfg.Timeout.String(), cfg.Servers[0].Addr}
		return nil
	}
	if err := app.Run([]string{"memcachedlock", "serve", "--config", path, "--hash", "md5"}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "127.0.0.1:22121 md5 400ms 127.0.0.1:11211" {
		t.Fatalf("got %v: the file's values, with --hash from the flag", got)
	}
}

// "memcachedlock ring" prints each key's server, as the ring places it.
func TestRingCommand(t *testing.T) {
	app := newApp()
	var out strings.Builder
	app.Writer = &out
	args := []string{"memcachedlock", "ring", "--servers", "10.0.0.1:11211,10.0.0.2:11211", "--distribution", "modula", "--hash", "crc32a", "a", "b", "c", "d"}
	if err := app.Run(args); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("output %q", out.String())
	}
	for i, key := range []string{"a", "b", "c", "d"} {
		// gomemcache's ServerList: crc32(key) % 2.
		want := []string{"10.0.0.1:11211", "10.0.0.2:11211"}[crc32.ChecksumIEEE([]byte(key))%2]
		if lines[i] != key+" "+want {
			t.Errorf("line %q, want %q", lines[i], key+" "+want)
		}
	}
}
