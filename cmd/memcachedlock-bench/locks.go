package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
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
}

func runLocks(cc *cli.Context) error {
	var ps procs
	defer ps.stop()
	servers, err := ps.memcached(1, 2)
	if err != nil {
		return err
	}
	addr, err := ps.proxy(cc.String("proxy-bin"), servers)
	if err != nil {
		return err
	}
	w, hold, think, d := cc.Int("workers"), cc.Duration("hold"), cc.Duration("think"), cc.Duration("duration")
	fmt.Printf("lock benchmark: W=%d workers, hold %s, think %s, %s per run, one memcached\n\n", w, hold, think, d)
	proxied, err := lockRun("memcachedlock", w, hold, think, d, addr, func(int) (locker, error) {
		c, err := lockclient.Dial(context.Background(), addr)
		return &proxyLocker{c: c}, err
	})
	if err != nil {
		return err
	}
	polling, err := lockRun(fmt.Sprintf("polling %s", cc.Duration("interval")), w, hold, think, d, servers[0], func(int) (locker, error) {
		return &pollLocker{mc: memcache.New(servers[0]), interval: cc.Duration("interval")}, nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("| %-18s | %9s | %8s | %8s | %8s | %13s | %5s |\n", "scheme", "grants/s", "wait p50", "wait p99", "wait max", "per worker", "lost")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|\n", dashes(20), dashes(11), dashes(10), dashes(10), dashes(10), dashes(15), dashes(7))
	for _, r := range []lockResult{proxied, polling} {
		slices.Sort(r.waits)
		lo, hi := slices.Min(r.perWorker), slices.Max(r.perWorker)
		fmt.Printf("| %-18s | %9.0f | %8s | %8s | %8s | %4d-%4d %4.2f | %5d |\n", r.name,
			float64(r.grants)/r.elapsed.Seconds(), ms(pct(r.waits, 50)), ms(pct(r.waits, 99)), ms(r.waits[len(r.waits)-1]),
			lo, hi, float64(hi)/float64(max(lo, 1)), r.lost)
	}
	fmt.Printf("\nmemcachedlock/polling grants/s: %.2fx\n", float64(proxied.grants)/proxied.elapsed.Seconds()/(float64(polling.grants)/polling.elapsed.Seconds()))
	return nil
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
			mc := memcache.New(cacheAddr)
			var waits []time.Duration
			for time.Now().Before(stop) {
				t0 := time.Now()
				if err := l.lock(); err != nil {
					errs <- err
					return
				}
				granted := time.Now()
				waits = append(waits, granted.Sub(t0))
				it, err := mc.Get(counterKey)
				if err != nil {
					errs <- err
					return
				}
				n, _ := strconv.Atoi(string(it.Value))
				mc.Set(&memcache.Item{Key: counterKey, Value: []byte(strconv.Itoa(n + 1))})
				// Spin out the hold: a sleep this short overshoots by a
				// timer tick, which would measure the timer, not the lock.
				for time.Since(granted) < hold {
				}
				if err := l.unlock(); err != nil {
					errs <- err
					return
				}
				res.perWorker[i]++
				time.Sleep(think)
			}
			mu.Lock()
			res.waits = append(res.waits, waits...)
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
