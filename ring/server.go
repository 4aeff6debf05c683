package ring

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/hashicorp/go-multierror"
)

// Server is one memcached server on the ring.
type Server struct {
	Addr   string // host:port to dial
	Name   string // optional; replaces the address in ketama's point names (twemproxy's server name)
	Weight int    // share of the keys, relative to the other servers; at least 1
}

// ketamaName is the string whose md5 places the server's points. As in
// libmemcached and twemproxy, the default port 11211 is left out of it, and
// an IPv6 host is written bare, without the brackets of its address:
// "::1" or "::1:11212".
func (s Server) ketamaName() string {
	if s.Name != "" {
		return s.Name
	}
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return s.Addr
	}
	if port == "11211" {
		return host
	}
	return host + ":" + port
}

// String gives the server back in the form ParseServer reads.
func (s Server) String() string {
	out := s.Addr
	if s.Weight != 1 {
		out += ":" + strconv.Itoa(s.Weight)
	}
	if s.Name != "" {
		out += " " + s.Name
	}
	return out
}

// ParseServer reads "host:port[:weight] [name]", twemproxy's server form;
// an IPv6 host is written in brackets: "[::1]:11211:2".
func ParseServer(spec string) (Server, error) {
	fields := strings.Fields(spec)
	if len(fields) == 0 || len(fields) > 2 {
		return Server{}, fmt.Errorf("ring: server %q: want host:port[:weight] [name]", spec)
	}
	s := Server{Weight: 1}
	if len(fields) == 2 {
		s.Name = fields[1]
	}
	// The host ends at the first colon, or, for an IPv6 host, at "]".
	addr := fields[0]
	end := strings.IndexByte(addr, ':')
	if strings.HasPrefix(addr, "[") {
		end = strings.IndexByte(addr, ']') + 1
	}
	if end <= 0 || end >= len(addr) || addr[end] != ':' {
		return Server{}, fmt.Errorf("ring: server %q: want host:port[:weight] [name]", spec)
	}
	parts := strings.Split(addr[end+1:], ":") // port[:weight]
	if len(parts) == 2 {
		w, err := strconv.Atoi(parts[1])
		if err != nil || w < 1 {
			return Server{}, fmt.Errorf("ring: server %q: weight must be a whole number >= 1", spec)
		}
		s.Weight = w
	} else if len(parts) != 1 {
		return Server{}, fmt.Errorf("ring: server %q: want host:port[:weight] [name]", spec)
	}
	addr = addr[:end+1] + parts[0]
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return Server{}, fmt.Errorf("ring: server %q: want host:port[:weight] [name]", spec)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return Server{}, fmt.Errorf("ring: server %q: bad port", spec)
	}
	s.Addr = addr
	return s, nil
}

// ParseServers reads a list of server specs, reporting every bad one.
func ParseServers(specs []string) ([]Server, error) {
	var errs *multierror.Error
	var out []Server
	seen := make(map[string]bool)
	for _, spec := range specs {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		s, err := ParseServer(spec)
		if err != nil {
			errs = multierror.Append(errs, err)
			continue
		}
		if seen[s.Addr] {
			errs = multierror.Append(errs, fmt.Errorf("ring: server %s listed twice", s.Addr))
			continue
		}
		seen[s.Addr] = true
		out = append(out, s)
	}
	if len(out) == 0 && errs == nil {
		errs = multierror.Append(errs, fmt.Errorf("ring: no servers"))
	}
	return out, errs.ErrorOrNil()
}
