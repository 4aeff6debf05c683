package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// check is "serve --check", as "nutcracker -t": it reads the file and the
// flags, says what it would serve, and exits 0, or 1 naming every problem.
// It does not touch the network.
func check(cc *cli.Context) error {
	var problems []string
	for _, w := range configWarnings(cc) {
		problems = append(problems, "--config: "+w)
	}
	if _, err := newLogger(cc); err != nil {
		problems = append(problems, err.Error())
	}
	cfg, listen, err := configFrom(cc)
	if err == nil {
		err = flat(cfg.Validate())
	}
	if err == nil {
		err = checkRings(cfg)
	}
	if err != nil {
		problems = append(problems, oneLine(err))
	} else {
		if _, _, err := net.SplitHostPort(listen); err != nil {
			problems = append(problems, fmt.Sprintf("--listen %q: %v", listen, err))
		}
		if err := listensOnServer(cfg, listen); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "memcachedlock:", p)
		}
		return cli.Exit("memcachedlock: configuration has errors", 1)
	}
	describe(cc.App.Writer, cfg, listen)
	return nil
}

// describe prints what serve would do with cfg (defaults filled in).
func describe(w io.Writer, cfg proxy.Config, listen string) {
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "%-22s "+format+"\n", append([]any{name}, args...)...)
	}
	row("listen", "%s", listen)
	row("servers", "%d: %s", len(cfg.Servers), serverList(cfg.Servers))
	row("lock servers", "%d: %s", len(cfg.LockServers), serverList(cfg.LockServers))
	row("lock replicas", "%d", cfg.LockReplicas)
	row("distribution", "%s", cfg.Distribution)
	row("hash", "%s", cfg.Hash)
	row("timeout", "%s", cfg.Timeout)
	row("server connections", "%d", cfg.ServerConns)
	row("max connections", "%d (0: no limit)", cfg.MaxConns)
	row("max item size", "%d bytes", cfg.MaxItemSize)
	if cfg.AutoEject {
		row("auto eject", "after %d failures, for %s", cfg.FailureLimit, cfg.RetryTimeout)
	} else {
		row("auto eject", "off")
	}
	row("lock ttl", "%ds (max %ds)", cfg.LockTTL, cfg.LockTTLMax)
	row("lock wait", "%s (max %s)", cfg.LockWait, cfg.LockWaitMax)
	fmt.Fprintln(w, "configuration ok")
}

// checkRings builds the rings serve would build.
func checkRings(cfg proxy.Config) error {
	if _, err := ring.New(cfg.Servers, cfg.Distribution, cfg.Hash); err != nil {
		return err
	}
	_, err := ring.New(cfg.LockServers, cfg.Distribution, cfg.Hash)
	return err
}

// configWarnings are the --config file's keys that will not be acted on.
// Errors reading the file are left to configFrom, which reports them.
func configWarnings(cc *cli.Context) []string {
	path := cc.String("config")
	if path == "" {
		return nil
	}
	pool, err := loadTwemproxy(path, cc.String("pool"))
	if err != nil {
		return nil
	}
	out := make([]string, len(pool.Warnings))
	for i, w := range pool.Warnings {
		out[i] = path + ": " + w
	}
	return out
}

func newLogger(cc *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cc.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", cc.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f := cc.String("log-format"); f {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", f)
	}
}

// twemproxyHashes are twemproxy's hash names that the ring lacks.
var twemproxyHashes = []string{"crc16", "fnv1_32", "fnv1_64", "fnv1a_32", "hsieh", "jenkins", "murmur"}

// supported says clearly when a hash or distribution that twemproxy knows
// is not one this proxy implements.
func supported(cfg proxy.Config) error {
	if _, err := ring.LookupHash(cfg.Hash); err != nil {
		what := "an unknown hash"
		if slices.Contains(twemproxyHashes, cfg.Hash) {
			what = "twemproxy's, but not implemented here"
		}
		return fmt.Errorf("hash %q is %s; supported: %s (another hash puts keys on other servers than your clients or twemproxy do today)",
			cfg.Hash, what, strings.Join(ring.Hashes(), ", "))
	}
	if cfg.Distribution != ring.Ketama && cfg.Distribution != ring.Modula {
		return fmt.Errorf("distribution %q is not supported; supported: %s, %s", cfg.Distribution, ring.Ketama, ring.Modula)
	}
	return nil
}

// parseServerList reads server specs and refuses a name that is an
// address: "a:1 b:2" is two servers separated by a space (a missing
// comma), not server a:1 named b:2.
func parseServerList(specs []string) ([]ring.Server, error) {
	servers, err := ring.ParseServers(specs)
	if err != nil {
		return nil, flat(err)
	}
	var bad []string
	for _, s := range servers {
		if s.Name == "" {
			continue
		}
		if _, err := ring.ParseServer(s.Name); err == nil {
			bad = append(bad, fmt.Sprintf("server %q: its name %q looks like an address; separate servers with commas", s.String(), s.Name))
		}
	}
	if len(bad) > 0 {
		return nil, errors.New(strings.Join(bad, "; "))
	}
	return servers, nil
}
