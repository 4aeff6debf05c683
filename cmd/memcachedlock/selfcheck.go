package main

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/memcachedlock/memcachedlock/proxy"
	"github.com/memcachedlock/memcachedlock/ring"
)

// A memcachedlock in front of another (or of itself) is almost always a
// mistake: MEMCACHEDLOCK_SERVERS exported for a client that meant the
// proxy's address, say. Pointed at itself, every command would answer
// "SERVER_ERROR server unavailable" with no hint why, so serve refuses to
// start instead, unless --allow-proxy-servers.

// refuseProxyServers fails when a server is the listen address, or answers
// stats as a memcachedlock does (with proxy_version).
func refuseProxyServers(cc *cli.Context, cfg proxy.Config, listen string) error {
	if cc.Bool("allow-proxy-servers") {
		return nil
	}
	if err := listensOnServer(cfg, listen); err != nil {
		return err
	}
	addrs := allServers(cfg)
	found := make([]bool, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			found[i] = isMemcachedlock(addr, cfg.Timeout)
		}()
	}
	wg.Wait()
	for i, addr := range addrs {
		if found[i] {
			return fmt.Errorf("server %s is a memcachedlock proxy, not memcached (its stats report proxy_version); give memcached servers, or --allow-proxy-servers to chain proxies", addr)
		}
	}
	return nil
}

// listensOnServer fails when a server's address is the one the proxy is
// to listen on: the proxy would be its own server.
func listensOnServer(cfg proxy.Config, listen string) error {
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return nil // net.Listen will say what is wrong
	}
	anyHost := lhost == "" || net.ParseIP(lhost) != nil && net.ParseIP(lhost).IsUnspecified()
	for _, addr := range allServers(cfg) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || port != lport {
			continue
		}
		if host == lhost || anyHost && isLocal(host) || sameIP(host, lhost) {
			return fmt.Errorf("server %s is the proxy's own listen address %s", addr, listen)
		}
	}
	return nil
}

func sameIP(a, b string) bool {
	ia, ib := net.ParseIP(a), net.ParseIP(b)
	return ia != nil && ib != nil && ia.Equal(ib)
}

// isLocal reports whether host is this machine: localhost, a loopback
// address, or an address of one of its interfaces.
func isLocal(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// allServers is every cache and lock server address, once each.
func allServers(cfg proxy.Config) []string {
	var out []string
	seen := make(map[string]bool)
	for _, list := range [][]ring.Server{cfg.Servers, cfg.LockServers} {
		for _, s := range list {
			if !seen[s.Addr] {
				seen[s.Addr] = true
				out = append(out, s.Addr)
			}
		}
	}
	return out
}

// isMemcachedlock asks addr for its stats. A server that cannot be reached
// is not judged: the proxy serves without it and reconnects later.
func isMemcachedlock(addr string, timeout time.Duration) bool {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return false
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(timeout))
	if _, err := nc.Write([]byte("stats\r\n")); err != nil {
		return false
	}
	br := bufio.NewReader(nc)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return false
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, "STAT proxy_version "):
			return true
		case !strings.HasPrefix(line, "STAT "):
			return false // END, or an error
		}
	}
}
