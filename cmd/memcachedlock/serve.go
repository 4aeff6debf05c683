package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // --debug-listen
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// defaultStateFile is lockstate in the directory systemd gives a unit
// with StateDirectory= (the first, if several), else none.
func defaultStateFile() string {
	dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":")
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, "lockstate")
}

func env(name string) []string { return []string{"MEMCACHEDLOCK_" + name} }

// ringFlags are shared by serve and ring: they decide where keys go.
func ringFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "servers", Value: "127.0.0.1:11211", EnvVars: env("SERVERS"),
			Usage: "memcached servers, comma separated, each `host:port[:weight] [name]`"},
		&cli.StringFlag{Name: "distribution", Value: proxy.DefaultDistribution, EnvVars: env("DISTRIBUTION"),
			Usage: "key distribution: ketama (libmemcached, twemproxy) or modula (python-memcached, gomemcache)"},
		&cli.StringFlag{Name: "hash", Value: proxy.DefaultHash, EnvVars: env("HASH"),
			Usage: "key hash: " + strings.Join(ring.Hashes(), ", ")},
	}
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the proxy",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "config", EnvVars: env("CONFIG"), Usage: "twemproxy (nutcracker) YAML `file` to read the pool from; flags override it; SIGHUP rereads its servers"},
			&cli.StringFlag{Name: "pool", EnvVars: env("POOL"), Usage: "pool of --config to serve, when it has several"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:11311", EnvVars: env("LISTEN"), Usage: "`address` to accept clients on"},
			msFlag("timeout", proxy.DefaultTimeout, "TIMEOUT", "longest wait for a memcached server's reply"),
			&cli.StringFlag{Name: "max-item-size", Value: "1m", EnvVars: env("MAX_ITEM_SIZE"), Usage: "largest value accepted (bytes, or with k/m suffix)"},
			&cli.IntFlag{Name: "server-connections", Value: proxy.DefaultServerConns, EnvVars: env("SERVER_CONNECTIONS"), Usage: "pipelined connections to each memcached server"},
			&cli.IntFlag{Name: "max-connections", Value: 0, EnvVars: env("MAX_CONNECTIONS"), Usage: "most client connections at once; 0 is no limit"},
			&cli.BoolFlag{Name: "auto-eject", EnvVars: env("AUTO_EJECT"), Usage: "take failing cache servers out of the ring for a while (twemproxy's auto_eject_hosts); never lock servers"},
			&cli.IntFlag{Name: "server-failure-limit", Value: proxy.DefaultFailureLimit, EnvVars: env("SERVER_FAILURE_LIMIT"), Usage: "failures in a row that eject a server"},
			msFlag("server-retry-timeout", proxy.DefaultRetryTimeout, "SERVER_RETRY_TIMEOUT", "how long an ejected server stays out"),
			&cli.StringFlag{Name: "lock-servers", EnvVars: env("LOCK_SERVERS"), Usage: "servers that hold lock state (default: --servers)"},
			&cli.IntFlag{Name: "lock-replicas", Value: 1, EnvVars: env("LOCK_REPLICAS"), Usage: "lock servers each lock lives on (odd); a majority decides, so 3 survive losing any one"},
			&cli.BoolFlag{Name: "lock-early-handoff", Value: true, EnvVars: env("LOCK_EARLY_HANDOFF"), Usage: "hand a lock to the next waiter before memcached is written (the waiter is reserved in the lock item beforehand): a handoff about 0.2 ms sooner; =false makes every handoff wait for its write (README, Early handoff)"},
			&cli.BoolFlag{Name: "lock-fresh-servers", EnvVars: env("LOCK_FRESH_SERVERS"), Usage: "trust lock servers found without their marker at start, instead of refusing their locks for --lock-ttl-max: only for servers just started for this proxy (make run, tests), never after a restart"},
			&cli.StringFlag{Name: "lock-state-file", Value: defaultStateFile(), EnvVars: env("LOCK_STATE_FILE"), Usage: "`file` where the proxy keeps until when grants on each lock server may still run, so that every lock server restarting together with every proxy is not taken for new servers; default lockstate in systemd's $STATE_DIRECTORY, else none"},
			&cli.StringFlag{Name: "advertise", EnvVars: env("ADVERTISE"), Usage: "`host:port` other proxies reach this one at to forward lock commands (its client port); default --listen, and for a wildcard this host's address on the route to the lock servers"},
			&cli.StringFlag{Name: "lock-prefix", Value: proxy.DefaultLockPrefix, EnvVars: env("LOCK_PREFIX"), Usage: "reserved key prefix for lock state"},
			secFlag("lock-ttl", proxy.DefaultLockTTL*time.Second, "LOCK_TTL", "default lock lifetime, whole seconds"),
			secFlag("lock-ttl-max", proxy.DefaultLockTTLMax*time.Second, "LOCK_TTL_MAX", "longest lock lifetime, whole seconds, at most 15 days; also how long a lock server that lost its state is not written to"),
			msFlag("lock-wait", proxy.DefaultLockWait, "LOCK_WAIT", "default wait for a lock"),
			msFlag("lock-wait-max", proxy.DefaultLockWaitMax, "LOCK_WAIT_MAX", "longest wait for a lock"),
			msFlag("lock-poll", proxy.DefaultLockPoll, "LOCK_POLL", "longest pause between looks at a lock held through another proxy"),
			msFlag("shutdown-timeout", 10*time.Second, "SHUTDOWN_TIMEOUT", "on SIGINT/SIGTERM, how long in-flight commands may take"),
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("LOG_LEVEL"), Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: env("LOG_FORMAT"), Usage: "text or json (one object per line)"},
			&cli.StringFlag{Name: "metrics-listen", EnvVars: env("METRICS_LISTEN"), Usage: "`address` to serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) on; off when empty"},
			&cli.StringFlag{Name: "debug-listen", EnvVars: env("DEBUG_LISTEN"), Usage: "`address` for Go's /debug/pprof profiles; off when empty"},
			&cli.BoolFlag{Name: "allow-proxy-servers", EnvVars: env("ALLOW_PROXY_SERVERS"), Usage: "allow a server that is itself a memcachedlock proxy (refused at start otherwise)"},
			&cli.BoolFlag{Name: "check", Usage: "check the configuration, print what would be served, and exit: 0 when good, 1 when not (unknown keys in --config are errors here)"},
		}, ringFlags()...),
		Action: serve,
	}
}

