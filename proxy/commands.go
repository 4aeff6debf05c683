package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
)

// handle carries out one command line. It returns false when the
// connection must close: the client quit, or the stream lost its framing.
func (c *clientConn) handle(line []byte) bool {
	r := &c.req
	if refused := parse(line, r); refused != nil {
		if c.env.logger.Enabled(context.Background(), slog.LevelDebug) {
			c.env.logger.Debug("command refused", "client", c.nc.RemoteAddr().String(), "err", refused.String())
		}
		if refused == refuseHTTP {
			return false
		}
		// memcached keeps quiet about a malformed line that ends in
		// noreply, once it has counted its arguments.
		if !r.noreply || r.cmd.isMeta() || refused == refuseUnknown {
			c.send(refused)
		}
		return true
	}
	c.env.metrics.commands[r.cmd].Inc()
	if r.touchesReserved(c.env.prefix) {
		if r.dataLen >= 0 && !c.skipData(r.dataLen) {
			return false
		}
		c.send(replyReserved)
		return true
	}
	switch r.cmd {
	case cmdGet, cmdGets, cmdGat, cmdGats:
		c.retrieve(line)
	case cmdSet, cmdAdd, cmdReplace, cmdAppend, cmdPrepend, cmdCas, cmdMetaSet:
		return c.store(line)
	case cmdIncr, cmdDecr, cmdTouch, cmdDelete, cmdMetaGet, cmdMetaDelete, cmdMetaArithmetic, cmdMetaDebug:
		call := c.newCall(line)
		c.env.routes.topo.Load().pick(r.key).send(c.pin, call)
		c.send(call)
	case cmdMetaNoop:
		c.send(replyMN)
	case cmdVerbosity:
		if !r.noreply {
			c.send(replyOK)
		}
	case cmdFlushAll, cmdVersion, cmdStats, cmdCacheMemlimit, cmdSlabs, cmdLruCrawler, cmdLru:
		c.send(c.fanout(line))
	case cmdShutdown:
		// The proxy never stops the servers it fronts: the answer of a
		// memcached started without -A.
		c.send(replyNoShutdown)
	case cmdWatch:
		return c.watchLogs(line)
	case cmdQuit:
		return false
	default:
		c.lockCommand()
	}
	return true
}

// newCall makes a call that forwards line as it is. Commands whose reply
// the client does not want are followed by a noop, so the proxy still sees
// where the server's answer ends, and passes on whatever memcached chose to
// say anyway.
func (c *clientConn) newCall(line []byte) *call {
	shape := shapeSingle
	if c.req.noreply {
		shape = shapeQuiet
	}
	call := newCall(shape, c.env.timeout)
	call.out = append(append(call.out, line...), crlf...)
	return call
}

// store forwards a storage command with its data block.
func (c *clientConn) store(line []byte) bool {
	r := &c.req
	n := r.dataLen
	if n > c.env.maxItemSize {
		return c.refuseTooLarge()
	}
	b := c.env.routes.topo.Load().pick(r.key) // before the data overwrites the line
	call := c.newCall(line)
	start := len(call.out)
	call.out = append(call.out, make([]byte, n+2)...)
	if _, err := io.ReadFull(c.br, call.out[start:]); err != nil {
		call.release()
		return false
	}
	if string(call.out[len(call.out)-2:]) != "\r\n" {
		call.release()
		c.send(replyBadChunk)
		return false
	}
	b.send(c.pin, call)
	c.send(call)
	return true
}

// refuseTooLarge drops a value over the size limit. As memcached does, a
// set (or meta set) that fails this way also removes the key's old value,
// so that nobody reads stale data; other storage commands leave it.
func (c *clientConn) refuseTooLarge() bool {
	r := &c.req
	var del *call
	if r.cmd == cmdSet || r.cmd == cmdMetaSet {
		del = newCall(shapeQuiet, c.env.timeout)
		del.out = append(append(append(del.out, "md "...), r.tokens[1]...), " q"...)
		if r.cmd == cmdMetaSet && !bytes.Equal(r.key, r.tokens[1]) {
			del.out = append(del.out, " b"...)
		}
		del.out = append(del.out, crlf...)
		c.env.routes.topo.Load().pick(r.key).send(c.pin, del)
	}
	quiet := r.noreply && r.cmd != cmdMetaSet // meta q never hides an error
	if !c.skipData(r.dataLen) {
		if del != nil {
			c.send(&tooLarge{del: del, quiet: true})
		}
		return false
	}
	if del != nil || !quiet {
		c.send(&tooLarge{del: del, quiet: quiet})
	}
	return true
}

// tooLarge answers a refused value once the old value is gone.
type tooLarge struct {
	del   *call // nil when nothing was removed
	quiet bool
}

func (t *tooLarge) write(w *bufio.Writer) {
	if t.del != nil {
		t.del.wait()
		t.del.release()
	}
	if !t.quiet {
		replyTooLarge.write(w)
	}
}

// skipData reads and drops a data block the proxy refuses.
func (c *clientConn) skipData(n int) bool {
	_, err := c.br.Discard(n + 2)
	return err == nil
}
