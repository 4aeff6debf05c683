// Package lockclient is a Go client for memcachedlock's lock commands:
// dial a proxy, take a lock (the wait happens in the proxy), keep a lease
// alive while work runs, release it.
//
// A Client is one connection and sends one command at a time; a lock
// taken without an Owner belongs to that connection and is released by
// the proxy when the connection closes. Use one Client per goroutine that
// waits for locks.
package lockclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Errors; compare with errors.Is.
var (
	ErrNotLocked = errors.New("lockclient: not locked within the wait")
	ErrNotFound  = errors.New("lockclient: no such grant")
	ErrNotOwner  = errors.New("lockclient: not the current grant")
	ErrServer    = errors.New("lockclient: server error")
)

// NotLockedError says how long the holder still has; it matches ErrNotLocked.
type NotLockedError struct{ HolderTTL time.Duration }

func (e *NotLockedError) Error() string {
	return fmt.Sprintf("lockclient: not locked within the wait (holder has %s left)", e.HolderTTL)
}
func (e *NotLockedError) Is(target error) bool { return target == ErrNotLocked }

// Options for Lock. The zero value takes a connection-owned lock with the
// proxy's default ttl and wait. The lock command's arguments are
// positional, so once a later one is given (a wait, TryOnce, an owner) a
// zero TTL is sent as 30 s, and a zero Wait as ctx's deadline or else 30 s.
type Options struct {
	TTL       time.Duration // lifetime, whole seconds; 0: see above
	Wait      time.Duration // 0: until ctx's deadline; see above
	TryOnce   bool          // do not wait at all
	Owner     string        // a lease owner, such as host:pid:thread; empty ties the lock to this connection
	Reentrant bool          // rlock: the same owner may nest; needs Owner
}

// Grant is a lock held.
type Grant struct {
	Key   string
	Fence uint64        // grows with every new grant of Key: pass it to what the lock protects
	TTL   time.Duration // lifetime left when granted
	Count int           // reentrancy depth
}

// Info is the current holder of a lock, as lockinfo reports it.
type Info struct {
	Fence   uint64
	TTL     time.Duration
	Count   int
	Owner   string
	Waiters int
}

// Client is one connection to a memcachedlock proxy.
type Client struct {
	addr    string
	timeout time.Duration

	mu   sync.Mutex
	conn net.Conn
	br   *bufio.Reader
}

// Dial connects to a proxy.
func Dial(ctx context.Context, addr string) (*Client, error) {
	c := &Client{addr: addr, timeout: 5 * time.Second}
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) connect(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrServer, err)
	}
	c.conn, c.br = conn, bufio.NewReader(conn)
	return nil
}

// Close closes the connection, which releases its connection-owned locks.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

// roundTrip sends one line and reads one reply line. If ctx ends first the
// connection is closed (the proxy then drops the wait) and reopened on the
// next call.
func (c *Client) roundTrip(ctx context.Context, line string, wait time.Duration) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		if err := c.connect(ctx); err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(wait + c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	reply, err := c.exchange(line)
	if err != nil {
		c.conn.Close()
		c.conn = nil
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %v", ErrServer, err)
	}
	f := strings.Fields(reply)
	if len(f) == 0 {
		return nil, fmt.Errorf("%w: empty reply", ErrServer)
	}
	switch f[0] {
	case "NOT_FOUND":
		return nil, ErrNotFound
	case "NOT_OWNER":
		return nil, ErrNotOwner
	case "NOT_LOCKED":
		ttl := -1
		if len(f) > 1 {
			ttl, _ = strconv.Atoi(f[1])
		}
		return nil, &NotLockedError{HolderTTL: time.Duration(ttl) * time.Second}
	case "ERROR", "CLIENT_ERROR", "SERVER_ERROR":
		return nil, fmt.Errorf("%w: %s", ErrServer, reply)
	}
	return f, nil
}

func (c *Client) exchange(line string) (string, error) {
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		return "", err
	}
	reply, err := c.br.ReadString('\n')
	return strings.TrimRight(reply, "\r\n"), err
}

