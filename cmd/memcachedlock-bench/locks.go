package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/lockclient"
)

func locksCommand() *cli.Command {
	return &cli.Command{
		Name:  "locks",
		Usage: "W workers contend for one key: lock, hold H, unlock, think T; proxy beside polling",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "workers", Value: 8, Usage: "W: workers, each on its own connection"},
			&cli.DurationFlag{Name: "hold", Value: time.Millisecond, Usage: "H: time the lock is held"},
			&cli.DurationFlag{Name: "think", Value: 5 * time.Millisecond, Usage: "T: pause between unlock and the next lock"},
			&cli.DurationFlag{Name: "duration", Value: 4 * time.Second, Usage: "length of each run"},
			&cli.DurationFlag{Name: "interval", Value: 50 * time.Millisecond, Usage: "the polling baseline's retry interval"},
			&cli.StringFlag{Name: "proxy-bin", Value: "bin/memcachedlock", Usage: "the proxy binary"},
			&cli.StringFlag{Name: "compare-bin", Usage: "a second proxy binary, run in turn with --proxy-bin in every case (an A/B test on a busy machine)"},
			&cli.IntSliceFlag{Name: "proxies", Value: cli.NewIntSlice(1, 2, 4), Usage: "numbers of proxies to spread the workers over"},
			&cli.IntSliceFlag{Name: "replicas", Value: cli.NewIntSlice(1, 3), Usage: "--lock-replicas values to run"},
			&cli.IntFlag{Name: "rounds", Value: 1, Usage: "runs of each case, alternating; the table shows the median by grants/s"},
			&cli.BoolFlag{Name: "polling", Value: true, Usage: "run the polling baseline too"},
			&cli.BoolFlag{Name: "early-handoff", Value: true, Usage: "run the proxies with early handoff (their default); =false makes every handoff wait for its write"},
			&cli.IntFlag{Name: "gomaxprocs", Usage: "GOMAXPROCS of the proxies and the ceiling server; 0 leaves Go's default (every core). Four proxies on one small machine stand for four hosts: 1 keeps their runtimes from contending for every core"},
			&cli.BoolFlag{Name: "ceiling", Value: true, Usage: "run an in-memory lock server too: the busiest any lock with a process between its clients gets here"},
		},
		Action: runLocks,
	}
}

// lockResult is what one run measured.
type lockResult struct {
	name      string
	grants    int
	elapsed   time.Duration
	waits     []time.Duration
	perWorker []int
	lost      int
	cpuTicks  int    // the proxies' CPU time over the run; 0 for polling
	ceiling   int    // for a ceiling, its processes; else 0
	spans     []span // every grant, in no particular order
	paths     []path // the handoffs by the way they went, for runs through proxies
}

func (r lockResult) rate() float64 { return float64(r.grants) / r.elapsed.Seconds() }

// lockCase is one line of the table: a binary, a number of proxies and of
// replicas.
type lockCase struct {
	bin               string
	proxies, replicas int
}

