package main

import (
	"github.com/urfave/cli/v2"
)

func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:  "proxy",
		Usage: "memcaslap straight to memcached, through nutcracker and through the proxy",
		Action: func(cc *cli.Context) error {
			return nil
		},
	}
}
