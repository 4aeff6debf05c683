package proxy

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// fanout sends a command to every cache server and merges the answers.
func (c *clientConn) fanout(line []byte) reply {
	r := &c.req
	shape := shapeSingle
	switch {
	case r.noreply:
		shape = shapeQuiet
	case r.cmd == cmdStats:
		shape = statsShape(r.tokens[1:])
	}
	f := &fanout{s: c.s, cmd: r.cmd, shape: shape}
	if r.cmd == cmdStats && len(r.tokens) > 1 {
		f.group = string(r.tokens[1])
	}
	if r.cmd == cmdLruCrawler && len(r.tokens) > 1 && (string(r.tokens[1]) == "metadump" || string(r.tokens[1]) == "mgdump") {
		return c.dump(line)
	}
	for _, b := range c.s.topo.Load().cache {
		call := newCall(shape, c.s.cfg.Timeout)
		call.out = append(append(call.out, line...), crlf...)
		b.send(c.pin, call)
		f.calls = append(f.calls, call)
	}
	return f
}

// statsShape: most stats groups end in END; "reset", "detail on|off" and
// "sizes_enable|sizes_disable" answer one line.
func statsShape(args [][]byte) replyShape {
	if len(args) > 0 {
		switch string(args[0]) {
		case "reset", "sizes_enable", "sizes_disable":
			return shapeSingle
		case "detail":
			if len(args) > 1 && string(args[1]) != "dump" {
				return shapeSingle
			}
		}
	}
	return shapeUntilEnd
}

type fanout struct {
	s     *Server
	cmd   command
	shape replyShape
	group string // stats group; "" is the general one, which adds the proxy's own counters
	calls []*call
}

func (f *fanout) write(w *bufio.Writer) {
	replies := make([][]byte, len(f.calls))
	var failed []byte
	for i, c := range f.calls {
		c.wait()
		if c.err != nil {
			if failed == nil {
				failed = serverError(c.err)
			}
		} else {
			replies[i] = c.reply
		}
	}
	defer func() {
		for _, c := range f.calls {
			c.release()
		}
	}()
	switch f.cmd {
	case cmdVersion:
		w.Write(lowestVersion(replies, failed))
	case cmdStats:
		if failed != nil && f.group != "" {
			w.Write(failed)
			return
		}
		for _, r := range replies {
			if r != nil && (isErrorLine(r) || !bytes.HasSuffix(r, replyEND)) {
				w.Write(r) // "stats reset", "stats bogus": one server speaks for all
				return
			}
		}
		mergeStats(w, replies, f.group)
		if f.group == "" {
			f.s.writeProxyStats(w)
		}
		w.Write(replyEND)
	default: // flush_all and admin commands: OK only when every server said OK
		if f.shape == shapeQuiet { // noreply: what a server chose to say anyway, once
			for _, r := range replies {
				if len(r) > 0 {
					w.Write(r)
					return
				}
			}
			return
		}
		for _, r := range replies {
			if r != nil && !bytes.Equal(r, replyOK) {
				w.Write(r)
				return
			}
		}
		if failed != nil {
			w.Write(failed)
			return
		}
		w.Write(replies[0])
	}
}

// lowestVersion answers "version" with the oldest server's version, so that
// clients choosing features by version are never promised too much.
func lowestVersion(replies [][]byte, failed []byte) []byte {
	var best []byte
	for _, r := range replies {
		if !bytes.HasPrefix(r, []byte("VERSION ")) {
			continue
		}
		if best == nil || versionLess(r[8:], best[8:]) {
			best = r
		}
	}
	if best == nil {
		if failed != nil {
			return failed
		}
		return replies[0]
	}
	return best
}

func versionLess(a, b []byte) bool {
	pa := strings.FieldsFunc(strings.TrimSpace(string(a)), func(r rune) bool { return r == '.' || r == '-' })
	pb := strings.FieldsFunc(strings.TrimSpace(string(b)), func(r rune) bool { return r == '.' || r == '-' })
	for i := 0; i < len(pa) && i < len(pb); i++ {
		x, errx := strconv.Atoi(pa[i])
		y, erry := strconv.Atoi(pb[i])
		if errx != nil || erry != nil {
			if pa[i] != pb[i] {
				return pa[i] < pb[i]
			}
			continue
		}
		if x != y {
			return x < y
		}
	}
	return len(pa) < len(pb)
}

// firstServerStats are taken from the first server, never summed.
var firstServerStats = map[string]bool{
	"pid": true, "uptime": true, "time": true, "version": true, "libevent": true,
	"pointer_size": true, "max_connections": true, "threads": true,
}

// perClassSettings are stats (items and slabs groups, "<class>:<name>")
// that describe a slab class rather than count in it: the first server's.
var perClassSettings = map[string]bool{
	"chunk_size": true, "chunks_per_page": true, "age": true, "age_hot": true, "age_warm": true,
}

func isFirstServerStat(name string) bool {
	if i := strings.LastIndexByte(name, ':'); i >= 0 {
		return perClassSettings[name[i+1:]]
	}
	return firstServerStats[name]
}

// listingGroups are stats groups that describe one server's settings or
// contents rather than count: the first server's answer stands.
var listingGroups = map[string]bool{"settings": true, "cachedump": true, "detail": true, "conns": true}

// mergeStats sums same-named STAT lines over the servers. Values that are
// not numbers, and those listed above, are the first server's.
func mergeStats(w *bufio.Writer, replies [][]byte, group string) {
	type stat struct {
		name, value string
		isum        int64
		fsum        float64
		kind        byte // 'i' integer, 'f' float, 's' other
	}
	var order []*stat
	byName := make(map[string]*stat)
	for n, r := range replies {
		if n > 0 && listingGroups[group] {
			break
		}
		for _, line := range bytes.Split(r, crlf) {
			if len(line) == 0 || bytes.Equal(line, replyEND[:3]) {
				continue
			}
			f := strings.SplitN(string(line), " ", 3)
			if len(f) != 3 || f[0] != "STAT" {
				if n == 0 {
					w.Write(line) // ITEM lines and the like: passed on
					w.Write(crlf)
				}
				continue
			}
			name, value := f[1], f[2]
			st, seen := byName[name]
			if !seen {
				st = &stat{name: name, value: value, kind: 'i'}
				byName[name] = st
				order = append(order, st)
			} else if isFirstServerStat(name) {
				continue
			}
			if i, err := strconv.ParseInt(value, 10, 64); err == nil && st.kind == 'i' {
				st.isum += i
			} else if x, err := strconv.ParseFloat(value, 64); err == nil && st.kind != 's' {
				st.fsum += x + float64(st.isum)
				st.isum, st.kind = 0, 'f'
			} else {
				st.kind = 's'
			}
		}
	}
	for _, st := range order {
		value := st.value
		switch {
		case isFirstServerStat(st.name) || listingGroups[group]:
		case st.kind == 'i':
			value = strconv.FormatInt(st.isum, 10)
		case st.kind == 'f':
			value = strconv.FormatFloat(st.fsum, 'f', 6, 64)
		}
		w.WriteString("STAT " + st.name + " " + value + "\r\n")
	}
}
