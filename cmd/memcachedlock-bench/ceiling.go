package main

import (
	"net"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// ceilingCommand serves lock and unlock from memory alone: no memcached,
// no replicas, one FIFO queue, in one process or spread over several
// (ringLock). It answers the question a lock benchmark on a small machine
// leaves open, how busy any lock with processes between its clients could
// keep the lock here, and is run by "locks" as its ceiling lines. It is
// not a lock service.
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
			ring := cc.StringSlice("ring")
			if len(ring) == 0 {
				ring = []string{cc.String("listen")}
			}
			l := newRingLock(cc.Int("me"), ring)
			for {
				nc, err := ln.Accept()
				if err != nil {
					return err
				}
				go l.serve(nc)
			}
		},
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
