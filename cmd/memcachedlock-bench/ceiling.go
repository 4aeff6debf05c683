package main

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// ceilingCommand serves lock and unlock from memory alone: no memcached,
// no replicas, no peers, one queue in one process. It answers the one
// question a lock benchmark on a small machine leaves open, how busy any
// lock with a process between its clients could keep the lock here, and
// is run by "locks" as its ceiling line. It is not a lock service.
func ceilingCommand() *cli.Command {
	return &cli.Command{
		Name:   "ceiling-server",
		Usage:  "(used by locks) an in-memory FIFO lock over the proxy's lock and unlock lines: the machine's ceiling",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Required: true},
			&cli.StringSliceFlag{Name: "ring", Usage: "the addresses of all the processes that share the lock (see ringLock); none: this one alone"},
			&cli.IntFlag{Name: "me", Usage: "this process's place in --ring"},
		},
		Action: func(cc *cli.Context) error {
			ln, err := net.Listen("tcp", cc.String("listen"))
			if err != nil {
				return err
			}
			serve := new(memLock).serve
			if ring := cc.StringSlice("ring"); len(ring) > 1 {
				serve = newRingLock(cc.Int("me"), ring).serve
			}
			for {
				nc, err := ln.Accept()
				if err != nil {
					return err
				}
				go serve(nc)
			}
		},
	}
}

// memLock is one lock name's queue: whoever is at its head holds it.
type memLock struct {
	mu    sync.Mutex
	queue []chan uint64
	fence uint64
}

func (l *memLock) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	granted := make(chan uint64, 1)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		switch strings.Fields(line)[0] {
		case "lock":
			l.mu.Lock()
			l.queue = append(l.queue, granted)
			if len(l.queue) == 1 {
				l.fence++
				granted <- l.fence
			}
			l.mu.Unlock()
			fmt.Fprintf(nc, "LOCKED %d 10 1\r\n", <-granted)
		case "unlock":
			l.mu.Lock()
			l.queue = l.queue[1:]
			if len(l.queue) > 0 {
				l.fence++
				l.queue[0] <- l.fence
			}
			l.mu.Unlock()
			runtime.Gosched() // the new holder's reply first, as the proxy does
			nc.Write([]byte("UNLOCKED 0\r\n"))
		default:
			nc.Write([]byte("ERROR\r\n"))
		}
	}
}

// ceiling starts the in-memory lock server in n processes (see ringLock)
// and returns their addresses.
func (p *procs) ceiling(self string, n int) ([]string, error) {
	addrs := make([]string, n)
	for i := range addrs {
		port, err := testmc.FreePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = "127.0.0.1:" + strconv.Itoa(port)
	}
	for i, addr := range addrs {
		if err := p.start(addr, self, "ceiling-server", "--listen", addr, "--ring", strings.Join(addrs, ","), "--me", strconv.Itoa(i)); err != nil {
			return nil, err
		}
	}
	return addrs, nil
}
