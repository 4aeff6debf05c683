package proxy

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// lockStore keeps lock state in memcached with meta commands, on the lock
// server the lock ring picks for the lock name. It never falls back to
// another server: two servers each holding a grant is what must not happen.
type lockStore struct {
	s *Server
}

func (ls *lockStore) do(k lockext.Key, shape replyShape, out []byte) ([]byte, error) {
	s := ls.s
	b := s.lockers[s.lockRing.Pick([]byte(k.Name))]
	c := newCall(shape, s.cfg.Timeout)
	c.out = append(c.out, out...)
	b.do(0, c)
	reply, err := append([]byte(nil), c.reply...), c.err
	c.release()
	if err != nil {
		return nil, err
	}
	return reply, nil
}

func (ls *lockStore) Get(ctx context.Context, k lockext.Key) (lockext.Item, error) {
	reply, err := ls.do(k, shapeSingle, fmt.Appendf(nil, "mg %s v c t\r\n", k.Item))
	if err != nil {
		return lockext.Item{}, err
	}
	line, data, _ := cutLine(reply)
	if string(line) == "EN" {
		return lockext.Item{}, lockext.ErrStoreMiss
	}
	f := tokenize(line, nil)
	if len(f) < 2 || string(f[0]) != "VA" {
		return lockext.Item{}, fmt.Errorf("mg: %q", line)
	}
	it := lockext.Item{Value: data[:max(len(data)-2, 0)], TTL: -1}
	for _, flag := range f[2:] {
		switch flag[0] {
		case 'c':
			it.CAS, _ = strconv.ParseUint(string(flag[1:]), 10, 64)
		case 't':
			it.TTL, _ = strconv.Atoi(string(flag[1:]))
		}
	}
	return it, nil
}

// errLockRecovering: the lock's server lost its items not long ago, and a
// grant made before then may still be believed in.
var errLockRecovering = errors.New("lock server recovering")

func (ls *lockStore) Add(ctx context.Context, k lockext.Key, value []byte, ttl int) (uint64, error) {
	b := ls.s.lockers[ls.s.lockRing.Pick([]byte(k.Name))]
	if b.lost.recovering() {
		return 0, errLockRecovering
	}
	cas, err := ls.set(k, value, fmt.Sprintf("T%d ME c", ttl))
	// The add may have waited for a reconnection that found the server
	// restarted; recovery is marked before a new connection carries
	// anything, so looking again after the reply is what decides.
	if err == nil && b.lost.recovering() {
		ls.CompareAndDelete(ctx, k, cas)
		return 0, errLockRecovering
	}
	return cas, err
}

func (ls *lockStore) CompareAndSwap(ctx context.Context, k lockext.Key, value []byte, ttl int, cas uint64) (uint64, error) {
	return ls.set(k, value, fmt.Sprintf("T%d C%d c", ttl, cas))
}

func (ls *lockStore) set(k lockext.Key, value []byte, flags string) (uint64, error) {
	out := fmt.Appendf(nil, "ms %s %d %s\r\n%s\r\n", k.Item, len(value), flags, value)
	reply, err := ls.do(k, shapeSingle, out)
	if err != nil {
		return 0, err
	}
	line, _, _ := cutLine(reply)
	f := tokenize(line, nil)
	switch {
	case len(f) >= 2 && string(f[0]) == "HD" && f[1][0] == 'c':
		return strconv.ParseUint(string(f[1][1:]), 10, 64)
	case len(f) >= 1 && (string(f[0]) == "NS" || string(f[0]) == "EX"):
		return 0, lockext.ErrStoreExists
	case len(f) >= 1 && string(f[0]) == "NF":
		return 0, lockext.ErrStoreMiss
	}
	return 0, fmt.Errorf("ms: %q", line)
}

func (ls *lockStore) CompareAndDelete(ctx context.Context, k lockext.Key, cas uint64) error {
	reply, err := ls.do(k, shapeSingle, fmt.Appendf(nil, "md %s C%d\r\n", k.Item, cas))
	if err != nil {
		return err
	}
	line, _, _ := cutLine(reply)
	switch string(line) {
	case "HD":
		return nil
	case "EX":
		return lockext.ErrStoreExists
	case "NF":
		return lockext.ErrStoreMiss
	}
	return fmt.Errorf("md: %q", line)
}

// cutLine splits a reply into its first line (without CRLF) and the rest.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' {
			return b[:i], b[i+2:], true
		}
	}
	return b, nil, false
}