func runLocks(cc *cli.Context) error {
	var ps procs
	defer ps.stop()
	cache, err := ps.memcached(1, 2)
	if err != nil {
		return err
	}
	w, hold, think, d := cc.Int("workers"), cc.Duration("hold"), cc.Duration("think"), cc.Duration("duration")
	if n := cc.Int("gomaxprocs"); n > 0 {
		os.Setenv("GOMAXPROCS", strconv.Itoa(n)) // read by the processes started from here on, not by this one
	}
	bins := []string{cc.String("proxy-bin")}
	if b := cc.String("compare-bin"); b != "" {
		bins = append(bins, b)
	}
	procs := "Go's default"
	if n := cc.Int("gomaxprocs"); n > 0 {
		procs = strconv.Itoa(n)
	}
	fmt.Printf("lock benchmark: W=%d workers, hold %s, think %s, %s per run, %d round(s); workers spread over the proxies; "+
		"lock servers: memcached -M, fresh for each case; proxies' GOMAXPROCS: %s; early handoff: %v\n\n", w, hold, think, d, cc.Int("rounds"), procs, cc.Bool("early-handoff"))
	var cases []lockCase
	for _, replicas := range cc.IntSlice("replicas") {
		for _, n := range cc.IntSlice("proxies") {
			for _, bin := range bins {
				cases = append(cases, lockCase{bin, n, replicas})
			}
		}
	}
	runs := make([][]lockResult, len(cases))
	for round := 0; round < cc.Int("rounds"); round++ {
		for i, c := range cases {
			r, err := proxiedRun(c.bin, cache[0], c.proxies, c.replicas, w, hold, think, d, cc.Bool("early-handoff"))
			if err != nil {
				return err
			}
			if len(bins) > 1 {
				r.name += " " + map[bool]string{true: "A", false: "B"}[c.bin == bins[0]]
			}
			runs[i] = append(runs[i], r)
		}
	}
	results := make([]lockResult, len(cases))
	for i, rs := range runs {
		slices.SortFunc(rs, func(a, b lockResult) int { return cmp.Compare(a.rate(), b.rate()) })
		results[i] = rs[len(rs)/2]
	}
	if cc.Bool("polling") {
		polling, err := lockRun(fmt.Sprintf("polling %s", cc.Duration("interval")), w, hold, think, d, cache[0], func(int) (locker, error) {
			return &pollLocker{mc: memcache.New(cache[0]), interval: cc.Duration("interval")}, nil
		})
		if err != nil {
			return err
		}
		results = append(results, polling)
	}
	if cc.Bool("ceiling") {
		for _, n := range cc.IntSlice("proxies") {
			r, err := ceilingRun(n, w, hold, think, d, cache[0])
			if err != nil {
				return err
			}
			results = append(results, r)
		}
	}
	printLockTable(results, hold)
	printPathTable(results)
	if rtt, err := roundTrip(cache[0]); err == nil {
		// A handoff needs at least the releaser's unlock to reach a proxy,
		// the proxy's write to reach memcached and come back, and the grant
		// to reach the next holder: two round trips' worth of hops.
		fmt.Printf("\nfloor: a memcached round trip here takes %s (median); a handoff needs two round trips' worth of hops, "+
			"so no lock that writes memcached per handoff can be busier than %.0f%% at hold %s\n",
			ms(rtt), 100*hold.Seconds()/(hold+2*rtt).Seconds(), hold)
	}
	for _, bin := range bins {
		printRatios(cases, results, bin, len(bins) > 1)
	}
	return nil
}

func printLockTable(results []lockResult, hold time.Duration) {
	fmt.Printf("| %-26s | %8s | %5s | %8s | %8s | %8s | %9s | %14s | %4s | %11s |\n", "scheme", "grants/s", "busy", "wait p50", "wait p99", "wait max", "idle/hand", "per worker", "lost", "CPU µs/gr")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", dashes(28), dashes(10), dashes(7), dashes(10), dashes(10), dashes(10), dashes(11), dashes(16), dashes(6), dashes(13))
	for _, r := range results {
		slices.Sort(r.waits)
		lo, hi := slices.Min(r.perWorker), slices.Max(r.perWorker)
		// The lock is idle between one holder's unlock and the next grant:
		// what is left of each grant's share of the run after its hold.
		idle := time.Duration(float64(r.elapsed)/float64(max(r.grants, 1))) - hold
		cpu := "-"
		if r.cpuTicks > 0 { // ticks are 10 ms
			cpu = fmt.Sprintf("%.0f", float64(r.cpuTicks)*1e4/float64(max(r.grants, 1)))
		}
		fmt.Printf("| %-26s | %8.0f | %4.0f%% | %8s | %8s | %8s | %9s | %4d-%4d %4.2f | %4d | %11s |\n", r.name,
			r.rate(), 100*r.rate()*hold.Seconds(), ms(pct(r.waits, 50)), ms(pct(r.waits, 99)), ms(r.waits[len(r.waits)-1]), ms(idle),
			lo, hi, float64(hi)/float64(max(lo, 1)), r.lost, cpu)
	}
}

