// Package lockext implements distributed locks whose state lives in
// memcached, with blocking, first-come-first-served waits.
//
// The truth is always the item in memcached: a grant is made only by an
// atomic add of the lock item, or by a compare-and-swap from a value this
// process knows to be the current one (a refresh by the same owner, or a
// handoff from a releasing holder to the next local waiter). A release is a
// compare-and-delete. So any number of processes in front of the same
// memcached servers agree, and none can release somebody else's grant.
//
// Within one process, waiters for a key queue in arrival order. Only the head
// of the queue talks to memcached while somebody else holds the key; the
// others sleep until they become the head. A release by a local holder hands
// the lock to the head directly, without a gap another process could use.
package lockext
