// Command memcachedlock runs the memcached proxy with built-in locks, and
// offers small tools around it.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/hashicorp/go-multierror"
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
			if msg := oneLine(err); msg != "" {
				fmt.Fprintln(os.Stderr, msg)
			}
			os.Exit(ec.ExitCode())
		}
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "memcachedlock:", oneLine(err))
		os.Exit(exitUsage)
	}
}

// newApp is the command line, serve first.
func newApp() *cli.App {
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Aliases: []string{"V"}, Usage: "print the version and commit", DisableDefaultText: true}
	cli.VersionPrinter = func(cc *cli.Context) { fmt.Fprintln(cc.App.Writer, versionLine()) }
	app := &cli.App{
		Name:         "memcachedlock",
		Usage:        "a memcached proxy with distributed locks built in",
		Version:      proxy.Version,
		OnUsageError: usageError,
		// Bare "memcachedlock", or an unknown command: usage, on stderr.
		Action: func(cc *cli.Context) error {
			if cc.NArg() == 0 {
				return usage(cc, "a command is needed")
			}
			return usage(cc, fmt.Sprintf("no command %q", cc.Args().First()))
		},
		Commands: []*cli.Command{
			serveCommand(),
			lockCommand(),
			unlockCommand(),
			lockinfoCommand(),
			ringCommand(),
			{
				Name:  "version",
				Usage: "print the version and commit",
				Action: func(cc *cli.Context) error {
					fmt.Fprintln(cc.App.Writer, versionLine())
					return nil
				},
			},
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = usageError
	}
	return app
}

// exitUsage is the exit status for bad flags and failures to start.
const exitUsage = 2

func versionLine() string {
	return fmt.Sprintf("memcachedlock %s (commit %s, %s)", proxy.Version, proxy.BuildCommit(), runtime.Version())
}

// usageError prints what was wrong and the help of the command it was
// given to, both on stderr (stdout may be a pipe to something else), and
// exits 2.
func usageError(cc *cli.Context, err error, _ bool) error {
	return usage(cc, err.Error())
}

func usage(cc *cli.Context, problem string) error {
	fmt.Fprintf(os.Stderr, "memcachedlock: %s\n\n", problem)
	showHelp(cc, os.Stderr)
	return cli.Exit("", exitUsage)
}

// showHelp writes the help of cc's command (or of the whole program) to w.
func showHelp(cc *cli.Context, w io.Writer) {
	saved := cc.App.Writer
	cc.App.Writer = w
	defer func() { cc.App.Writer = saved }()
	if lineage := cc.Lineage(); len(lineage) > 1 && lineage[1].Command != nil {
		cli.ShowCommandHelp(lineage[1], cc.Command.Name)
		return
	}
	cli.ShowAppHelp(cc)
}

// oneLine gives an error as one line: go-multierror's lists ("2 errors
// occurred:" and an indented list) become their items joined by "; ".
func oneLine(err error) string {
	var me *multierror.Error
	if errors.As(err, &me) && me.Error() == err.Error() {
		return joinErrors(me.Errors)
	}
	msg := err.Error()
	if strings.ContainsAny(msg, "\n\t") { // a list wrapped before flat saw it
		msg = strings.Join(strings.Fields(msg), " ")
	}
	return msg
}

// flat makes a multierror print as one line, so that it stays one line
// when it is wrapped into another error's text.
func flat(err error) error {
	var me *multierror.Error
	if errors.As(err, &me) {
		me.ErrorFormat = joinErrors
	}
	return err
}

func joinErrors(errs []error) string {
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = oneLine(e)
	}
	return strings.Join(parts, "; ")
}