// roundTrip is the median time of a memcached no-op round trip on one
// connection: the machine's floor for any hop of a lock's handoff.
func roundTrip(addr string) (time.Duration, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	rtts := make([]time.Duration, 2000)
	for i := range rtts {
		t0 := time.Now()
		if _, err := nc.Write([]byte("mn\r\n")); err != nil {
			return 0, err
		}
		if _, err := br.ReadString('\n'); err != nil {
			return 0, err
		}
		rtts[i] = time.Since(t0)
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

// printRatios compares each case of bin with one proxy and one replica of
// the same binary, and the baselines after the cases (polling, the
// ceiling) with that.
func printRatios(cases []lockCase, results []lockResult, bin string, named bool) {
	find := func(n, replicas int) *lockResult {
		for i, c := range cases {
			if c.bin == bin && c.proxies == n && c.replicas == replicas {
				return &results[i]
			}
		}
		return nil
	}
	one := find(1, 1)
	if one == nil {
		return
	}
	var parts []string
	for i, c := range cases {
		if c.bin == bin && (c.proxies != 1 || c.replicas != 1) {
			parts = append(parts, fmt.Sprintf("%d prox/%d repl %.2f", c.proxies, c.replicas, results[i].rate()/one.rate()))
		}
	}
	label := ""
	if named {
		label = bin + ": "
	}
	fmt.Println()
	if len(parts) > 0 {
		fmt.Printf("%sgrants/s / (1 proxy, 1 replica): %s\n", label, strings.Join(parts, ", "))
	}
	var ceilings []lockResult
	for _, base := range results[len(cases):] {
		if base.ceiling > 0 {
			ceilings = append(ceilings, base)
			continue
		}
		fmt.Printf("%s1 proxy / %s: %.2fx\n", label, base.name, one.rate()/base.rate())
	}
	if len(ceilings) == 0 {
		return
	}
	// The ceiling in n processes against the one in one is the most any
	// lock whose clients sit behind n processes can keep of one here.
	parts = nil
	var across []string
	for _, c := range ceilings {
		if p := find(c.ceiling, 1); p != nil {
			parts = append(parts, fmt.Sprintf("%d %.2f", c.ceiling, p.rate()/c.rate()))
		}
		if c.ceiling > 1 && ceilings[0].ceiling == 1 {
			across = append(across, fmt.Sprintf("%d processes %.2f", c.ceiling, c.rate()/ceilings[0].rate()))
		}
	}
	fmt.Printf("%sproxies / the ceiling in as many processes: %s\n", label, strings.Join(parts, ", "))
	if len(across) > 0 {
		fmt.Printf("%sthe ceiling / in 1 process: %s\n", label, strings.Join(across, ", "))
	}
}

// ceilingRun runs the workers against the in-memory lock server, spread
// over n processes of it as they are over n proxies.
func ceilingRun(n, w int, hold, think, d time.Duration, cache string) (lockResult, error) {
	self, err := os.Executable()
	if err != nil {
		return lockResult{}, err
	}
	var ps procs
	defer ps.stop()
	addrs, err := ps.ceiling(self, n)
	if err != nil {
		return lockResult{}, err
	}
	var pids []int
	for _, p := range ps {
		pids = append(pids, p.Process.Pid)
	}
	name := "ceiling: in memory, 1 process"
	if n > 1 {
		name = fmt.Sprintf("ceiling: in memory, %d processes", n)
	}
	before := ticksOf(pids)
	r, err := lockRun(name, w, hold, think, d, cache, func(i int) (locker, error) {
		c, err := lockclient.Dial(context.Background(), addrs[i%n])
		return &proxyLocker{c: c}, err
	})
	r.cpuTicks, r.ceiling = ticksOf(pids)-before, n
	return r, err
}

// proxiedRun starts fresh lock servers and n proxies in front of them,
// spreads the workers over the proxies, and stops it all again.
func proxiedRun(bin, cache string, n, replicas, w int, hold, think, d time.Duration, early bool) (lockResult, error) {
	var ps procs
	defer ps.stop()
	locks, err := ps.memcached(replicas, 1, "-M", "-m", "64")
	if err != nil {
		return lockResult{}, err
	}
	var addrs []string
	var pids []int
	for i := 0; i < n; i++ {
		args := []string{"--lock-servers", strings.Join(locks, ","), "--lock-replicas", strconv.Itoa(replicas), "--lock-fresh-servers"}
		if !early {
			args = append(args, "--lock-early-handoff=false")
		}
		addr, err := ps.proxy(bin, []string{cache}, args...)
		if err != nil {
			return lockResult{}, err
		}
		addrs = append(addrs, addr)
		pids = append(pids, ps[len(ps)-1].Process.Pid)
	}
	if err := waitProxies(addrs); err != nil {
		return lockResult{}, err
	}
	name := fmt.Sprintf("%d prox%s, %d replica%s", n, map[bool]string{true: "y", false: "ies"}[n == 1], replicas, map[bool]string{true: "", false: "s"}[replicas == 1])
	before := ticksOf(pids)
	r, err := lockRun(name, w, hold, think, d, cache, func(i int) (locker, error) {
		c, err := lockclient.Dial(context.Background(), addrs[i%n])
		return &proxyLocker{c: c}, err
	})
	r.cpuTicks = ticksOf(pids) - before
	if err == nil {
		r.paths = handoffPaths(r.spans, n, homeOf(addrs))
	}
	return r, err
}

// ticksOf sums the CPU time of the processes, in clock ticks.
func ticksOf(pids []int) int {
	sum := 0
	for _, pid := range pids {
		t, _ := cpuTicks(pid)
		sum += t
	}
	return sum
}

// waitProxies waits until every proxy has found all the others, so that
// they agree on the lock's home from the first grant.
func waitProxies(addrs []string) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		all := true
		for _, a := range addrs {
			if statOf(a, "proxy_lock_proxies") != strconv.Itoa(len(addrs)) {
				all = false
			}
		}
		if all {
			return nil
		}
	}
	return fmt.Errorf("the proxies did not find each other")
}

