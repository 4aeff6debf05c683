// Command memcachedlock runs the memcached proxy with built-in locks, and
// offers small tools around it.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/proxy"
)

// cliContext is urfave/cli's context, named for the tests.
type cliContext = cli.Context

func main() {
	app := newApp()
	app.ExitErrHandler = func(_ *cli.Context, err error) {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, msg)
			}
			os.Exit(ec.ExitCode())
		}
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "memcachedlock:", err)
		os.Exit(exitUsage)
	}
}

// newApp is the command line, serve first.
func newApp() *cli.App {
	return &cli.App{
		Name:  "memcachedlock",
		Usage: "a memcached proxy with distributed locks built in",
		Commands: []*cli.Command{
			serveCommand(),
			lockCommand(),
			unlockCommand(),
			lockinfoCommand(),
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
}

// exitUsage is the exit status for bad flags and failures to start.
const exitUsage = 2
