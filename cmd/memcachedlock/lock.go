package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/lockclient"
)

// Exit statuses of "memcachedlock lock", beside the command's own.
const (
	exitNotLocked   = 75  // EX_TEMPFAIL: the lock was busy for the whole wait
	exitUnavailable = 69  // EX_UNAVAILABLE: the proxy or its lock server cannot be reached
	exitNoCommand   = 127 // the command could not be started
)

func addrFlag() cli.Flag {
	return &cli.StringFlag{Name: "addr", Value: "127.0.0.1:11311", EnvVars: env("ADDR"), Usage: "the proxy's `address`"}
}

func lockCommand() *cli.Command {
	return &cli.Command{
		Name:      "lock",
		Usage:     "run a command while holding a lock",
		ArgsUsage: "KEY -- COMMAND [ARGS...]",
		Description: "Takes the lock (waiting in the proxy), runs the command, keeps the lock alive while it\n" +
			"runs and releases it when it exits; exits with the command's status. Exits " + strconv.Itoa(exitNotLocked) + " when the\n" +
			"lock stays busy for the whole wait, " + strconv.Itoa(exitUnavailable) + " when the proxy cannot be reached, " + strconv.Itoa(exitUsage) + " when the proxy\n" +
			"refuses an argument. Without --owner the lock belongs to this process's connection and is\n" +
			"freed the moment it dies. The command is killed (SIGKILL) if this process is killed.",
		Flags: []cli.Flag{
			addrFlag(),
			secFlag("ttl", 30*time.Second, "", "lock lifetime, whole seconds; renewed every third of it while the command runs"),
			msFlag("wait", 30*time.Second, "", "how long to wait for the lock; 0 tries once"),
			&cli.StringFlag{Name: "owner", Usage: "lease owner, such as host:job; without it the lock belongs to this process's connection"},
			&cli.IntFlag{Name: "conflict-exit-code", Aliases: []string{"E"}, Value: exitNotLocked, Usage: "exit status when the lock stays busy"},
		},
		Action: runLocked,
	}
}

func runLocked(cc *cli.Context) error {
	args := cc.Args().Slice()
	if len(args) < 2 {
		return usage(cc, "a KEY and a COMMAND are needed")
	}
	key, command := args[0], args[1:]
	if command[0] == "--" {
		command = command[1:]
	}
	if len(command) == 0 {
		return usage(cc, "no command given")
	}
	ttl, err := secondsOf(cc, "ttl")
	if err != nil {
		return usage(cc, err.Error())
	}
	ctx := context.Background()
	client, err := lockclient.Dial(ctx, cc.String("addr"))
	if err != nil {
		return cli.Exit(err.Error(), exitUnavailable)
	}
	defer client.Close()
	wait := durationOf(cc, "wait")
	opts := lockclient.Options{TTL: time.Duration(ttl) * time.Second, Wait: wait, TryOnce: wait == 0, Owner: cc.String("owner")}
	status := 0
	err = lockclient.Hold(ctx, client, key, opts, func(ctx context.Context, g lockclient.Grant) error {
		status = runChild(ctx, command, g)
		return nil
	})
	switch {
	case errors.Is(err, lockclient.ErrNotLocked):
		fmt.Fprintf(os.Stderr, "memcachedlock: %s is busy: %v\n", key, err)
		return cli.Exit("", cc.Int("conflict-exit-code"))
	case errors.Is(err, lockclient.ErrLeaseLost):
		fmt.Fprintf(os.Stderr, "memcachedlock: %v\n", err)
		if status == 0 {
			status = exitUnavailable
		}
	case err != nil:
		if reason, ok := refusal(err); ok {
			return cli.Exit("memcachedlock: the proxy refused the request: "+reason, exitUsage)
		}
		return cli.Exit("memcachedlock: "+err.Error(), exitUnavailable)
	}
	if status != 0 {
		return cli.Exit("", status)
	}
	return nil
}

// runChild runs the command with the fence in its environment, passes on
// SIGINT and SIGTERM, and stops it if the lease is lost (ctx ends).
func runChild(ctx context.Context, command []string, g lockclient.Grant) int {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "MEMCACHEDLOCK_FENCE="+strconv.FormatUint(g.Fence, 10))
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "memcachedlock:", err)
		return exitNoCommand
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			ctx = context.Background() // signal once
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return 128 + int(ws.Signal())
				}
				return ee.ExitCode()
			}
			return 0
		}
	}
}

// refusal returns the reason of a CLIENT_ERROR reply, and whether err is
// one: the proxy refused an argument (a ttl over its maximum, a bad key),
// which is a usage error, not the proxy being unreachable.
func refusal(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	msg := err.Error()
	if i := strings.Index(msg, "CLIENT_ERROR "); i >= 0 {
		return msg[i+len("CLIENT_ERROR "):], true
	}
	if strings.HasPrefix(msg, "lockclient: bad key") {
		return strings.TrimPrefix(msg, "lockclient: "), true
	}
	return "", false
}

func unlockCommand() *cli.Command {
	return &cli.Command{
		Name:      "unlock",
		Usage:     "release a lock by its fence (for operators)",
		ArgsUsage: "KEY FENCE",
		Flags:     []cli.Flag{addrFlag()},
		Action: func(cc *cli.Context) error {
			if cc.NArg() != 2 {
				return usage(cc, "a KEY and a FENCE are needed")
			}
			fence, err := strconv.ParseUint(cc.Args().Get(1), 10, 64)
			if err != nil {
				return usage(cc, "FENCE must be a number")
			}
			client, err := lockclient.Dial(cc.Context, cc.String("addr"))
			if err != nil {
				return cli.Exit(err.Error(), exitUnavailable)
			}
			defer client.Close()
			left, err := client.Unlock(cc.Context, lockclient.Grant{Key: cc.Args().Get(0), Fence: fence})
			if reason, ok := refusal(err); ok {
				return cli.Exit("memcachedlock: the proxy refused the request: "+reason, exitUsage)
			}
			if err != nil {
				return cli.Exit("memcachedlock: "+err.Error(), 1)
			}
			fmt.Fprintf(cc.App.Writer, "UNLOCKED %d\n", left)
			return nil
		},
	}
}

func lockinfoCommand() *cli.Command {
	return &cli.Command{
		Name:      "lockinfo",
		Usage:     "show who holds a lock",
		ArgsUsage: "KEY",
		Flags:     []cli.Flag{addrFlag()},
		Action: func(cc *cli.Context) error {
			if cc.NArg() != 1 {
				return usage(cc, "one KEY is needed")
			}
			client, err := lockclient.Dial(cc.Context, cc.String("addr"))
			if err != nil {
				return cli.Exit(err.Error(), exitUnavailable)
			}
			defer client.Close()
			in, err := client.Info(cc.Context, cc.Args().Get(0))
			if errors.Is(err, lockclient.ErrNotFound) {
				fmt.Fprintln(cc.App.Writer, "free")
				return cli.Exit("", 1)
			}
			if reason, ok := refusal(err); ok {
				return cli.Exit("memcachedlock: the proxy refused the request: "+reason, exitUsage)
			}
			if err != nil {
				return cli.Exit("memcachedlock: "+err.Error(), exitUnavailable)
			}
			fmt.Fprintf(cc.App.Writer, "fence %d\nttl %s\ncount %d\nowner %s\nwaiters %d\n", in.Fence, in.TTL, in.Count, in.Owner, in.Waiters)
			return nil
		},
	}
}