// statOf reads one line of a proxy's stats.
func statOf(addr, name string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte("stats\r\n"))
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[1] == name {
			return f[2]
		}
		if sc.Text() == "END" {
			break
		}
	}
	return ""
}

func dashes(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '-'
	}
	return string(b)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)*p/100, len(sorted)-1)]
}

type locker interface {
	lock() error
	unlock() error
	close()
}

// lockRun has each worker lock, bump a plain counter (get then set, which
// loses updates unless the lock excludes), hold, unlock and think.
func lockRun(name string, workers int, hold, think, d time.Duration, cacheAddr string, dial func(int) (locker, error)) (lockResult, error) {
	counterKey := "bench:counter:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cache := memcache.New(cacheAddr)
	if err := cache.Set(&memcache.Item{Key: counterKey, Value: []byte("0")}); err != nil {
		return lockResult{}, err
	}
	res := lockResult{name: name, perWorker: make([]int, workers)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	stop := start.Add(d)
	for i := 0; i < workers; i++ {
		l, err := dial(i)
		if err != nil {
			return res, err
		}
		defer l.close()
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := lockWorker{l: l, mc: memcache.New(cacheAddr), counterKey: counterKey, hold: hold, think: think}
			spans, waits, err := w.run(stop)
			if err != nil {
				errs <- err
			}
			for j := range spans {
				spans[j].worker = i
			}
			mu.Lock()
			res.perWorker[i] = len(spans)
			res.waits = append(res.waits, waits...)
			res.spans = append(res.spans, spans...)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	select {
	case err := <-errs:
		return res, fmt.Errorf("%s: %w", name, err)
	default:
	}
	for _, n := range res.perWorker {
		res.grants += n
	}
	it, err := cache.Get(counterKey)
	if err != nil {
		return res, err
	}
	counted, _ := strconv.Atoi(string(it.Value))
	res.lost = res.grants - counted
	return res, nil
}

// lockWorker is one client of lockRun.
type lockWorker struct {
	l           locker
	mc          *memcache.Client
	counterKey  string
	hold, think time.Duration
}

// run locks, bumps the counter, holds, unlocks and thinks until stop; it
// returns the grants it had and how long each took to come.
func (w *lockWorker) run(stop time.Time) (spans []span, waits []time.Duration, err error) {
	for time.Now().Before(stop) {
		t0 := time.Now()
		if err := w.l.lock(); err != nil {
			return spans, waits, err
		}
		granted := time.Now()
		waits = append(waits, granted.Sub(t0))
		it, err := w.mc.Get(w.counterKey)
		if err != nil {
			return spans, waits, err
		}
		n, _ := strconv.Atoi(string(it.Value))
		w.mc.Set(&memcache.Item{Key: w.counterKey, Value: []byte(strconv.Itoa(n + 1))})
		// Spin out the hold: a sleep this short overshoots by a timer
		// tick, which would measure the timer, not the lock.
		for time.Since(granted) < w.hold {
		}
		unlocking := time.Now()
		if err := w.l.unlock(); err != nil {
			return spans, waits, err
		}
		spans = append(spans, span{granted: granted, unlocking: unlocking})
		time.Sleep(w.think)
	}
	return spans, waits, nil
}

type proxyLocker struct {
	c *lockclient.Client
	g lockclient.Grant
}

func (p *proxyLocker) lock() (err error) {
	p.g, err = p.c.Lock(context.Background(), "bench", lockclient.Options{TTL: 10 * time.Second, Wait: 30 * time.Second})
	return err
}

func (p *proxyLocker) unlock() error {
	_, err := p.c.Unlock(context.Background(), p.g)
	return err
}

func (p *proxyLocker) close() { p.c.Close() }

// pollLocker is the scheme the proxy replaces: add, and on failure sleep
// the interval and try again; delete to release.
type pollLocker struct {
	mc       *memcache.Client
	interval time.Duration
}

func (p *pollLocker) lock() error {
	for {
		err := p.mc.Add(&memcache.Item{Key: "bench:polled-lock", Value: []byte("1"), Expiration: 10})
		if err == nil {
			return nil
		}
		if err != memcache.ErrNotStored {
			return err
		}
		time.Sleep(p.interval)
	}
}

func (p *pollLocker) unlock() error { return p.mc.Delete("bench:polled-lock") }
func (p *pollLocker) close()        {}
