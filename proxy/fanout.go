package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
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

// dump streams an lru_crawler metadump or mgdump from every server, one
// after the other, on a connection of its own: memcached refuses a dump
// pipelined behind other commands, takes over the connection while it
// dumps, and ends its lines in a bare "\n". The client gets every server's
// lines, then one END (EN); the first error a server sends, or a server
// failing, ends the dump instead.
type dump struct {
	line    []byte
	servers []string
	timeout time.Duration // for each read: a dump may take long, but not stall
}

func (c *clientConn) dump(line []byte) reply {
	d := &dump{line: append(append([]byte(nil), line...), crlf...), timeout: c.s.cfg.Timeout}
	for _, b := range c.s.topo.Load().cache {
		d.servers = append(d.servers, b.addr)
	}
	return d
}

func (d *dump) write(w *bufio.Writer) {
	end := replyEND
	if bytes.Contains(d.line, []byte("mgdump")) {
		end = replyEN
	}
	for _, addr := range d.servers {
		if err := d.from(addr, w, end); err == errDumpRefused {
			return
		} else if err != nil {
			w.Write(serverError(err))
			return
		}
	}
	w.Write(end)
}

// from copies one server's dump lines to w. A line that is neither a
// dump line nor the end is the server's error: passed on, and the end.
func (d *dump) from(addr string, w *bufio.Writer, end []byte) error {
	nc, err := net.DialTimeout("tcp", addr, d.timeout)
	if err != nil {
		return errServerDown
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(d.timeout))
	if _, err := nc.Write(d.line); err != nil {
		return errServerDown
	}
	br := bufio.NewReaderSize(nc, 16<<10)
	for {
		nc.SetReadDeadline(time.Now().Add(d.timeout))
		line, err := br.ReadSlice('\n')
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errServerTimeout
		} else if err != nil {
			return errServerDown
		}
		switch {
		case bytes.Equal(line, end):
			return nil
		case isErrorLine(line):
			w.Write(line)
			return errDumpRefused
		}
		w.Write(line)
	}
}

// errDumpRefused: a server refused the dump and its words were passed on.
var errDumpRefused = errors.New("dump refused")

// logStream streams every server's log lines (memcached's "watch"), each
// from a connection of its own, since a log stream cannot share one. The
// client gets one OK, then the lines as they come. As in memcached, the
// client's connection is the stream's from then on; the stream ends when
// the client hangs up or the proxy stops.
type logStream struct {
	conns   []net.Conn
	readers []*bufio.Reader
	ctx     context.Context // the client's
	client  net.Conn        // for the write deadline of a stream that outlives it
}

// openLogStream asks every server to watch. When one refuses (a bad
// argument) or fails, it returns that answer instead, and the client's
// connection goes on as before.
func (c *clientConn) openLogStream(line []byte) (*logStream, reply) {
	ls := &logStream{ctx: c.ctx, client: c.nc}
	out := append(append([]byte(nil), line...), crlf...)
	timeout := c.s.cfg.Timeout
	for _, b := range c.s.topo.Load().cache {
		nc, err := net.DialTimeout("tcp", b.addr, timeout)
		if err != nil {
			ls.close()
			return nil, staticReply(serverError(errServerDown))
		}
		ls.conns = append(ls.conns, nc)
		nc.SetDeadline(time.Now().Add(timeout))
		br := bufio.NewReader(nc)
		_, err = nc.Write(out)
		var first []byte
		if err == nil {
			first, err = br.ReadSlice('\n')
		}
		if err != nil || !bytes.Equal(first, replyOK) {
			ls.close()
			if err != nil {
				return nil, staticReply(serverError(errServerDown))
			}
			return nil, staticReply(append([]byte(nil), first...))
		}
		nc.SetDeadline(time.Time{})
		ls.readers = append(ls.readers, br)
	}
	return ls, nil
}

func (ls *logStream) close() {
	for _, nc := range ls.conns {
		nc.Close()
	}
}

func (ls *logStream) write(w *bufio.Writer) {
	done := make(chan struct{})
	defer func() {
		close(done)
		ls.close()
	}()
	lines := make(chan []byte, 64)
	for _, br := range ls.readers {
		go func() {
			for {
				l, err := br.ReadBytes('\n')
				if err != nil {
					return
				}
				select {
				case lines <- l:
				case <-done:
					return
				}
			}
		}()
	}
	w.Write(replyOK)
	for {
		ls.client.SetWriteDeadline(time.Now().Add(writeTimeout))
		if w.Flush() != nil {
			return
		}
		select {
		case l := <-lines:
			w.Write(l)
			for len(lines) > 0 {
				w.Write(<-lines)
			}
		case <-ls.ctx.Done():
			return
		}
	}
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
