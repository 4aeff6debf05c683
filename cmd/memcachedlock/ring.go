package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/ring"
)

func ringCommand() *cli.Command {
	return &cli.Command{
		Name:      "ring",
		Usage:     "print the server each key maps to",
		ArgsUsage: "KEY...",
		Flags:     ringFlags(),
		Action: func(cc *cli.Context) error {
			servers, err := parseServers(cc.String("servers"))
			if err != nil {
				return err
			}
			r, err := ring.New(servers, cc.String("distribution"), cc.String("hash"))
			if err != nil {
				return err
			}
			for _, key := range cc.Args().Slice() {
				fmt.Fprintf(cc.App.Writer, "%s %s\n", key, r.Servers()[r.Pick([]byte(key))].Addr)
			}
			return nil
		},
	}
}
