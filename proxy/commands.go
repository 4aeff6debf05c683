package proxy

import (
	"io"
)

// handle carries out one command line. It returns false when the
// connection must close: the client quit, or the stream lost its framing.
func (c *clientConn) handle(line []byte) bool {
	r := &c.req
	if err := parse(line, r); err != nil {
		c.s.cfg.Logger.Debug("command refused", "client", c.nc.RemoteAddr().String(), "err", err)
		c.send(errorReply(err))
		return true
	}
	c.s.metrics.commands[r.cmd].Inc()
	if r.touchesReserved(c.s.prefix) {
		if r.dataLen >= 0 && !c.skipData(r.dataLen) {
			return false
		}
		c.send(staticReply(errReserved.Error() + "\r\n"))
		return true
	}
	switch r.cmd {
	case cmdGet, cmdGets, cmdGat, cmdGats:
		c.retrieve(line)
	case cmdSet, cmdAdd, cmdReplace, cmdAppend, cmdPrepend, cmdCas, cmdMetaSet:
		return c.store(line)
	case cmdIncr, cmdDecr, cmdTouch, cmdDelete, cmdMetaGet, cmdMetaDelete, cmdMetaArithmetic, cmdMetaDebug:
		call := c.newCall(line)
		c.s.topo.Load().pick(r.key).send(c.pin, call)
		c.send(call)
	case cmdMetaNoop:
		c.send(replyNoop)
	case cmdVerbosity:
		if !r.noreply {
			c.send(replyOKStatic)
		}
	case cmdFlushAll, cmdVersion, cmdStats:
		c.send(c.fanout(line))
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
	call := newCall(shape, c.s.cfg.Timeout)
	call.out = append(append(call.out, line...), crlf...)
	return call
}

// store forwards a storage command with its data block.
func (c *clientConn) store(line []byte) bool {
	r := &c.req
	n := r.dataLen
	if n > c.s.cfg.MaxItemSize {
		if !c.skipData(n) {
			return false
		}
		if !r.noreply {
			c.send(replyTooLarge)
		}
		return true
	}
	b := c.s.topo.Load().pick(r.key) // before the data overwrites the line
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

// skipData reads and drops a data block the proxy refuses.
func (c *clientConn) skipData(n int) bool {
	_, err := c.br.Discard(n + 2)
	return err == nil
}
