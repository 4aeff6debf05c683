package main

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memcachedlock/memcachedlock/ring"
)

// twemproxyPool is one pool of a twemproxy (nutcracker) configuration
// file: the keys this proxy understands. twemproxy's others are ignored,
// and any other key is reported in Warnings (a typo such as
// auto_eject_host would otherwise go unnoticed).
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

	Warnings []string `yaml:"-"` // keys read and not acted on
}

// twemproxyHash is what twemproxy hashes with when a pool names no hash.
const twemproxyHash = "fnv1a_64"

// Keys of a twemproxy pool that need nothing of this proxy: it always
// connects at start (preconnect), and redis pools are refused anyway.
var twemproxyIgnored = []string{"backlog", "preconnect", "tcpkeepalive", "redis_auth", "redis_db"}

// unknownKeys lists what in a pool's keys this proxy does not act on.
func unknownKeys(keys map[string]yaml.Node) []string {
	known := []string{"listen", "hash", "distribution", "timeout", "auto_eject_hosts", "server_retry_timeout",
		"server_failure_limit", "server_connections", "client_connections", "redis", "servers"}
	var out []string
	for key := range keys {
		switch {
		case slices.Contains(known, key), slices.Contains(twemproxyIgnored, key):
		case key == "hash_tag":
			out = append(out, "hash_tag is not supported: keys are hashed whole, so keys with a tag land on other servers than twemproxy puts them")
		default:
			msg := fmt.Sprintf("unknown key %q ignored", key)
			if near := nearest(key, append(known, twemproxyIgnored...)); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", near)
			}
			out = append(out, msg)
		}
	}
	sort.Strings(out)
	return out
}

// nearest returns the candidate at most two edits away from s, if any.
func nearest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
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
	var raw map[string]map[string]yaml.Node
	if err := yaml.Unmarshal(data, &raw); err == nil {
		p.Warnings = unknownKeys(raw[name])
	}
	if ok && p.Hash == "" {
		p.Hash = twemproxyHash
	}
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
func (p twemproxyPool) servers() ([]ring.Server, error) { return parseServerList(p.Servers) }

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }
