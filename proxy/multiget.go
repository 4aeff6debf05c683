package proxy

import (
	"bufio"
	"bytes"
	"sync/atomic"
)

// retrieve routes get/gets/gat/gats. Keys that all live on one server go
// there in the client's own line; otherwise each server gets one line with
// its keys, and the answers are merged back into the client's key order.
func (c *clientConn) retrieve(line []byte) {
	r := &c.req
	t := c.s.routes.topo.Load()
	if len(r.keys) == 0 { // "gat <exptime>" alone: memcached judges it
		c.retrieveFrom(t.cache[0], line)
		return
	}
	c.picks = c.picks[:0]
	first := t.ring.Pick(r.keys[0])
	one := true
	for _, k := range r.keys {
		p := t.ring.Pick(k)
		c.picks = append(c.picks, p)
		one = one && p == first
	}
	if one {
		c.retrieveFrom(t.cache[first], line)
		return
	}
	c.send(c.splitGet(t))
}

// retrieveFrom sends the client's line as it is to one server.
func (c *clientConn) retrieveFrom(b *backend, line []byte) {
	call := newCall(shapeUntilEnd, c.s.cfg.Timeout)
	call.out = append(append(call.out, line...), crlf...)
	b.send(c.pin, call)
	c.send(call)
}

// splitGet sends each server a line with its keys, c.picks saying whose.
func (c *clientConn) splitGet(t *topology) *multiGet {
	r := &c.req
	m := &multiGet{
		keys:   make([][]byte, len(r.keys)),
		calls:  make([]*call, len(t.cache)),
		server: append([]int(nil), c.picks...),
		misses: &c.s.getMisses,
	}
	// The verb and exptime, as the client sent them, start every server line.
	head := r.tokens[:len(r.tokens)-len(r.keys)]
	for i, k := range r.keys {
		p := c.picks[i]
		sc := m.calls[p]
		if sc == nil {
			sc = newCall(shapeUntilEnd, c.s.cfg.Timeout)
			for j, t := range head {
				if j > 0 {
					sc.out = append(sc.out, ' ')
				}
				sc.out = append(sc.out, t...)
			}
			m.calls[p] = sc
		}
		sc.out = append(append(sc.out, ' '), k...)
		m.keys[i] = sc.out[len(sc.out)-len(k):]
	}
	for p, sc := range m.calls {
		if sc != nil {
			sc.out = append(sc.out, crlf...)
			t.cache[p].send(c.pin, sc)
		}
	}
	return m
}

// multiGet is a retrieval split over several servers.
type multiGet struct {
	keys   [][]byte // the client's keys, in its order
	server []int    // the server of each key
	calls  []*call  // by server; nil where no key went

	misses *atomic.Uint64 // counts the keys of failed servers
}

// write merges the servers' VALUE blocks into the client's key order. Each
// server answers its keys in the order it was asked, leaving out misses, so
// one cursor per server suffices. A failed server's keys are misses.
func (m *multiGet) write(w *bufio.Writer) {
	for _, sc := range m.calls {
		if sc != nil {
			sc.wait()
		}
	}
	defer func() {
		for _, sc := range m.calls {
			if sc != nil {
				sc.release()
			}
		}
	}()
	for _, sc := range m.calls {
		// A client error (bad exptime) is the same from every server.
		if sc != nil && sc.err == nil && bytes.HasPrefix(sc.reply, []byte("CLIENT_ERROR ")) {
			w.Write(sc.reply)
			return
		}
	}
	cursor := make([]int, len(m.calls))
	for i, k := range m.keys {
		p := m.server[i]
		sc := m.calls[p]
		if sc.err != nil || bytes.HasPrefix(sc.reply, []byte("SERVER_ERROR ")) {
			m.misses.Add(1)
			continue
		}
		key, end := nextValue(sc.reply, cursor[p])
		if end > 0 && bytes.Equal(key, k) {
			w.Write(sc.reply[cursor[p]:end])
			cursor[p] = end
		}
	}
	w.Write(replyEND)
}

// nextValue reads the VALUE block at reply[at:]: its key and where it ends.
// end is 0 when there is no VALUE block there.
func nextValue(reply []byte, at int) (key []byte, end int) {
	rest := reply[at:]
	if !bytes.HasPrefix(rest, prefixVAL) {
		return nil, 0
	}
	eol := bytes.IndexByte(rest, '\n')
	if eol < 0 {
		return nil, 0
	}
	line := rest[:eol+1]
	n, ok := dataLength(line)
	if !ok {
		return nil, 0
	}
	key = line[len(prefixVAL):]
	key = key[:bytes.IndexByte(key, ' ')]
	return key, at + eol + 1 + n + 2
}
