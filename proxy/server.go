package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/memcachedlock/memcachedlock/lockservice"
)

// Version is the proxy's own version, reported in stats as proxy_version.
var Version = "0.1.0"

// Server is a running proxy: its listeners and client connections, and
// the parts they use. Create it with New and start it with Serve.
type Server struct {
	cfg     Config
	routes  *routing
	locks   *lockservice.Service
	metrics *metrics
	stats   *proxyStats
	env     *connEnv // what each client connection is given
	counters
	nextPin   atomic.Uint64
	lockConns []*lockConn   // the lock service's connections to the lock servers
	quit      chan struct{} // closed when the proxy stops
	quitOnce  sync.Once

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*clientConn]struct{}
	closing   bool
	wg        sync.WaitGroup
}

// counters are the proxy's own counts, kept on the request path and read
// by stats and /metrics.
type counters struct {
	connsTotal   atomic.Uint64
	connsCurr    atomic.Int64
	connsRefused atomic.Uint64
	commands     atomic.Uint64
	getMisses    atomic.Uint64 // keys of a multi-get answered as misses because their server failed
}

// New checks cfg and connects to the servers it names.
func New(cfg Config) (*Server, error) {
	impliedLocks := len(cfg.LockServers) == 0
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		metrics:   newMetrics(),
		quit:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*clientConn]struct{}),
	}
	s.routes = newRouting(cfg, impliedLocks, s.metrics.serverLat)
	locks, err := lockservice.New(lockservice.Config{
		Servers: cfg.LockServers, Distribution: cfg.Distribution, Hash: cfg.Hash, Replicas: cfg.LockReplicas,
		Prefix: cfg.LockPrefix, MaxTTL: cfg.LockTTLMax, MaxWait: cfg.LockWaitMax, Poll: cfg.LockPoll,
		Timeout: cfg.Timeout, Fresh: cfg.LockFresh, StateFile: cfg.LockStateFile, Logger: cfg.Logger,
		EarlyHandoff: !cfg.LockNoEarlyHandoff,
	}, func(addr string) lockservice.Conn {
		lc := newLockConn(s.routes.backend(addr))
		s.lockConns = append(s.lockConns, lc)
		return lc
	})
	if err != nil {
		return nil, err
	}
	s.locks = locks
	s.stats = &proxyStats{started: time.Now(), counters: &s.counters, routes: s.routes, locks: locks}
	s.metrics.readOnScrape(&s.counters, s.routes, locks)
	s.env = &connEnv{
		timeout: cfg.Timeout, maxItemSize: cfg.MaxItemSize, prefix: []byte(cfg.LockPrefix),
		lockTTL: cfg.LockTTL, lockWait: cfg.LockWait,
		lockLimits: lockLimits{ttlMax: cfg.LockTTLMax, waitMax: cfg.LockWaitMax},
		logger:     cfg.Logger,
		routes:     s.routes, locks: locks, metrics: s.metrics, stats: s.stats, counters: &s.counters,
		untrack: s.untrack,
	}
	if err := s.Reload(cfg.Servers, cfg.Distribution, cfg.Hash); err != nil {
		return nil, err
	}
	if cfg.AutoEject {
		go s.routes.ejectLoop(s.quit)
	}
	return s, nil
}

// advertise tells the other proxies where this one takes forwarded lock
// commands: Config.Advertise, else the listener's address. A wildcard
// address cannot be dialled: it is advertised with the host's address on
// the route to the lock servers, which the other proxies, reaching the
// same lock servers, most likely reach too (and one that cannot only
// serves its names itself, at polling speed).
func (s *Server) advertise(l net.Addr) {
	addr := s.cfg.Advertise
	if ta, ok := l.(*net.TCPAddr); ok && addr == "" {
		if !ta.IP.IsUnspecified() {
			addr = ta.String()
		} else if ip := s.routeToLockServers(); ip != nil {
			addr = net.JoinHostPort(ip.String(), strconv.Itoa(ta.Port))
			s.cfg.Logger.Info("listening on a wildcard address: advertising the one the lock servers are reached from; set --advertise if other proxies reach this one elsewhere", "advertise", addr)
		}
	}
	if addr == "" {
		s.cfg.Logger.Warn("listening on a wildcard address without --advertise: other proxies will not forward lock commands here")
		return
	}
	s.locks.Advertise(addr)
}

// routeToLockServers returns this host's address on the route to the
// first lock server it can find one for; nil if none. (A UDP socket
// connected to a server picks the route without sending anything.)
func (s *Server) routeToLockServers() net.IP {
	for _, srv := range s.cfg.LockServers {
		c, err := net.Dial("udp", srv.Addr)
		if err != nil {
			continue
		}
		ua, _ := c.LocalAddr().(*net.UDPAddr)
		c.Close()
		if ua != nil && !ua.IP.IsUnspecified() {
			return ua.IP
		}
	}
	return nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts client connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	first := len(s.listeners) == 1
	s.mu.Unlock()
	if first {
		s.advertise(l.Addr())
	}
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of file descriptors or similar: back off, keep serving.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !s.track(nc) {
			nc.Close()
		}
	}
}

// track starts serving nc unless the proxy is closing or full.
func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.cfg.MaxConns > 0 && len(s.conns) >= s.cfg.MaxConns {
		s.connsRefused.Add(1)
		nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		nc.Write(replyTooManyConn)
		return false
	}
	c := newClientConn(s.env, nc, s.nextPin.Add(1))
	if s.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		s.cfg.Logger.Debug("client connected", "client", nc.RemoteAddr().String())
	}
	s.conns[c] = struct{}{}
	s.connsTotal.Add(1)
	s.connsCurr.Add(1)
	s.wg.Add(1)
	go c.serve()
	return true
}

func (s *Server) untrack(c *clientConn) {
	if s.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		s.cfg.Logger.Debug("client closed", "client", c.nc.RemoteAddr().String(), "reason", closeReason(c))
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connsCurr.Add(-1)
	s.wg.Done()
}

// closeReason says, for the debug log, why a client's connection ended.
func closeReason(c *clientConn) string {
	switch {
	case c.sawEOF:
		return "client closed the connection"
	case c.writeFailed():
		return "replies could not be written (client gone or not reading)"
	case c.stopping.Load():
		return "proxy shutting down"
	}
	return "quit, a read error, or a command that broke the framing"
}

// Addr returns the address of one listener, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for l := range s.listeners {
		return l.Addr()
	}
	return nil
}

// Shutdown stops accepting, ends lock waits with SERVER_ERROR, lets every
// connection finish the commands it has sent, releases connection-owned
// locks, and closes. If ctx ends first, connections are closed at once.
func (s *Server) Shutdown(ctx context.Context) error {
	// Waiters first, so that they are told the proxy is going rather than
	// see their connection's context end. The links to other proxies stay
	// open until the connections have finished (see lockservice.Stop).
	s.locks.Stop()
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
	}
	s.quitOnce.Do(func() {
		close(s.quit)
		s.locks.Close()
		s.routes.close()
		for _, lc := range s.lockConns {
			lc.close()
		}
	})
	return err
}

// LockHome returns the address of the proxy that queues the waiters for
// the lock name, or "" while no proxy has registered.
func (s *Server) LockHome(name string) string { return s.locks.Home(name) }
