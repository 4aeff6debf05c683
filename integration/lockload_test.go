package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
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

	mu        sync.Mutex
	holding   map[int]heldGrant // by client
	grants    []time.Time       // when each LOCKED arrived
	lastGrant time.Time         // the latest of them
	log       []logLine         // the latest replies and proxy log lines (a ring), for the stories below
	logged    int               // lines noted in log so far
	overlaps  []string
	stalls    []string       // the first few gaps of over a second without a grant, each with its story
	replies   map[string]int // replies other than LOCKED, by kind
	slowest   string         // the lock command that took longest to answer
	slowTook  time.Duration
	faults    []faultEvent

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

type logLine struct {
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

// logger is a proxy's logger: what it logs goes to the stories,
// errors to stderr too.
func (l *lockLoad) logger(proxy string) *slog.Logger {
	return slog.New(slog.NewTextHandler(proxyLog{l, proxy}, &slog.HandlerOptions{Level: slog.LevelInfo,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // the story has its own times
			}
			return a
		}}))
}

type proxyLog struct {
	l     *lockLoad
	proxy string
}

func (p proxyLog) Write(b []byte) (int, error) {
	p.l.note("proxy " + p.proxy + ": " + strings.TrimSpace(string(b)))
	if bytes.Contains(b, []byte("level=ERROR")) {
		os.Stderr.Write(b)
	}
	return len(b), nil
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

// granted records a LOCKED and checks it against every grant held. A
// grant that ends a gap of over a second keeps the story of that gap.
func (l *lockLoad) granted(i int, g heldGrant) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.noteLocked(g.got, fmt.Sprintf("client %d got LOCKED %d through %s (sent at %s)", i, g.fence, l.proxy(i), g.sent.Format(stamp)))
	for j, h := range l.holding {
		if j != i && g.got.Before(h.sent.Add(l.ttl)) {
			l.overlaps = append(l.overlaps, fmt.Sprintf("client %d got fence %d while client %d held fence %d (%s of its ttl left); before it:\n%s",
				i, g.fence, j, h.fence, h.sent.Add(l.ttl).Sub(g.got).Round(time.Millisecond), l.story(g.got, g.got, recentKept)))
		}
	}
	if gap := g.got.Sub(l.lastGrant); !l.lastGrant.IsZero() && gap > time.Second && len(l.stalls) < stallsKept {
		l.stalls = append(l.stalls, fmt.Sprintf("%s without a grant, from %s:\n%s",
			gap.Round(time.Millisecond), l.lastGrant.Format(stamp), l.story(l.lastGrant, g.got, recentKept)))
	}
	l.holding[i] = g
	l.grants = append(l.grants, g.got)
	if g.got.After(l.lastGrant) {
		l.lastGrant = g.got
	}
}

// stamp is how stories write times.
const stamp = "15:04:05.000000"

// recentKept is how many lines a story shows from before its start.
const recentKept = 40

// logKept bounds the log: some seconds of a busy run.
const logKept = 1 << 14

// stallsKept is how many gaps without a grant get a story.
const stallsKept = 5

// note records a reply, or a proxy's log line, for the stories.
func (l *lockLoad) note(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.noteLocked(time.Now(), what)
}

func (l *lockLoad) noteLocked(at time.Time, what string) {
	line := logLine{at, what}
	if len(l.log) < logKept {
		l.log = append(l.log, line)
	} else {
		l.log[l.logged%logKept] = line
	}
	l.logged++
}

// story is what the load saw from from to to, oldest first: the faults
// since five seconds before, and the lines logged, with the `before` lines
// logged before from; l.mu held.
func (l *lockLoad) story(from, to time.Time, before int) string {
	var b strings.Builder
	for _, f := range l.faults {
		if f.at.After(from.Add(-5*time.Second)) && !f.at.After(to) {
			fmt.Fprintf(&b, "  %s fault: %s\n", f.at.Format(stamp), f.what)
		}
	}
	oldest := max(l.logged-logKept, 0)
	first := l.logged
	for first > oldest && !l.log[(first-1)%logKept].at.Before(from) {
		first--
	}
	for k := max(first-before, oldest); k < l.logged; k++ {
		line := l.log[k%logKept]
		if line.at.After(to) {
			break
		}
		fmt.Fprintf(&b, "  %s %s\n", line.at.Format(stamp), line.what)
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
			l.note(fmt.Sprintf("client %d lock through %s: %v (sent at %s)", i, l.proxy(i), err, sent.Format(stamp)))
			drop("connection lost")
			time.Sleep(20 * time.Millisecond)
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "LOCKED" {
			l.note(fmt.Sprintf("client %d lock through %s: %q (sent at %s)", i, l.proxy(i), line, sent.Format(stamp)))
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
		l.unlock(i, fence, exchange, drop)
	}
}

// unlockRetries are the pauses before a client sends an unlock again, as
// lockclient.Hold does: when its connection was lost, or the answer was a
// server error (its proxy going, or the name's home gone with the answer).
// Left to run out its ttl, the lock would be a gap in the grants that says
// nothing of the proxies.
var unlockRetries = []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond,
	160 * time.Millisecond, 320 * time.Millisecond, 640 * time.Millisecond}

// unlock releases client i's grant, on a new connection after a lost one
// (through the proxy now in its slot). A try that did arrive shows as
// NOT_OWNER or NOT_FOUND to the next: then the lock is released.
func (l *lockLoad) unlock(i int, fence uint64, exchange func(string, time.Duration) (string, error), drop func(string)) {
	for try := 0; ; try++ {
		line, err := exchange(fmt.Sprintf("unlock %s %d", l.name, fence), 0)
		l.note(fmt.Sprintf("client %d unlock %d through %s: %q %v", i, fence, l.proxy(i), line, err))
		switch {
		case err != nil:
			drop("connection lost")
		case strings.HasPrefix(line, "UNLOCKED"), try > 0 && (line == "NOT_OWNER" || line == "NOT_FOUND"):
			return
		default:
			l.reply("unlock: " + line)
			if !strings.HasPrefix(line, "SERVER_ERROR") {
				return
			}
		}
		if try == len(unlockRetries) {
			return
		}
		time.Sleep(unlockRetries[try])
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

// check fails the test on overlaps and stale writes, and logs the report,
// with the story of each gap of over a second without a grant.
func (l *lockLoad) check(t *testing.T, start, end time.Time) loadReport {
	t.Helper()
	r := l.report(start, end)
	t.Log(r)
	l.mu.Lock()
	for _, o := range l.overlaps {
		t.Error("overlap: " + o)
	}
	for _, s := range l.stalls {
		t.Log("stall: " + s)
	}
	if gap := end.Sub(l.lastGrant); gap > time.Second {
		t.Logf("stall: %s without a grant, from %s to the end:\n%s", gap.Round(time.Millisecond), l.lastGrant.Format(stamp), l.story(l.lastGrant, end, recentKept))
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
