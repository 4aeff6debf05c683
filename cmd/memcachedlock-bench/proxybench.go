package main

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/urfave/cli/v2"
)

func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:  "proxy",
		Usage: "memcaslap straight to memcached, through nutcracker and through the proxy, in alternating rounds",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "rounds", Value: 3, Usage: "rounds of each case; medians are reported"},
			&cli.DurationFlag{Name: "duration", Value: 4 * time.Second, Usage: "length of each memcaslap run"},
			&cli.StringFlag{Name: "proxy-bin", Value: "bin/memcachedlock", Usage: "the proxy binary"},
			&cli.IntFlag{Name: "rate", Value: 5000, Usage: "requests/s for the latency view"},
			&cli.StringFlag{Name: "baseline-bin", Usage: "another build of the proxy, run as a fourth target in the same rounds (to compare two versions)"},
			&cli.StringSliceFlag{Name: "cases", Value: cli.NewStringSlice("64", "512", "multiget", "latency"), Usage: "which cases to run: 64, 512, multiget, latency"},
		},
		Action: runProxyBench,
	}
}

// target is one way to reach the same memcached servers.
type target struct {
	name  string
	addrs []string // what memcaslap is given
}

func runProxyBench(cc *cli.Context) error {
	memcaslap, err := need("memcaslap", "libmemcached-tools")
	if err != nil {
		return err
	}
	rounds, d := cc.Int("rounds"), cc.Duration("duration")
	fmt.Printf("proxy benchmark: memcaslap, 100-byte values, 9:1 get/set, %s runs, median of %d alternating rounds\n", d, rounds)
	fmt.Printf("(CPU µs/req: the CPU time nutcracker and the proxy spent per request, which the machine's drift disturbs less than TPS)\n\n")

	benches := []proxyCase{
		{"64", "64 conns, 2 servers", 2, []string{"-T", "2", "-c", "64"}},
		{"512", "512 conns, 2 servers", 2, []string{"-T", "2", "-c", "512"}},
		{"multiget", "100-key gets, 4 servers", 4, []string{"-T", "2", "-c", "16", "-d", "100"}},
	}
	cases := cc.StringSlice("cases")
	for _, name := range cases {
		if name != "latency" && !slices.ContainsFunc(benches, func(b proxyCase) bool { return b.key == name }) {
			return fmt.Errorf("unknown case %q: want 64, 512, multiget or latency", name)
		}
	}
	baseline := cc.String("baseline-bin")
	fmt.Printf("| %-24s | %10s | %10s | %10s | %12s | %16s | %22s |", "case (TPS)", "direct", "nutcracker", "proxy", "proxy/direct", "proxy/nutcracker", "CPU µs/req nc : proxy")
	if baseline != "" {
		fmt.Printf(" %10s | %14s | %12s |", "baseline", "proxy/baseline", "CPU baseline")
	}
	fmt.Printf("\n|%s|%s|%s|%s|%s|%s|%s|", dashes(26), dashes(12), dashes(12), dashes(12), dashes(14), dashes(18), dashes(24))
	if baseline != "" {
		fmt.Printf("%s|%s|%s|", dashes(12), dashes(16), dashes(14))
	}
	fmt.Println()
	for _, b := range benches {
		if !slices.Contains(cases, b.key) {
			continue
		}
		m, cpu, err := b.measure(memcaslap, cc.String("proxy-bin"), baseline, rounds, d)
		if err != nil {
			return err
		}
		fmt.Printf("| %-24s | %10.0f | %10.0f | %10.0f | %12.2f | %16.2f | %10.1f : %-9.1f |", b.name, m[0], m[1], m[2], m[2]/m[0], m[2]/m[1],
			cpu[1], cpu[2])
		if baseline != "" {
			fmt.Printf(" %10.0f | %14.2f | %12.1f |", m[3], m[2]/m[3], cpu[3])
		}
		fmt.Println()
	}
	if !slices.Contains(cases, "latency") {
		return nil
	}
	return latencyView(cc)
}

// proxyCase is one row of the proxy benchmark: memcaslap's arguments
// against a number of memcached servers.
type proxyCase struct {
	key     string // its name for --cases
	name    string
	servers int
	args    []string
}

