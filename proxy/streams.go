package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// Two commands make a server stream rather than answer, and so get a
// connection of their own to each server instead of the shared pipelined
// ones: lru_crawler's dumps and watch.

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
	d := &dump{line: append(append([]byte(nil), line...), crlf...), timeout: c.env.timeout}
	for _, b := range c.env.routes.topo.Load().cache {
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

// watchLogs streams the servers' logs to the client; false once the
// stream has ended the connection.
func (c *clientConn) watchLogs(line []byte) bool {
	stream, refused := c.openLogStream(line)
	if stream == nil {
		c.send(refused)
		return true
	}
	c.send(stream)
	// The connection is the stream's now: memcached ignores what the
	// client sends, and so does the proxy; hanging up ends the stream.
	io.Copy(io.Discard, c.br)
	c.cancel()
	return false
}

// openLogStream asks every server to watch. When one refuses (a bad
// argument) or fails, it returns that answer instead, and the client's
// connection goes on as before.
func (c *clientConn) openLogStream(line []byte) (*logStream, reply) {
	ls := &logStream{ctx: c.ctx, client: c.nc}
	out := append(append([]byte(nil), line...), crlf...)
	timeout := c.env.timeout
	for _, b := range c.env.routes.topo.Load().cache {
		nc, err := net.DialTimeout("tcp", b.addr, timeout)
		if err != nil {
			ls.close()
			return nil, readyReply(serverError(errServerDown))
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
				return nil, readyReply(serverError(errServerDown))
			}
			return nil, readyReply(append([]byte(nil), first...))
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
