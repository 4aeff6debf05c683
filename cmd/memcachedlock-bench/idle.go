package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

func idleCommand() *cli.Command {
	return &cli.Command{
		Name:  "idle",
		Usage: "the proxy's memory with N idle clients, and its CPU with N clients waiting for a lock nobody releases",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "clients", Value: 10000},
			&cli.DurationFlag{Name: "measure", Value: 5 * time.Second, Usage: "how long CPU is measured"},
			&cli.StringFlag{Name: "proxy-bin", Value: "bin/memcachedlock"},
		},
		Action: runIdle,
	}
}

func runIdle(cc *cli.Context) error {
	var ps procs
	defer ps.stop()
	servers, err := ps.memcached(1, 1)
	if err != nil {
		return err
	}
	addr, err := ps.proxy(cc.String("proxy-bin"), servers)
	if err != nil {
		return err
	}
	pid := ps[len(ps)-1].Process.Pid
	n := cc.Int("clients")
	base, _ := rssKiB(pid)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	if err := waitStat(addr, "proxy_curr_connections", n+1); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	idle, _ := rssKiB(pid)
	fmt.Printf("%d idle clients: proxy RSS %.1f MiB (%.1f MiB before them)\n", n, float64(idle)/1024, float64(base)/1024)

	holder, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer holder.Close()
	holder.Write([]byte("lock contended 300 0\r\n"))
	if line, _ := bufio.NewReader(holder).ReadString('\n'); !strings.HasPrefix(line, "LOCKED") {
		return fmt.Errorf("holder: %q", line)
	}
	for _, c := range conns {
		c.Write([]byte("lock contended 300 300000\r\n"))
	}
	if err := waitStat(addr, "proxy_lock_waiters", n); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	t0, _ := cpuTicks(pid)
	time.Sleep(cc.Duration("measure"))
	t1, _ := cpuTicks(pid)
	waiting, _ := rssKiB(pid)
	const hz = 100 // USER_HZ
	cpu := float64(t1-t0) / hz / cc.Duration("measure").Seconds() * 100
	fmt.Printf("%d clients waiting for a held lock: proxy CPU %.2f%% of one core over %s, RSS %.1f MiB\n", n, cpu, cc.Duration("measure"), float64(waiting)/1024)
	return nil
}

// waitStat waits until the proxy's stat reaches at least want.
func waitStat(addr, name string, want int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 600; i++ {
		c.Write([]byte("stats\r\n"))
		got := -1
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if line == "END\r\n" {
				break
			}
			if f := strings.Fields(line); len(f) == 3 && f[1] == name {
				got, _ = strconv.Atoi(f[2])
			}
		}
		if got >= want {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s never reached %d", name, want)
}

func rssKiB(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

// cpuTicks is the process's user and system time in clock ticks.
func cpuTicks(pid int) (int, error) {
	if pid == 0 {
		return 0, nil
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime, nil
}