// measure runs the case against the servers directly, through nutcracker
// and through the proxy (and through a baseline build of the proxy, if
// given), in turn for rounds rounds, and returns the median TPS of each,
// and the CPU µs per request nutcracker and the proxies spent.
func (b proxyCase) measure(memcaslap, proxyBin, baselineBin string, rounds int, d time.Duration) (tps, cpuPerReq [4]float64, err error) {
	var ps procs
	defer ps.stop()
	servers, err := ps.memcached(b.servers, 1)
	if err != nil {
		return tps, cpuPerReq, err
	}
	nc, err := ps.nutcracker(servers)
	if err != nil {
		return tps, cpuPerReq, err
	}
	ncPid := ps[len(ps)-1].Process.Pid
	px, err := ps.proxy(proxyBin, servers)
	if err != nil {
		return tps, cpuPerReq, err
	}
	pxPid := ps[len(ps)-1].Process.Pid
	targets := []target{{"direct", servers}, {"nutcracker", []string{nc}}, {"proxy", []string{px}}}
	pids := []int{0, ncPid, pxPid}
	if baselineBin != "" {
		bl, err := ps.proxy(baselineBin, servers)
		if err != nil {
			return tps, cpuPerReq, err
		}
		targets = append(targets, target{"baseline", []string{bl}})
		pids = append(pids, ps[len(ps)-1].Process.Pid)
	}
	var runs, cpu [4][]float64
	for r := 0; r < rounds; r++ {
		for i, t := range targets {
			t0, _ := cpuTicks(pids[i])
			v, err := runMemcaslap(memcaslap, t.addrs, d, b.args)
			if err != nil {
				return tps, cpuPerReq, fmt.Errorf("%s via %s: %w", b.name, t.name, err)
			}
			t1, _ := cpuTicks(pids[i])
			runs[i] = append(runs[i], v)
			cpu[i] = append(cpu[i], float64(t1-t0)*1e4/(v*d.Seconds())) // ticks are 10ms
		}
	}
	for i := range targets {
		tps[i], cpuPerReq[i] = median(runs[i]), median(cpu[i])
	}
	return tps, cpuPerReq, nil
}

var tpsRE = regexp.MustCompile(`TPS: (\d+)`)

func runMemcaslap(bin string, addrs []string, d time.Duration, args []string) (float64, error) {
	all := append([]string{"-s", strings.Join(addrs, ","), "-t", fmt.Sprintf("%ds", int(d.Seconds())), "-X", "100"}, args...)
	out, err := exec.Command(bin, all...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("memcaslap: %v: %s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("memcaslap printed no TPS: %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// latencyView measures get/set latency at a fixed, moderate rate: p50 and
// p99 through nutcracker and through the proxy (and straight to memcached,
// with gomemcache's own sharding, for reference).
func latencyView(cc *cli.Context) error {
	var ps procs
	defer ps.stop()
	servers, err := ps.memcached(2, 1)
	if err != nil {
		return err
	}
	nc, err := ps.nutcracker(servers)
	if err != nil {
		return err
	}
	px, err := ps.proxy(cc.String("proxy-bin"), servers)
	if err != nil {
		return err
	}
	rate, d := cc.Int("rate"), cc.Duration("duration")
	fmt.Printf("\nlatency at %d requests/s (9:1 get/set, 100-byte values, 32 connections), median of %d rounds:\n\n", rate, cc.Int("rounds"))
	fmt.Printf("| %-10s | %8s | %8s |\n|%s|%s|%s|\n", "target", "p50", "p99", dashes(12), dashes(10), dashes(10))
	targets := []target{{"direct", servers}, {"nutcracker", []string{nc}}, {"proxy", []string{px}}}
	p50s, p99s := make([][]float64, 3), make([][]float64, 3)
	for r := 0; r < cc.Int("rounds"); r++ {
		for i, t := range targets {
			p50, p99, err := fixedRate(t.addrs, rate, d)
			if err != nil {
				return fmt.Errorf("latency via %s: %w", t.name, err)
			}
			p50s[i], p99s[i] = append(p50s[i], p50), append(p99s[i], p99)
		}
	}
	for i, t := range targets {
		fmt.Printf("| %-10s | %6.0fµs | %6.0fµs |\n", t.name, median(p50s[i]), median(p99s[i]))
	}
	return nil
}

func fixedRate(addrs []string, rate int, d time.Duration) (p50, p99 float64, err error) {
	const conns = 32
	mc := memcache.New(addrs...)
	mc.MaxIdleConns = conns
	mc.Timeout = 2 * time.Second
	value := make([]byte, 100)
	for i := 0; i < 1000; i++ {
		if err := mc.Set(&memcache.Item{Key: "lat:" + strconv.Itoa(i), Value: value}); err != nil {
			return 0, 0, err
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) * conns / float64(rate))
	stop := time.Now().Add(d)
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			next := time.Now().Add(time.Duration(rand.Int64N(int64(interval))))
			for next.Before(stop) {
				time.Sleep(time.Until(next))
				key := "lat:" + strconv.Itoa(rand.IntN(1000))
				t0 := time.Now()
				var err error
				if rand.IntN(10) == 0 {
					err = mc.Set(&memcache.Item{Key: key, Value: value})
				} else {
					_, err = mc.Get(key)
				}
				mine = append(mine, time.Since(t0))
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
				next = next.Add(interval)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	slices.Sort(lat)
	us := func(x time.Duration) float64 { return float64(x) / float64(time.Microsecond) }
	return us(pct(lat, 50)), us(pct(lat, 99)), nil
}
