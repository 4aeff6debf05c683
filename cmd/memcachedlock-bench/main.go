// Command memcachedlock-bench measures the proxy beside what it replaces:
// "locks" runs contending lock workers through the proxy and, in the same
// run, the old polling scheme straight against memcached; "proxy" runs
// memcaslap straight to memcached, through twemproxy and through the proxy.
// Everything it needs is started on free loopback ports and stopped again.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:     "memcachedlock-bench",
		Usage:    "benchmarks of memcachedlock beside direct memcached and twemproxy",
		Commands: []*cli.Command{locksCommand(), proxyCommand(), idleCommand(), ceilingCommand()},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "memcachedlock-bench:", err)
		os.Exit(1)
	}
}
