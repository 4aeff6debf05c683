package integration

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockLoad is clients that take one lock through proxies that come and
// go, and do a read-modify-write on a fenced register while they hold it.
// It records every grant, and finds overlaps: a LOCKED received while
// another client holds a grant that it has not yet begun to unlock and
// whose ttl, counted from when its lock command was sent, still runs.
type lockLoad struct {
	name string
	ttl  time.Duration
	wait time.Duration

	slotsMu sync.Mutex
	slots   []string // proxy addresses; client i uses slot i%len

	mu       sync.Mutex
	holding  map[int]heldGrant // by client
	grants   []time.Time       // when each LOCKED arrived
	recent   []string          // the last lock replies, for an overlap's report (a ring)
	events   int               // replies noted in recent so far
	overlaps []string
	replies  map[string]int // replies other than LOCKED, by kind
	slowest  string         // the lock command that took longest to answer
	slowTook time.Duration
	faults   []faultEvent

	reg fencedRegister

	stop atomic.Bool
	wg   sync.WaitGroup
}

type heldGrant struct {
	fence     uint64
	sent, got time.Time
}

type faultEvent struct {
	at   time.Time
	what string
}

// fencedRegister is a storage service that checks fences: it takes a
// write only with a fence at least the highest it has seen, and counts
// the writes it refused.
type fencedRegister struct {
	mu            sync.Mutex
	highest       uint64
	value, writes int
	stale         int
}

func (r *fencedRegister) read() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.value
}

func (r *fencedRegister) write(fence uint64, v int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fence < r.highest {
		r.stale++
		return
	}
	r.highest, r.value = fence, v
	r.writes++
}

func newLockLoad(name string, ttl, wait time.Duration, proxies []string) *lockLoad {
	return &lockLoad{name: name, ttl: ttl, wait: wait, slots: append([]string(nil), proxies...),
		holding: make(map[int]heldGrant), replies: make(map[string]int)}
}

func (l *lockLoad) proxy(i int) string {
	l.slotsMu.Lock()
	defer l.slotsMu.Unlock()
	return l.slots[i%len(l.slots)]
}

func (l *lockLoad) setProxy(slot int, addr string) {
	l.slotsMu.Lock()
	defer l.slotsMu.Unlock()
	l.slots[slot] = addr
}

func (l *lockLoad) fault(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.faults = append(l.faults, faultEvent{time.Now(), what})
}

func (l *lockLoad) start(clients int) {
	for i := 0; i < clients; i++ {
		l.wg.Add(1)
		go l.client(i)
	}
}

// finish stops the clients and returns when it asked them to: the end
// of the measured run (a client may still be in a wait after that).
func (l *lockLoad) finish() time.Time {
	end := time.Now()
	l.stop.Store(true)
	l.wg.Wait()
	return end
}

// granted records a LOCKED and checks it against every grant held.
func (l *lockLoad) granted(i int, g heldGrant) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.noteLocked(g.got, fmt.Sprintf("client %d got LOCKED %d through %s (sent at %s)", i, g.fence, l.proxy(i), g.sent.Format(stamp)))
	for j, h := range l.holding {
		if j != i && g.got.Before(h.sent.Add(l.ttl)) {
			l.overlaps = append(l.overlaps, fmt.Sprintf("client %d got fence %d while client %d held fence %d (%s of its ttl left); before it:\n%s",
				i, g.fence, j, h.fence, h.sent.Add(l.ttl).Sub(g.got).Round(time.Millisecond), l.story(g.got)))
		}
	}
	l.holding[i] = g
	l.grants = append(l.grants, g.got)
}

// stamp is how the story of an overlap writes times.
const stamp = "15:04:05.000000"

// recentKept is how many replies an overlap's report shows.
const recentKept = 40

// note records a reply for an overlap's report.
func (l *lockLoad) note(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.noteLocked(time.Now(), what)
}

func (l *lockLoad) noteLocked(at time.Time, what string) {
	line := at.Format(stamp) + " " + what
	if len(l.recent) < recentKept {
		l.recent = append(l.recent, line)
	} else {
		l.recent[l.events%recentKept] = line
	}
	l.events++
}

// story is what led up to an overlap at t: the faults of the last five
// seconds and the last replies, oldest first; l.mu held.
func (l *lockLoad) story(t time.Time) string {
	var b strings.Builder
	for _, f := range l.faults {
		if f.at.After(t.Add(-5 * time.Second)) {
			fmt.Fprintf(&b, "  %s fault: %s\n", f.at.Format(stamp), f.what)
		}
	}
	for k := max(l.events-recentKept, 0); k < l.events; k++ {
		fmt.Fprintf(&b, "  %s\n", l.recent[k%recentKept])
	}
	return b.String()
}

func (l *lockLoad) unlocking(i int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.holding, i)
}

func (l *lockLoad) took(d time.Duration, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d > l.slowTook {
		l.slowTook, l.slowest = d, what
	}
}

func (l *lockLoad) reply(kind string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.replies[kind]++
}

