package proxy

import (
	"log/slog"
	"time"

	"github.com/memcachedlock/memcachedlock/lockservice"
)

// connEnv is what a client connection uses of the proxy: settings and the
// shared parts, made once by New and shared by every connection, so that a
// connection is given what it needs rather than reaching into Server.
type connEnv struct {
	timeout     time.Duration // longest wait for a memcached server's reply
	maxItemSize int
	prefix      []byte // reserved key prefix of lock items
	lockTTL     int    // default grant lifetime, seconds
	lockWait    time.Duration
	lockLimits  lockLimits
	logger      *slog.Logger

	routes   *routing
	locks    *lockservice.Service
	metrics  *metrics
	stats    *proxyStats // the proxy's own lines in the general stats group
	counters *counters
	untrack  func(*clientConn) // called once when the connection has ended
}
