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
	if r.cmd == cmdLruCrawler && len(r.tokens) > 1 && (string(r.tokens[1]) == "metadump" || string(r.tokens[1]) == "mgdump") {
		return c.dump(line)
	}
	shape := shapeSingle
	switch {
	case r.noreply:
		shape = shapeQuiet
	case r.cmd == cmdStats:
		shape = statsShape(r.tokens[1:])
	}
	f := &fanout{cmd: r.cmd, shape: shape}
	switch {
	case r.cmd == cmdStats && len(r.tokens) > 1:
		f.group = string(r.tokens[1])
	case r.cmd == cmdStats:
		f.own = c.env.stats
	}
	for _, b := range c.env.routes.topo.Load().cache {
		call := newCall(shape, c.env.timeout)
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
	cmd   command
	shape replyShape
	group string      // stats group
	own   *proxyStats // the general stats group: the proxy's own counters follow the servers'
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
	switch {
	case f.cmd == cmdVersion:
		w.Write(lowestVersion(replies, failed))
	case f.cmd == cmdStats:
		f.writeStats(w, replies, failed)
	case f.shape == shapeQuiet: // noreply: what a server chose to say anyway, once
		for _, r := range replies {
			if len(r) > 0 {
				w.Write(r)
				return
			}
		}
	default: // flush_all and admin commands
		w.Write(allOK(replies, failed))
	}
}

// writeStats merges the servers' stats. The general group goes on without
// a server that failed; other groups, and answers other than STAT lines,
// are not merged.
func (f *fanout) writeStats(w *bufio.Writer, replies [][]byte, failed []byte) {
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
	if f.own != nil {
		f.own.write(w)
	}
	w.Write(replyEND)
}

// allOK answers OK only when every server said OK; otherwise the first
// other answer, or the failure.
func allOK(replies [][]byte, failed []byte) []byte {
	for _, r := range replies {
		if r != nil && !bytes.Equal(r, replyOK) {
			return r
		}
	}
	if failed != nil {
		return failed
	}
	return replies[0]
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
