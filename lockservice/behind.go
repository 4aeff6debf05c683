package lockservice

import (
	"bytes"
	"sync"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// A replica that fell behind holds a copy of a lock item that a change
// does not find there: a grant whose end it missed, a losing contender's
// add not yet undone, or an add still on its way. Left alone, it stays out
// of every change until its copy expires, and one more lock server out
// then stalls the name; written over too eagerly, it grants twice. This
// file is the rule between the two (see ARCHITECTURE.md, Replicas that
// fall behind).

// mayReplace reports whether a change of prev may write over (or delete)
// the copy held, at cas, by replica i, and count that replica as holding
// prev. It may when the copy is prev's value at prev's change or an
// earlier one (a replica behind, never one ahead), or a grant older than
// prev (a lower fence) that can no longer be in force:
//
//   - one that prev's own chain of writes replaced on a majority, named by
//     its cas (version.supersedes): changed, released or handed on by a
//     write that won, it is gone for good; or
//   - one that has stood on the replica, unchanged, for longer than a
//     write's vote window since this process first saw it there.
//
// The wait is for an add still on its way. Its fence may be
// older than prev's (taken from a clock before a grant that has come and
// gone since), and its writer counts every replica that took it: written
// over on one of them while it waits for another, it would be granted on
// fewer replicas than it counted, and a second grant could be made on the
// others while it runs. But a writer counts only the answers that come
// within its vote window (see voteWindow), and the add was on the replica
// when this process first saw it, so by a window after that its writer
// has decided. Then it lost, or it won and is a grant like any other: on
// a majority while it runs, which a change of prev, on a majority too,
// cannot meet. (A change from a version whose grant ended elsewhere
// meanwhile can; see ARCHITECTURE.md for that gap.)
//
// Anything else (a newer grant, another state of the same grant) is left
// to its writer. Only the copy's change number may be unknown: a copy
// numbered where prev has none (a grant an older proxy wrote) was written
// by a newer proxy, maybe after prev was read (a state that is gone),
// maybe before an older proxy's write that missed this replica (then it
// is behind, and stays out until the next grant: a cost of mixed
// versions, not a risk).
func mayReplace(r *replica, item string, i int, held state, cas uint64, prev *version) bool {
	switch {
	case bytes.Equal(held.value, prev.value):
		return held.change == 0 || prev.change != 0 && held.change <= prev.change
	case !olderGrant(held.value, prev.value):
		return false
	case prev.supersedes(i, cas):
		return true
	}
	return r.seen.standing(item, cas, voteWindow(r))
}

// olderGrant reports whether held names a grant older (a lower fence)
// than value.
func olderGrant(held, value []byte) bool {
	h, ok1 := lockext.Fence(held)
	v, ok2 := lockext.Fence(value)
	return ok1 && ok2 && h < v
}

// sightings remembers, for each lock item, the copy of it one lock server
// was seen holding when a change or a read found it behind (by its cas),
// and when this process first saw it.
type sightings struct {
	mu   sync.Mutex
	seen map[string]sighting
}

type sighting struct {
	cas uint64
	at  time.Time
}

// maxSightings bounds the memory: past it, the sightings start afresh,
// which only delays catch-ups.
const maxSightings = 4096

// standing reports whether the copy of item at cas was first seen longer
// than d ago, and notes it when it is seen for the first time.
func (s *sightings) standing(item string, cas uint64, d time.Duration) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if x, ok := s.seen[item]; ok && x.cas == cas {
		return now.Sub(x.at) > d
	}
	if s.seen == nil || len(s.seen) >= maxSightings {
		s.seen = make(map[string]sighting)
	}
	s.seen[item] = sighting{cas, now}
	return false
}

// forget drops every sighting: the server lost its items, and a restarted
// one counts cas values from the start again, so an old sighting could
// name a new copy.
func (s *sightings) forget() {
	s.mu.Lock()
	s.seen = nil
	s.mu.Unlock()
}