func serve(cc *cli.Context) error {
	if cc.Bool("check") {
		return check(cc)
	}
	logger, err := newLogger(cc)
	if err != nil {
		return err
	}
	for _, w := range configWarnings(cc) {
		logger.Warn("--config: " + w)
	}
	cfg, listen, err := configFrom(cc)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	if err := refuseProxyServers(cc, cfg, listen); err != nil {
		logger.Error("refusing to start: " + err.Error())
		return cli.Exit("", 1)
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		return flat(err)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	logger.Info("serving", "listen", l.Addr().String(), "server_count", len(cfg.Servers), "servers", serverList(cfg.Servers),
		"distribution", cfg.Distribution, "hash", cfg.Hash, "lock_servers", lockServerList(cfg))

	if err := serveMetrics(cc.String("metrics-listen"), srv, logger); err != nil {
		return err
	}
	serveDebug(cc.String("debug-listen"), logger)
	ctx, stop := signal.NotifyContext(cc.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go reloadOnHangup(ctx, cc, srv, logger)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	return shutdown(srv, durationOf(cc, "shutdown-timeout"), logger)
}

// serveMetrics serves /metrics, /healthz and /readyz on addr, if set.
func serveMetrics(addr string, srv *proxy.Server, logger *slog.Logger) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", srv.MetricsHandler())
	mux.Handle("/healthz", srv.HealthHandler())
	mux.Handle("/readyz", srv.ReadyHandler())
	ml, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	logger.Info("metrics on /metrics, health on /healthz and /readyz", "listen", ml.Addr().String())
	go http.Serve(ml, mux)
	return nil
}

// serveDebug serves Go's profiles on addr, if set.
func serveDebug(addr string, logger *slog.Logger) {
	if addr == "" {
		return
	}
	go func() {
		logger.Info("profiles on /debug/pprof", "listen", addr)
		if err := http.ListenAndServe(addr, nil); err != nil {
			logger.Error("debug listener", "err", err)
		}
	}()
}

// shutdown lets commands in flight finish for up to timeout.
func shutdown(srv *proxy.Server, timeout time.Duration, logger *slog.Logger) error {
	logger.Info("shutting down", "deadline", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		logger.Warn("shutdown deadline passed; connections closed")
		return nil
	}
	return err
}

// configFrom builds the proxy's configuration: the --config file's pool
// when there is one, then every flag (or environment variable) that was set.
func configFrom(cc *cli.Context) (proxy.Config, string, error) {
	cfg, err := flagConfig(cc)
	if err != nil {
		return cfg, "", err
	}
	listen := cc.String("listen")
	if path := cc.String("config"); path != "" {
		if err := applyPool(cc, path, &cfg, &listen); err != nil {
			return cfg, "", err
		}
	}
	if err := supported(cfg); err != nil {
		return cfg, "", err
	}
	return cfg, listen, nil
}

// flagConfig is the configuration the flags and environment give.
func flagConfig(cc *cli.Context) (proxy.Config, error) {
	cfg := proxy.Config{
		Distribution:       cc.String("distribution"),
		Hash:               cc.String("hash"),
		Timeout:            durationOf(cc, "timeout"),
		ServerConns:        cc.Int("server-connections"),
		MaxConns:           cc.Int("max-connections"),
		AutoEject:          cc.Bool("auto-eject"),
		FailureLimit:       cc.Int("server-failure-limit"),
		RetryTimeout:       durationOf(cc, "server-retry-timeout"),
		LockPrefix:         cc.String("lock-prefix"),
		LockReplicas:       cc.Int("lock-replicas"),
		LockFresh:          cc.Bool("lock-fresh-servers"),
		LockNoEarlyHandoff: !cc.Bool("lock-early-handoff"),
		LockStateFile:      cc.String("lock-state-file"),
		Advertise:          cc.String("advertise"),
		LockWait:           durationOf(cc, "lock-wait"),
		LockWaitMax:        durationOf(cc, "lock-wait-max"),
		LockPoll:           durationOf(cc, "lock-poll"),
	}
	var err error
	if cfg.LockTTL, err = secondsOf(cc, "lock-ttl"); err != nil {
		return cfg, err
	}
	if cfg.LockTTLMax, err = secondsOf(cc, "lock-ttl-max"); err != nil {
		return cfg, err
	}
	if cfg.Servers, err = parseServers(cc.String("servers")); err != nil {
		return cfg, err
	}
	if v := cc.String("lock-servers"); v != "" {
		if cfg.LockServers, err = parseServers(v); err != nil {
			return cfg, err
		}
	}
	if cfg.MaxItemSize, err = parseSize(cc.String("max-item-size")); err != nil {
		return cfg, fmt.Errorf("--max-item-size: %w", err)
	}
	return cfg, nil
}

// applyPool takes from the twemproxy file's pool what no flag set.
func applyPool(cc *cli.Context, path string, cfg *proxy.Config, listen *string) error {
	pool, err := loadTwemproxy(path, cc.String("pool"))
	if err != nil {
		return err
	}
	servers, err := pool.servers()
	if err != nil {
		return fmt.Errorf("%s: %w", path, flat(err))
	}
	fromFile := func(flag string, given bool, set func()) {
		if given && !cc.IsSet(flag) {
			set()
		}
	}
	fromFile("servers", true, func() { cfg.Servers = servers })
	fromFile("listen", pool.Listen != "", func() { *listen = pool.Listen })
	fromFile("hash", pool.Hash != "", func() { cfg.Hash = pool.Hash })
	fromFile("distribution", pool.Distribution != "", func() { cfg.Distribution = pool.Distribution })
	fromFile("timeout", pool.Timeout > 0, func() { cfg.Timeout = ms(pool.Timeout) })
	fromFile("server-connections", pool.ServerConnections > 0, func() { cfg.ServerConns = pool.ServerConnections })
	fromFile("max-connections", pool.ClientConnections > 0, func() { cfg.MaxConns = pool.ClientConnections })
	fromFile("auto-eject", true, func() { cfg.AutoEject = pool.AutoEjectHosts })
	fromFile("server-failure-limit", pool.ServerFailureLimit > 0, func() { cfg.FailureLimit = pool.ServerFailureLimit })
	fromFile("server-retry-timeout", pool.ServerRetryTimeout > 0, func() { cfg.RetryTimeout = ms(pool.ServerRetryTimeout) })
	return nil
}

func parseServers(list string) ([]ring.Server, error) {
	return parseServerList(strings.Split(list, ","))
}

func serverList(servers []ring.Server) string {
	names := make([]string, len(servers))
	for i, s := range servers {
		names[i] = s.String()
	}
	return strings.Join(names, ",")
}

// parseSize reads "1048576", "512k" or "1m".
func parseSize(v string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(strings.ToLower(v), "k"):
		mult, v = 1<<10, v[:len(v)-1]
	case strings.HasSuffix(strings.ToLower(v), "m"):
		mult, v = 1<<20, v[:len(v)-1]
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q is not a size", v)
	}
	return n * mult, nil
}

func lockServerList(cfg proxy.Config) string {
	if len(cfg.LockServers) == 0 {
		return "(same as servers)"
	}
	return serverList(cfg.LockServers)
}

// reloadOnHangup rereads the --config file's servers, distribution and hash
// on SIGHUP. Without --config there is nothing to reread: flags and the
// environment cannot change under a running process.
func reloadOnHangup(ctx context.Context, cc *cli.Context, srv *proxy.Server, logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if cc.String("config") == "" {
			logger.Warn("SIGHUP: no --config file to reread; nothing changed")
			continue
		}
		cfg, listen, err := configFrom(cc)
		if err == nil {
			err = refuseProxyServers(cc, cfg, listen)
		}
		if err == nil {
			err = srv.Reload(cfg.Servers, cfg.Distribution, cfg.Hash)
		}
		if err != nil {
			logger.Error("SIGHUP: reload failed; keeping the servers as they were", "err", err)
		}
	}
}
