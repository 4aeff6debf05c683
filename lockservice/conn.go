package lockservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
)

// Conn reaches one memcached server. Exchange writes batch, one or more
// meta or stats commands, at once on one connection, and returns the
// server's replies to all of them: commands on one connection are carried
// out in order, so a check written after a change sees the change. The
// replies are appended to reply (nil: a new slice). It keeps no reference
// to batch or reply once it returns.
type Conn interface {
	Exchange(ctx context.Context, batch, reply []byte) ([]byte, error)
}

var errBadReply = errors.New("lockservice: unexpected reply from memcached")

// replies walks the replies to a batch, one command's at a time.
type replies struct{ b []byte }

// line returns the next line without its CRLF.
func (r *replies) line() ([]byte, error) {
	i := bytes.Index(r.b, []byte("\r\n"))
	if i < 0 {
		return nil, fmt.Errorf("%w: %q", errBadReply, r.b)
	}
	line := r.b[:i]
	r.b = r.b[i+2:]
	return line, nil
}

// meta reads one meta reply: its status ("HD", "VA", "EN", "NS", ...),
// flags, and the value when the status is VA.
func (r *replies) meta() (m metaReply, err error) {
	line, err := r.line()
	if err != nil {
		return m, err
	}
	var f [10][]byte // status, size, flags: split without allocating
	n := 0
	for rest := line; len(rest) > 0 && n < len(f); {
		i := bytes.IndexByte(rest, ' ')
		if i < 0 {
			i = len(rest)
		}
		if i > 0 {
			f[n] = rest[:i]
			n++
		}
		rest = rest[min(i+1, len(rest)):]
	}
	if n == 0 {
		return m, fmt.Errorf("%w: empty line", errBadReply)
	}
	m.status = statusOf(f[0])
	first := 1
	if m.status == "VA" {
		if n < 2 {
			return m, fmt.Errorf("%w: %q", errBadReply, line)
		}
		size, err := strconv.Atoi(string(f[1]))
		if err != nil || size < 0 || len(r.b) < size+2 || !bytes.Equal(r.b[size:size+2], []byte("\r\n")) {
			return m, fmt.Errorf("%w: %q", errBadReply, line)
		}
		first = 2
		m.value, r.b = r.b[:size], r.b[size+2:]
	}
	m.nflags = copy(m.flags[:], f[first:n])
	if m.status != "HD" && m.status != "VA" && m.status != "EN" && m.status != "NS" &&
		m.status != "EX" && m.status != "NF" {
		return m, fmt.Errorf("%w: %q", errBadReply, line)
	}
	return m, nil
}

// stats reads one stats reply up to END into a map.
func (r *replies) stats() (map[string]string, error) {
	st := make(map[string]string)
	for {
		line, err := r.line()
		if err != nil {
			return nil, err
		}
		if string(line) == "END" {
			return st, nil
		}
		f := bytes.Fields(line)
		if len(f) != 3 || string(f[0]) != "STAT" {
			return nil, fmt.Errorf("%w: %q", errBadReply, line)
		}
		st[string(f[1])] = string(f[2])
	}
}

// evictions reads one stats reply up to END and returns its evictions
// counter, without keeping the rest: it rides behind every grant on a
// server that may evict.
func (r *replies) evictions() (int64, error) {
	var n int64 = -1
	for {
		line, err := r.line()
		if err != nil {
			return 0, err
		}
		if string(line) == "END" {
			if n < 0 {
				return 0, fmt.Errorf("%w: stats without evictions", errBadReply)
			}
			return n, nil
		}
		if v, ok := bytes.CutPrefix(line, []byte("STAT evictions ")); ok {
			if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				return 0, fmt.Errorf("%w: %q", errBadReply, line)
			}
		}
	}
}

// metaReply is one reply to a meta command.
type metaReply struct {
	status string
	flags  [8][]byte
	nflags int
	value  []byte
}

// statusOf returns a meta status as one of the constant strings, so that
// reading a reply allocates nothing for it.
func statusOf(b []byte) string {
	for _, s := range []string{"HD", "VA", "EN", "NS", "EX", "NF", "MN"} {
		if string(b) == s {
			return s
		}
	}
	return string(b)
}

// flag returns the value of a one-letter return flag, such as c (cas) or
// t (ttl).
func (m metaReply) flag(c byte) (int64, bool) {
	for _, f := range m.flags[:m.nflags] {
		if len(f) > 1 && f[0] == c {
			v, err := strconv.ParseInt(string(f[1:]), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

func statInt(st map[string]string, name string) int64 {
	v, _ := strconv.ParseInt(st[name], 10, 64)
	return v
}