// client locks, does its read-modify-write, and unlocks, until stopped.
// Each lock has an owner of its own, so a reconnect never gets an earlier
// grant back.
func (l *lockLoad) client(i int) {
	defer l.wg.Done()
	var nc net.Conn
	var br *bufio.Reader
	drop := func(kind string) {
		if nc != nil {
			nc.Close()
		}
		nc = nil
		l.reply(kind)
	}
	exchange := func(cmd string, extra time.Duration) (string, error) {
		if nc == nil {
			c, err := net.DialTimeout("tcp", l.proxy(i), time.Second)
			if err != nil {
				return "", err
			}
			nc, br = c, bufio.NewReader(c)
		}
		nc.SetDeadline(time.Now().Add(extra + 5*time.Second)) // bounds a hang only
		if _, err := nc.Write([]byte(cmd + "\r\n")); err != nil {
			return "", err
		}
		line, err := br.ReadString('\n')
		return strings.TrimSuffix(line, "\r\n"), err
	}
	defer func() {
		if nc != nil {
			nc.Close()
		}
	}()
	for n := 0; !l.stop.Load(); n++ {
		sent := time.Now()
		line, err := exchange(fmt.Sprintf("lock %s %d %d c%d.%d", l.name, int(l.ttl.Seconds()), l.wait.Milliseconds(), i, n), l.wait)
		l.took(time.Since(sent), fmt.Sprintf("client %d through proxy %d at %s: %q %v", i, i%len(l.slots), sent.Format("15:04:05.000"), line, err))
		if err != nil {
			l.note(fmt.Sprintf("client %d lock through %s: %v", i, l.proxy(i), err))
			drop("connection lost")
			time.Sleep(20 * time.Millisecond)
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "LOCKED" {
			l.note(fmt.Sprintf("client %d lock through %s: %q", i, l.proxy(i), line))
			kind := line
			if len(f) > 0 && f[0] == "NOT_LOCKED" {
				kind = "NOT_LOCKED"
			} else {
				time.Sleep(10 * time.Millisecond)
			}
			l.reply(kind)
			continue
		}
		fence, _ := strconv.ParseUint(f[1], 10, 64)
		l.granted(i, heldGrant{fence: fence, sent: sent, got: time.Now()})
		v := l.reg.read()
		time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond)
		l.reg.write(fence, v+1)
		l.unlocking(i)
		// An unlock lost with its connection is sent again on a new one,
		// perhaps to another proxy, as a careful client does.
		for try := 0; try < 2; try++ {
			line, err = exchange(fmt.Sprintf("unlock %s %d", l.name, fence), 0)
			l.note(fmt.Sprintf("client %d unlock %d through %s: %q %v", i, fence, l.proxy(i), line, err))
			if err == nil {
				if !strings.HasPrefix(line, "UNLOCKED") {
					l.reply("unlock: " + line)
				}
				break
			}
			drop("connection lost")
		}
	}
}

// gaps returns the grants and the longest time without one, from start
// to end, with the last fault before that gap ended.
type loadReport struct {
	grants, overlaps, stale, writes int
	longest                         time.Duration
	longestAfter                    string
	byFault                         map[string]time.Duration // longest gap ending after each kind of fault
	replies                         map[string]int
	slowest                         string
}

func (l *lockLoad) report(start, end time.Time) loadReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reg.mu.Lock()
	defer l.reg.mu.Unlock()
	r := loadReport{grants: len(l.grants), overlaps: len(l.overlaps), stale: l.reg.stale, writes: l.reg.writes,
		byFault: make(map[string]time.Duration), replies: l.replies,
		slowest: fmt.Sprintf("%s, %s", l.slowTook.Round(time.Millisecond), l.slowest)}
	times := []time.Time{start, end}
	for _, g := range l.grants {
		if g.Before(end) {
			times = append(times, g)
		}
	}
	sort.Slice(times, func(a, b int) bool { return times[a].Before(times[b]) })
	for k := 1; k < len(times); k++ {
		gap := times[k].Sub(times[k-1])
		cause := "none"
		for _, f := range l.faults {
			if !f.at.After(times[k]) {
				cause = f.what
			}
		}
		if gap > r.longest {
			r.longest, r.longestAfter = gap, cause
		}
		kind := strings.Fields(cause)[0]
		r.byFault[kind] = max(r.byFault[kind], gap)
	}
	return r
}

func (r loadReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d grants, %d overlaps, %d stale writes refused (%d accepted), longest gap without a grant %s (after fault %q)\n",
		r.grants, r.overlaps, r.stale, r.writes, r.longest.Round(time.Millisecond), r.longestAfter)
	kinds := make([]string, 0, len(r.byFault))
	for k := range r.byFault {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "  longest gap after %-14s %s\n", k+":", r.byFault[k].Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  other replies: %v\n", r.replies)
	fmt.Fprintf(&b, "  slowest lock command: %s", r.slowest)
	return b.String()
}

// check fails the test on overlaps and stale writes, and logs the report.
func (l *lockLoad) check(t *testing.T, start, end time.Time) loadReport {
	t.Helper()
	r := l.report(start, end)
	t.Log(r)
	l.mu.Lock()
	for _, o := range l.overlaps {
		t.Error("overlap: " + o)
	}
	l.mu.Unlock()
	if r.stale > 0 {
		t.Errorf("%d stale writes reached the fenced register", r.stale)
	}
	if r.grants == 0 {
		t.Error("no grant at all")
	}
	return r
}

// soakFor returns how long a randomised run lasts: normal, or as long as
// MEMCACHEDLOCK_SOAK says (a duration such as 10m; any other value: 5m).
func soakFor(normal time.Duration) time.Duration {
	v := os.Getenv("MEMCACHEDLOCK_SOAK")
	if v == "" {
		return normal
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d
	}
	return 5 * time.Minute
}
