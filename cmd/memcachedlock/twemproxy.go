package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memcachedlock/memcachedlock/ring"
)

// twemproxyPool is one pool of a twemproxy (nutcracker) configuration
// file: the keys this proxy understands. Others (preconnect, backlog,
// hash_tag, ...) are accepted and ignored.
type twemproxyPool struct {
	Listen             string   `yaml:"listen"`
	Hash               string   `yaml:"hash"`
	Distribution       string   `yaml:"distribution"`
	Timeout            int      `yaml:"timeout"` // milliseconds
	AutoEjectHosts     bool     `yaml:"auto_eject_hosts"`
	ServerRetryTimeout int      `yaml:"server_retry_timeout"` // milliseconds
	ServerFailureLimit int      `yaml:"server_failure_limit"`
	ServerConnections  int      `yaml:"server_connections"`
	ClientConnections  int      `yaml:"client_connections"`
	Redis              bool     `yaml:"redis"`
	Servers            []string `yaml:"servers"`
}

// loadTwemproxy reads the named pool (or the only one) of a twemproxy file.
func loadTwemproxy(path, name string) (twemproxyPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return twemproxyPool{}, err
	}
	var pools map[string]twemproxyPool
	if err := yaml.Unmarshal(data, &pools); err != nil {
		return twemproxyPool{}, fmt.Errorf("%s: %w", path, err)
	}
	if name == "" {
		if len(pools) != 1 {
			names := make([]string, 0, len(pools))
			for n := range pools {
				names = append(names, n)
			}
			sort.Strings(names)
			return twemproxyPool{}, fmt.Errorf("%s: %d pools (%s): choose one with --pool", path, len(pools), strings.Join(names, ", "))
		}
		for n := range pools {
			name = n
		}
	}
	p, ok := pools[name]
	switch {
	case !ok:
		return p, fmt.Errorf("%s: no pool %q", path, name)
	case p.Redis:
		return p, fmt.Errorf("%s: pool %q is a redis pool", path, name)
	case len(p.Servers) == 0:
		return p, fmt.Errorf("%s: pool %q has no servers", path, name)
	}
	return p, nil
}

// servers reads the pool's "host:port:weight [name]" entries.
func (p twemproxyPool) servers() ([]ring.Server, error) { return ring.ParseServers(p.Servers) }

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }
