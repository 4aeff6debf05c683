package lockservice

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A proxy's registration lives this long unless renewed; proxies renew
// theirs every second, so a dead proxy stops being anyone's home within a
// few seconds.
const (
	memberLease  = 5 * time.Second
	memberRenew  = time.Second
	registryLife = 60 // seconds the registry item outlives its last write
)

// member is one proxy that serves as home for some lock names.
type member struct {
	instance string
	addr     string // where other proxies reach it: its client port
	token    string // proves a peer connection comes from a proxy
	expires  int64  // unix milliseconds
}

// members is the registry of proxies kept in memcached, as this proxy last
// read it, and this proxy's own entry.
type members struct {
	key  string // registry item: beside the marker, out of every lock name's reach
	self member

	// writing is held through each renewal of the registry, one after
	// another: a renewal reads this proxy's entry as it starts, and one
	// that started before advertise (or before a leave) would, ending
	// after the renewal that followed it, write the old entry back and set
	// the old view: a proxy just started would count itself out of the
	// homes for a second, and write itself out of the registry.
	writing sync.Mutex

	mu   sync.Mutex
	live []member // sorted by instance
}

func newMembers(prefix, instance, layout string) *members {
	var b [16]byte
	rand.Read(b[:])
	// \x01 is no printable byte, so no lock name maps to this key; and it
	// begins with the lock prefix, so no client can read the tokens in it.
	// Proxies configured with other lock servers keep another registry.
	return &members{key: prefix + "\x01members:" + layout, self: member{instance: instance, token: hex.EncodeToString(b[:])}}
}

// advertise sets the address other proxies reach this one at; empty keeps
// this proxy out of the registry (it still forwards to the others).
func (ms *members) advertise(addr string) {
	ms.mu.Lock()
	ms.self.addr = addr
	ms.mu.Unlock()
}

func (ms *members) me() member {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.self
}

// home returns the member that is home for name, by rendezvous hashing, so
// that a proxy joining or leaving moves only its own share of names.
func (ms *members) home(name string) (member, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var best member
	var bestScore uint64
	found := false
	for _, m := range ms.live {
		h := fnv.New64a()
		h.Write([]byte(m.instance))
		h.Write([]byte{0})
		h.Write([]byte(name))
		if s := h.Sum64(); !found || s > bestScore {
			best, bestScore, found = m, s, true
		}
	}
	return best, found
}

func (ms *members) list() []member {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return slices.Clone(ms.live)
}

func encodeMembers(list []member) []byte {
	var b strings.Builder
	for _, m := range list {
		fmt.Fprintf(&b, "%s %s %s %d\n", m.instance, m.addr, m.token, m.expires)
	}
	return []byte(b.String())
}

func decodeMembers(v []byte) []member {
	var out []member
	for _, line := range strings.Split(string(v), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		exp, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, member{instance: f[0], addr: f[1], token: f[2], expires: exp})
	}
	return out
}

// renew writes this proxy's entry into the registry on one lock server and
// returns the live entries found there. The registry is a hint like every
// message between proxies: losing it (a flush) costs a second of polling.
func (ms *members) renew(ctx context.Context, conn Conn) ([]member, error) {
	self := ms.me()
	for tries := 0; tries < 4; tries++ {
		reply, err := conn.Exchange(ctx, []byte("mg "+ms.key+" v c\r\n"), nil)
		if err != nil {
			return nil, err
		}
		rs := replies{reply}
		m, err := rs.meta()
		if err != nil {
			return nil, err
		}
		now := time.Now().UnixMilli()
		var list []member
		listed := false // this proxy has an entry there
		if m.status == "VA" {
			for _, e := range decodeMembers(m.value) {
				switch {
				case e.instance == self.instance:
					listed = true
				case e.expires > now:
					list = append(list, e)
				}
			}
		}
		if self.addr == "" && !listed {
			return list, nil // not a home: nothing to write
		}
		if self.addr != "" {
			self.expires = now + memberLease.Milliseconds()
			list = append(list, self)
		} // else a home leaving: its entry is written out
		value := encodeMembers(list)
		mode := "ME"
		if m.status == "VA" {
			cas, _ := m.flag('c')
			mode = "C" + strconv.FormatInt(cas, 10)
		}
		reply, err = conn.Exchange(ctx, fmt.Appendf(nil, "ms %s %d T%d %s\r\n%s\r\n", ms.key, len(value), registryLife, mode, value), nil)
		if err != nil {
			return nil, err
		}
		rs = replies{reply}
		if m, err = rs.meta(); err != nil {
			return nil, err
		}
		if m.status == "HD" {
			return list, nil
		}
	}
	return nil, fmt.Errorf("lockservice: registry contended")
}

func byInstance(a, b member) int { return strings.Compare(a.instance, b.instance) }

// leave writes this proxy's entry out of the registry on every lock
// server, once it advertises no address. Its own view is kept, itself in
// it: the names it is home for are still served here, where their state
// is, while its connections finish.
func (ms *members) leave(ctx context.Context, conns []Conn) {
	ms.writing.Lock()
	defer ms.writing.Unlock()
	ms.renewAll(ctx, conns)
}

// renewal is one lock server's answer to renew.
type renewal struct {
	live []member
	err  error
}

// renewAll renews the registration on every lock server at once, so that
// one paused or slow costs the others nothing.
func (ms *members) renewAll(ctx context.Context, conns []Conn) []renewal {
	out := make([]renewal, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].live, out[i].err = ms.renew(ctx, c)
		}()
	}
	wg.Wait()
	return out
}

// refresh renews the registration on every lock server and takes the
// union of what they hold as the live members; false when none answered
// (the view is then the last one read).
//
// A proxy that advertises an address is one of the homes in its own view,
// whether or not its renewal reached a lock server (all down, or the
// registry contended): else it would forward its own names, for a second
// or until the lock servers answer again.
func (ms *members) refresh(ctx context.Context, conns []Conn) bool {
	ms.writing.Lock()
	defer ms.writing.Unlock()
	me := ms.me()
	me.expires = time.Now().Add(memberLease).UnixMilli()
	seen := make(map[string]member)
	ok := false
	for _, r := range ms.renewAll(ctx, conns) {
		if r.err != nil {
			continue
		}
		ok = true
		for _, m := range r.live {
			if old, dup := seen[m.instance]; !dup || m.expires > old.expires {
				seen[m.instance] = m
			}
		}
	}
	if !ok { // keep the last view rather than forget everybody
		ms.mu.Lock()
		if me.addr != "" && !slices.ContainsFunc(ms.live, func(m member) bool { return m.instance == me.instance }) {
			ms.live = append(slices.Clone(ms.live), me)
			slices.SortFunc(ms.live, byInstance)
		}
		ms.mu.Unlock()
		return false
	}
	if me.addr != "" {
		seen[me.instance] = me
	}
	// Only one process listens at an address: of two entries there (a
	// proxy replaced in place, the old one's entry not yet expired) the
	// one renewed last is it. The other must be nobody's home: asking it
	// would replace the link to the live one (peers.link), breaking the
	// requests waiting on it, and fail.
	byAddr := make(map[string]member, len(seen))
	for _, m := range seen {
		if o, dup := byAddr[m.addr]; !dup || m.expires > o.expires || m.expires == o.expires && m.instance > o.instance {
			byAddr[m.addr] = m
		}
	}
	live := make([]member, 0, len(byAddr))
	for _, m := range byAddr {
		live = append(live, m)
	}
	slices.SortFunc(live, byInstance)
	ms.mu.Lock()
	ms.live = live
	ms.mu.Unlock()
	return true
}