// Lock takes the lock on key, waiting in the proxy as opts say.
func (c *Client) Lock(ctx context.Context, key string, opts Options) (Grant, error) {
	if strings.ContainsAny(key, " \r\n") || key == "" {
		return Grant{}, fmt.Errorf("lockclient: bad key %q", key)
	}
	wait := opts.Wait
	if wait == 0 {
		if d, ok := ctx.Deadline(); ok {
			wait = max(time.Until(d), 0)
		}
	}
	verb := "lock"
	if opts.Reentrant {
		verb = "rlock"
		if opts.Owner == "" {
			return Grant{}, errors.New("lockclient: a reentrant lock needs an Owner")
		}
	}
	// Arguments are positional: where a later argument must be given, a
	// zero ttl or wait is sent as 30 s, the proxy's built-in defaults
	// (which --lock-ttl and --lock-wait may have changed).
	ttl := int(opts.TTL / time.Second)
	args := []string{}
	if ttl > 0 || wait > 0 || opts.TryOnce || opts.Owner != "" || opts.Reentrant {
		if ttl <= 0 {
			ttl = 30
		}
		args = append(args, strconv.Itoa(ttl))
	}
	if wait > 0 || opts.TryOnce || opts.Owner != "" || opts.Reentrant {
		ms := wait.Milliseconds()
		if opts.TryOnce {
			ms = 0
		} else if wait == 0 {
			ms = 30000
		}
		args = append(args, strconv.FormatInt(ms, 10))
	}
	if opts.Owner != "" {
		args = append(args, opts.Owner)
	}
	line := strings.Join(append([]string{verb, key}, args...), " ")
	proxyWait := wait
	if proxyWait == 0 {
		proxyWait = 5 * time.Minute // the proxy's wait ends it; ours only guards a hang
	}
	f, err := c.roundTrip(ctx, line, proxyWait)
	if err != nil {
		return Grant{}, err
	}
	if f[0] != "LOCKED" || len(f) != 4 {
		return Grant{}, fmt.Errorf("%w: unexpected reply %q", ErrServer, strings.Join(f, " "))
	}
	fence, _ := strconv.ParseUint(f[1], 10, 64)
	secs, _ := strconv.Atoi(f[2])
	count, _ := strconv.Atoi(f[3])
	return Grant{Key: key, Fence: fence, TTL: time.Duration(secs) * time.Second, Count: count}, nil
}

// Unlock releases one level of g and returns the levels left.
func (c *Client) Unlock(ctx context.Context, g Grant) (int, error) {
	f, err := c.roundTrip(ctx, fmt.Sprintf("unlock %s %d", g.Key, g.Fence), 0)
	if err != nil {
		return 0, err
	}
	if f[0] != "UNLOCKED" || len(f) != 2 {
		return 0, fmt.Errorf("%w: unexpected reply %q", ErrServer, strings.Join(f, " "))
	}
	return strconv.Atoi(f[1])
}

// Extend sets g's remaining lifetime (whole seconds, at least one).
func (c *Client) Extend(ctx context.Context, g Grant, ttl time.Duration) error {
	secs := max(int(ttl/time.Second), 1)
	f, err := c.roundTrip(ctx, fmt.Sprintf("extend %s %d %d", g.Key, g.Fence, secs), 0)
	if err != nil {
		return err
	}
	if f[0] != "EXTENDED" {
		return fmt.Errorf("%w: unexpected reply %q", ErrServer, strings.Join(f, " "))
	}
	return nil
}

// Info reports the current holder of key.
func (c *Client) Info(ctx context.Context, key string) (Info, error) {
	f, err := c.roundTrip(ctx, "lockinfo "+key, 0)
	if err != nil {
		return Info{}, err
	}
	if f[0] != "LOCK" || len(f) != 6 {
		return Info{}, fmt.Errorf("%w: unexpected reply %q", ErrServer, strings.Join(f, " "))
	}
	var in Info
	in.Fence, _ = strconv.ParseUint(f[1], 10, 64)
	secs, _ := strconv.Atoi(f[2])
	in.TTL = time.Duration(secs) * time.Second
	in.Count, _ = strconv.Atoi(f[3])
	in.Owner = f[4]
	in.Waiters, _ = strconv.Atoi(f[5])
	return in, nil
}
