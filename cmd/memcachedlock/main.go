// Command memcachedlock runs the memcached proxy with built-in locks, and
// offers small tools around it.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/proxy"
)

func main() {
	app := &cli.App{
		Name:  "memcachedlock",
		Usage: "a memcached proxy with distributed locks built in",
		Commands: []*cli.Command{
			serveCommand(),
			ringCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(*cli.Context) error {
					fmt.Println("memcachedlock", proxy.Version)
					return nil
				},
			},
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "memcachedlock:", err)
		os.Exit(exitUsage)
	}
}

// exitUsage is the exit status for bad flags and failures to start.
const exitUsage = 2
