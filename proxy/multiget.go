package proxy

import (
	"bufio"
	"bytes"
	"slices"
	"sync"
	"sync/atomic"
)

// retrieve routes get/gets/gat/gats. Keys that all live on one server go
// there in the client's own line; otherwise each server gets one line with
// its keys, and the answers are merged back into the client's key order.
func (c *clientConn) retrieve(line []byte) {
	r := &c.req
	t := c.env.routes.topo.Load()
	if len(r.keys) == 0 { // "gat <exptime>" alone: memcached judges it
		c.retrieveFrom(t.cache[0], line)
		return
	}
	c.picks = c.picks[:0]
	one := true
	for _, k := range r.keys {
		p := t.ring.Pick(k)
		c.picks = append(c.picks, p)
		one = one && p == c.picks[0]
	}
	if one {
		c.retrieveFrom(t.cache[c.picks[0]], line)
		return
	}
	c.send(c.splitGet(t))
}

// retrieveFrom sends the client's line as it is to one server.
func (c *clientConn) retrieveFrom(b *backend, line []byte) {
	call := newCall(shapeUntilEnd, c.env.timeout)
	call.out = append(append(call.out, line...), crlf...)
	b.send(c.pin, call)
	c.send(call)
}

// splitGet sends each server a line with its keys, c.picks saying whose.
func (c *clientConn) splitGet(t *topology) *multiGet {
	r := &c.req
	m := newMultiGet(len(t.cache), &c.env.counters.getMisses)
	m.server = append(m.server, c.picks...)
	// The verb and exptime, as the client sent them, start every server line.
	head := r.tokens[:len(r.tokens)-len(r.keys)]
	parts := int32(0)
	for i, k := range r.keys {
		p := c.picks[i]
		sc := m.calls[p]
		if sc == nil {
			sc = newCall(shapeUntilEnd, c.env.timeout)
			sc.group = m
			parts++
			for j, t := range head {
				if j > 0 {
					sc.out = append(sc.out, ' ')
				}
				sc.out = append(sc.out, t...)
			}
			m.calls[p] = sc
		}
		sc.out = append(append(sc.out, ' '), k...)
		m.keys = append(m.keys, sc.out[len(sc.out)-len(k):])
	}
	m.pending.Store(parts)
	for p, sc := range m.calls {
		if sc != nil {
			sc.out = append(sc.out, crlf...)
			t.cache[p].send(c.pin, sc)
		}
	}
	return m
}

// multiGet is a retrieval split over several servers. Its parts count
// down as their servers answer; the last one wakes the client's writer,
// once, rather than the writer waiting for each part in turn.
type multiGet struct {
	keys    [][]byte // the client's keys, in its order
	server  []int    // the server of each key
	calls   []*call  // by server; nil where no key went
	cursor  []int    // by server: where its next VALUE block starts
	out     []byte   // the merged reply
	pending atomic.Int32
	done    chan struct{}

	misses *atomic.Uint64 // counts the keys of failed servers
}

var multiGetPool = sync.Pool{New: func() any { return &multiGet{done: make(chan struct{}, 1)} }}

func newMultiGet(servers int, misses *atomic.Uint64) *multiGet {
	m := multiGetPool.Get().(*multiGet)
	m.misses = misses
	m.keys, m.server = m.keys[:0], m.server[:0]
	m.calls = slices.Grow(m.calls[:0], servers)[:servers]
	m.cursor = slices.Grow(m.cursor[:0], servers)[:servers]
	return m
}

// finished counts one part answered (or failed).
func (m *multiGet) finished() {
	if m.pending.Add(-1) == 0 {
		m.done <- struct{}{}
	}
}

// write writes the merged reply with one Write: larger than the client's
// buffer, it goes to the socket in one write rather than one per 4 KiB.
func (m *multiGet) write(w *bufio.Writer) {
	<-m.done
	w.Write(m.bytes())
	m.release()
}

// bytes merges the servers' VALUE blocks into the client's key order. Each
// server answers its keys in the order it was asked, leaving out misses, so
// one cursor per server suffices. A failed server's keys are misses.
func (m *multiGet) bytes() []byte {
	for _, sc := range m.calls {
		// A client error (bad exptime) is the same from every server.
		if sc != nil && sc.err == nil && bytes.HasPrefix(sc.reply, []byte("CLIENT_ERROR ")) {
			return sc.reply
		}
	}
	out := m.out[:0]
	clear(m.cursor)
	for i, k := range m.keys {
		p := m.server[i]
		sc := m.calls[p]
		if sc.err != nil || bytes.HasPrefix(sc.reply, []byte("SERVER_ERROR ")) {
			m.misses.Add(1)
			continue
		}
		key, end := nextValue(sc.reply, m.cursor[p])
		if end > 0 && bytes.Equal(key, k) {
			out = append(out, sc.reply[m.cursor[p]:end]...)
			m.cursor[p] = end
		}
	}
	m.out = append(out, replyEND...)
	return m.out
}

// release returns a written multi-get and its parts to their pools.
func (m *multiGet) release() {
	for i, sc := range m.calls {
		if sc != nil {
			sc.release()
			m.calls[i] = nil
		}
	}
	clear(m.keys)
	if cap(m.out) > 64<<10 {
		m.out = nil // do not pin large buffers
	}
	m.misses = nil
	multiGetPool.Put(m)
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
