package lockext

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Key names one lock: Name is the lock name the client gave, and picks the
// server; Item is the memcached key that holds the lock's state.
type Key struct {
	Name string
	Item string
}

// Version names one written state of a lock item. The Store makes it (a
// memcached cas, or one per replica) and the Manager only hands it back;
// nil means "not known".
type Version any

// Item is a lock item as the store read it.
type Item struct {
	Value   []byte
	Version Version
	TTL     int // the grant's remaining seconds; -1 when it does not expire
	// Disputed is set when the store's servers disagree and Value is the
	// likeliest grant of those they hold: the lock is not free, but Value
	// may be a write that no majority took (an add that lost, not yet
	// undone), never granted.
	Disputed bool
}

// Store is the memcached server that holds a lock's state. Implementations
// route by Key.Name and store under Key.Item. They report the expected
// outcomes as ErrStoreMiss and ErrStoreExists, and anything else (the server
// is down, slow, or answered nonsense) as some other error.
type Store interface {
	Get(ctx context.Context, k Key) (Item, error)
	// Add stores the item only if absent and returns its version. The item
	// must live at least ttl seconds.
	Add(ctx context.Context, k Key, value []byte, ttl int) (Version, error)
	// CompareAndSwap replaces the item if it is still at version v.
	CompareAndSwap(ctx context.Context, k Key, value []byte, ttl int, v Version) (Version, error)
	// CompareAndDelete deletes the item if it is still at version v.
	CompareAndDelete(ctx context.Context, k Key, v Version) error
}

// Keeper is a Store that can say whether a version it wrote or read is
// surely still there: none of its servers that hold it has restarted,
// been flushed or evicted anything since. A Manager hands a lock to a
// reserved successor before writing only when it is; a Store that is not
// a Keeper never loses what it holds.
type Keeper interface {
	Kept(k Key, v Version) bool
}

// itemKey builds the memcached key for a lock name. Names too long to fit
// beside the prefix are stored under a digest of the name.
func itemKey(prefix, name string) string {
	if len(prefix)+len(name) <= 250 {
		return prefix + name
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + "sha256:" + hex.EncodeToString(sum[:])
}

const (
	modeExclusive = 'x'
	modeReentrant = 'r'
	kindOwner     = 'o' // a lease held by a client-chosen owner
	kindConn      = 'c' // held by one connection, released when it closes
)

// Fence reads the fence a lock item's value begins with. Fences grow with
// every grant, so a store with replicas can tell a stale copy (a lower
// fence than the value it expects) from a newer one.
func Fence(value []byte) (uint64, bool) {
	n := 0
	for n < len(value) && value[n] >= '0' && value[n] <= '9' {
		n++
	}
	f, err := strconv.ParseUint(string(value[:n]), 10, 64)
	return f, err == nil
}

// record is the lock item's value: "<fence> <mode> <count> <kind> <owner>",
// and, when a waiter is reserved to hold the lock next, a second line
// "<fence> <mode> <kind> <ttl> <by> <owner>" naming it (see successor).
type record struct {
	fence uint64
	mode  byte
	count int
	kind  byte
	owner string
	next  *successor
}

// successor is the waiter a record names to hold the lock once its grant
// ends. A process writes it while the grant still runs, for the head of
// its queue, so that an unlock can hand over at once and have memcached
// catch up after: the item is written to live for the holder's seconds
// plus the successor's ttl, which covers a grant made before the write
// that confirms it. Whoever releases the grant must therefore hand the
// lock to the successor, never simply free it, unless it is the process
// that reserved the successor (by) and knows that waiter has gone.
type successor struct {
	fence uint64
	mode  byte
	kind  byte
	ttl   int
	by    string // the Manager's Instance that reserved it
	owner string
}

// holder is the grant the successor holds once it has the lock.
func (s *successor) holder() record {
	return record{fence: s.fence, mode: s.mode, count: 1, kind: s.kind, owner: s.owner}
}

func (r record) encode() []byte {
	b := make([]byte, 0, 32+len(r.owner))
	b = strconv.AppendUint(b, r.fence, 10)
	b = append(b, ' ', r.mode, ' ')
	b = strconv.AppendInt(b, int64(r.count), 10)
	b = append(b, ' ', r.kind, ' ')
	b = append(b, r.owner...)
	if n := r.next; n != nil {
		b = strconv.AppendUint(append(b, '\n'), n.fence, 10)
		b = append(b, ' ', n.mode, ' ', n.kind, ' ')
		b = strconv.AppendInt(b, int64(n.ttl), 10)
		b = append(append(append(append(b, ' '), n.by...), ' '), n.owner...)
	}
	return b
}

func decodeRecord(b []byte) (record, error) {
	bad := fmt.Errorf("%w: lock item %q is not ours", ErrUnavailable, b)
	line, rest, reserved := strings.Cut(string(b), "\n")
	f := strings.SplitN(line, " ", 5)
	if len(f) != 5 || len(f[1]) != 1 || len(f[3]) != 1 {
		return record{}, bad
	}
	fence, err1 := strconv.ParseUint(f[0], 10, 64)
	count, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || count < 1 {
		return record{}, bad
	}
	r := record{fence: fence, mode: f[1][0], count: count, kind: f[3][0], owner: f[4]}
	if reserved {
		n := strings.SplitN(rest, " ", 6)
		if len(n) != 6 || len(n[1]) != 1 || len(n[2]) != 1 || n[4] == "" {
			return record{}, bad
		}
		fence, err1 := strconv.ParseUint(n[0], 10, 64)
		ttl, err2 := strconv.Atoi(n[3])
		if err1 != nil || err2 != nil || ttl < 1 || fence <= r.fence {
			return record{}, bad
		}
		r.next = &successor{fence: fence, mode: n[1][0], kind: n[2][0], ttl: ttl, by: n[4], owner: n[5]}
	}
	return r, nil
}

// inForce is the grant in force when the item has ttl seconds left (-1:
// unknown), and that grant's seconds. With a successor, the item's ttl is
// the holder's seconds plus the successor's ttl; the holder's time is
// surely up only once fewer than the successor's ttl are left, since
// memcached counts whole seconds.
func (r record) inForce(ttl int) (record, int) {
	switch {
	case r.next == nil:
		return r, ttl
	case ttl < 0:
		return r, -1
	case ttl < r.next.ttl:
		return r.next.holder(), ttl
	}
	return r, ttl - r.next.ttl
}

// MaxTTL is the longest grant, in seconds, whose lock item memcached can
// keep: a record that names a successor lives for the holder's seconds
// plus the successor's (and the store may add one for memcached's clock),
// and memcached takes an expiry beyond 30 days for a date, long past.
const MaxTTL = (30*24*3600 - 2) / 2

// itemTTL is how long the item must live for its holder to keep holdTTL
// seconds: longer by the successor's ttl when one is reserved.
func (r record) itemTTL(holdTTL int) int {
	if r.next != nil {
		return holdTTL + r.next.ttl
	}
	return holdTTL
}

// sameHolder reports whether r was granted to the requester of q.
func (r record) sameHolder(q *Request) bool { return r.kind == q.kind && r.owner == q.owner }

// is reports whether s names the requester of q.
func (s *successor) is(q *Request) bool { return s.kind == q.kind && s.owner == q.owner }
