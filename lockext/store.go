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

// record is the lock item's value: "<fence> <mode> <count> <kind> <owner>".
type record struct {
	fence uint64
	mode  byte
	count int
	kind  byte
	owner string
}

func (r record) encode() []byte {
	b := make([]byte, 0, 32+len(r.owner))
	b = strconv.AppendUint(b, r.fence, 10)
	b = append(b, ' ', r.mode, ' ')
	b = strconv.AppendInt(b, int64(r.count), 10)
	b = append(b, ' ', r.kind, ' ')
	return append(b, r.owner...)
}

func decodeRecord(b []byte) (record, error) {
	f := strings.SplitN(string(b), " ", 5)
	if len(f) != 5 || len(f[1]) != 1 || len(f[3]) != 1 {
		return record{}, fmt.Errorf("%w: lock item %q is not ours", ErrUnavailable, b)
	}
	fence, err1 := strconv.ParseUint(f[0], 10, 64)
	count, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || count < 1 {
		return record{}, fmt.Errorf("%w: lock item %q is not ours", ErrUnavailable, b)
	}
	return record{fence: fence, mode: f[1][0], count: count, kind: f[3][0], owner: f[4]}, nil
}

// sameHolder reports whether r was granted to the requester of q.
func (r record) sameHolder(q *Request) bool { return r.kind == q.kind && r.owner == q.owner }
