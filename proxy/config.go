package proxy

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/memcachedlock/memcachedlock/lockext"
	"github.com/memcachedlock/memcachedlock/ring"
)

// Config is everything the proxy needs to run. Zero fields take the
// defaults below; Validate reports every bad field at once.
type Config struct {
	Servers      []ring.Server // the memcached servers that hold cache keys
	Distribution string        // ring.Ketama or ring.Modula
	Hash         string        // a name from ring.Hashes()
	Timeout      time.Duration // longest wait for a memcached server's reply
	MaxItemSize  int           // largest value accepted, in bytes
	ServerConns  int           // pipelined connections to each server
	MaxConns     int           // most client connections at once; 0 is no limit

	// Ejection, as twemproxy's auto_eject_hosts: a cache server whose calls
	// failed FailureLimit times in a row leaves the ring for RetryTimeout,
	// and its keys go to the others meanwhile. Lock servers are never
	// ejected from the lock ring.
	AutoEject    bool
	FailureLimit int           // default 2
	RetryTimeout time.Duration // default 30s

	LockServers  []ring.Server // servers that hold lock state; default Servers
	LockReplicas int           // lock servers each lock lives on, a majority deciding; default 1
	// LockFresh trusts lock servers found without their marker at start
	// (just started for this proxy) instead of waiting LockTTLMax.
	LockFresh bool
	// LockStateFile is where the proxy keeps until when grants on each lock
	// server may still run, so that a restart of every lock server together
	// with every proxy is not taken for new servers; empty: none.
	LockStateFile string
	// Advertise is the address other proxies reach this one at to forward
	// lock commands for the names it is home for; default: the listen
	// address, and for a wildcard the host's address on the route to the
	// lock servers.
	Advertise   string
	LockPrefix  string        // reserved key prefix of lock items
	LockTTL     int           // default grant lifetime, seconds
	LockTTLMax  int           // longest grant lifetime, seconds
	LockWait    time.Duration // default wait
	LockWaitMax time.Duration // longest wait
	LockPoll    time.Duration // longest pause between looks at a lock held elsewhere
	// LockNoEarlyHandoff has every handoff wait for the memcached write
	// naming the new holder, instead of handing the lock to a waiter
	// reserved beforehand (see lockext.Config.EarlyHandoff).
	LockNoEarlyHandoff bool

	Logger *slog.Logger
}

// Defaults.
const (
	DefaultDistribution = ring.Ketama
	DefaultHash         = "md5"
	DefaultTimeout      = time.Second
	DefaultMaxItemSize  = 1 << 20
	DefaultServerConns  = 1 // as twemproxy: one connection batches best; raise it against head-of-line blocking by large values
	DefaultFailureLimit = 2
	DefaultRetryTimeout = 30 * time.Second
	DefaultLockPrefix   = "__memcachedlock:"
	DefaultLockTTL      = 30
	DefaultLockTTLMax   = 300 // also how long a lock server that lost its state takes no writes
	DefaultLockWait     = 30 * time.Second
	DefaultLockWaitMax  = 300 * time.Second
	DefaultLockPoll     = 50 * time.Millisecond
)

func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Distribution == "" {
		c.Distribution = DefaultDistribution
	}
	if c.Hash == "" {
		c.Hash = DefaultHash
	}
	if c.LockPrefix == "" {
		c.LockPrefix = DefaultLockPrefix
	}
	if len(c.LockServers) == 0 {
		c.LockServers = c.Servers
	}
	def(&c.Timeout, DefaultTimeout)
	def(&c.LockWait, DefaultLockWait)
	def(&c.LockWaitMax, DefaultLockWaitMax)
	def(&c.LockPoll, DefaultLockPoll)
	defInt(&c.MaxItemSize, DefaultMaxItemSize)
	defInt(&c.ServerConns, DefaultServerConns)
	defInt(&c.FailureLimit, DefaultFailureLimit)
	def(&c.RetryTimeout, DefaultRetryTimeout)
	defInt(&c.LockTTL, DefaultLockTTL)
	defInt(&c.LockTTLMax, DefaultLockTTLMax)
	defInt(&c.LockReplicas, 1)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate fills in defaults and reports every field that is wrong.
func (c *Config) Validate() error {
	c.setDefaults()
	var errs *multierror.Error
	bad := func(format string, args ...any) { errs = multierror.Append(errs, fmt.Errorf(format, args...)) }
	if len(c.Servers) == 0 {
		bad("no servers")
	}
	if c.Distribution != ring.Ketama && c.Distribution != ring.Modula {
		bad("distribution %q: want %s or %s", c.Distribution, ring.Ketama, ring.Modula)
	}
	if _, err := ring.LookupHash(c.Hash); err != nil {
		bad("hash %q: want one of %v", c.Hash, ring.Hashes())
	}
	if c.Timeout < 0 {
		bad("timeout must be positive")
	}
	if c.MaxItemSize < 1 || c.MaxItemSize > 1<<30 {
		bad("max item size must be 1 byte to 1 GiB")
	}
	if c.ServerConns < 1 || c.ServerConns > 64 {
		bad("server connections must be 1 to 64")
	}
	if c.MaxConns < 0 {
		bad("max connections must not be negative")
	}
	if !validName([]byte(c.LockPrefix)) || len(c.LockPrefix) > 64 {
		bad("lock prefix %q must be a memcached key of at most 64 bytes", c.LockPrefix)
	}
	if c.LockTTLMax < 1 || c.LockTTLMax > lockext.MaxTTL {
		bad("lock ttl max %d must be 1 to %d seconds (15 days): a holder's and its successor's ttl together must fit in memcached's 30 days", c.LockTTLMax, lockext.MaxTTL)
	}
	if c.LockTTL < 1 || c.LockTTL > c.LockTTLMax {
		bad("lock ttl %d must be 1 to lock ttl max (%d)", c.LockTTL, c.LockTTLMax)
	}
	if c.LockWait < 0 || c.LockWait > c.LockWaitMax {
		bad("lock wait %s must be 0 to lock wait max (%s)", c.LockWait, c.LockWaitMax)
	}
	if c.LockReplicas < 1 || c.LockReplicas%2 == 0 || c.LockReplicas > len(c.LockServers) || c.LockReplicas > 7 {
		bad("lock replicas %d must be odd, at most 7 and at most the number of lock servers (%d)", c.LockReplicas, len(c.LockServers))
	}
	if c.LockPoll < time.Millisecond {
		bad("lock poll must be at least 1ms")
	}
	return errs.ErrorOrNil()
}
