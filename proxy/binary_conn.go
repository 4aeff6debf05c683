package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strconv"
)

// binCommands names each opcode's text command, for the counters.
var binCommands = map[byte]command{
	opGet: cmdGet, opGetQ: cmdGet, opGetK: cmdGet, opGetKQ: cmdGet,
	opGAT: cmdGat, opGATQ: cmdGat, opGATK: cmdGat, opGATKQ: cmdGat, opTouch: cmdTouch,
	opSet: cmdSet, opSetQ: cmdSet, opAdd: cmdAdd, opAddQ: cmdAdd, opReplace: cmdReplace, opReplaceQ: cmdReplace,
	opAppend: cmdAppend, opAppendQ: cmdAppend, opPrepend: cmdPrepend, opPrependQ: cmdPrepend,
	opDelete: cmdDelete, opDeleteQ: cmdDelete,
	opIncrement: cmdIncr, opIncrementQ: cmdIncr, opDecrement: cmdDecr, opDecrementQ: cmdDecr,
	opQuit: cmdQuit, opQuitQ: cmdQuit, opNoop: cmdMetaNoop, opVersion: cmdVersion,
	opFlush: cmdFlushAll, opFlushQ: cmdFlushAll, opStat: cmdStats,
}

// serveBinary reads binary requests until the client quits, hangs up, or
// breaks the framing.
func (c *clientConn) serveBinary() {
	var r binRequest
	for !c.stopping.Load() {
		if err := readBinRequest(c.br, &r); err != nil {
			c.sawEOF = errors.Is(err, io.EOF)
			switch err {
			case errBinInvalid:
				c.send(readyReply(binError(&r, statusInvalid, "")))
			case errBinLength:
				c.send(readyReply(binError(&r, statusUnknown, "")))
			}
			return
		}
		c.env.counters.commands.Add(1)
		if !c.handleBinary(&r) {
			return
		}
	}
}

// handleBinary carries out one request; false when the connection ends.
func (c *clientConn) handleBinary(r *binRequest) bool {
	cmd, known := binCommands[r.opcode]
	// Verbosity and SASL among them, as memcached 1.6 without SASL answers
	// them. (memcached 1.6 then reads a verbosity's extras as the next
	// header and hangs up; the proxy goes on.)
	if !known {
		if _, err := c.br.Discard(r.valueLen); err != nil {
			return false
		}
		c.send(readyReply(binError(r, statusUnknown, "")))
		return true
	}
	c.env.metrics.commands[cmd].Inc()
	switch r.opcode {
	case opNoop:
		c.send(readyReply(binPacket(nil, r, statusOK, 0, nil, nil, nil)))
	case opQuit:
		c.send(readyReply(binPacket(nil, r, statusOK, 0, nil, nil, nil)))
		return false
	case opQuitQ:
		return false
	case opVersion, opFlush, opFlushQ, opStat:
		c.send(c.binFanout(r))
	default:
		return c.binKeyed(r)
	}
	return true
}

// binKeyed translates a request on one key into a meta command to the
// key's server.
func (c *clientConn) binKeyed(r *binRequest) bool {
	refuse := func(status binStatus, text string) bool {
		if _, err := c.br.Discard(r.valueLen); err != nil {
			return false
		}
		c.send(readyReply(binError(r, status, text)))
		return true
	}
	if p := c.env.prefix; len(p) > 0 && bytes.HasPrefix(r.key, p) {
		return refuse(statusInvalid, "key is reserved for locks")
	}
	if r.valueLen > c.env.maxItemSize {
		return c.binTooLarge(r)
	}
	call := newCall(shapeSingle, c.env.timeout)
	out, ok := appendMeta(call.out, r)
	call.out = out
	if !ok {
		call.release()
		return refuse(statusInvalid, "key needs base64 and is too long for it")
	}
	if shape := binShapes[r.opcode]; shape.value {
		start := len(call.out)
		call.out = append(call.out, make([]byte, r.valueLen)...)
		if _, err := io.ReadFull(c.br, call.out[start:]); err != nil {
			call.release()
			return false
		}
		call.out = append(call.out, crlf...)
	}
	c.env.routes.topo.Load().pick(r.key).send(c.pin, call)
	c.send(newBinReply(r, call))
	return true
}

// appendMeta writes the meta command for r (without a value); false when
// the key cannot be carried.
func appendMeta(out []byte, r *binRequest) ([]byte, bool) {
	var verb, flags string
	switch r.opcode {
	case opGet, opGetQ, opGetK, opGetKQ:
		verb, flags = "mg ", " v f c"
	case opGAT, opGATQ, opGATK, opGATKQ:
		verb, flags = "mg ", " v f c T"
	case opTouch:
		verb, flags = "mg ", " f c T"
	case opSet, opSetQ, opAdd, opAddQ, opReplace, opReplaceQ, opAppend, opAppendQ, opPrepend, opPrependQ:
		verb = "ms "
	case opDelete, opDeleteQ:
		verb = "md "
	case opIncrement, opIncrementQ, opDecrement, opDecrementQ:
		verb, flags = "ma ", " v c"
	}
	out = append(out, verb...)
	out, b64, ok := metaKey(out, r.key)
	if !ok {
		return out, false
	}
	if verb == "ms " {
		out = strconv.AppendInt(append(out, ' '), int64(r.valueLen), 10)
	}
	if b64 {
		out = append(out, " b"...)
	}
	out = appendExtras(append(out, flags...), r)
	if r.cas != 0 && verb != "mg " {
		out = strconv.AppendUint(append(out, " C"...), r.cas, 10)
	}
	return append(out, crlf...), true
}

// appendExtras writes as meta flags what the request's extras carry:
// flags, expiry, mode, delta and initial value.
func appendExtras(out []byte, r *binRequest) []byte {
	x := r.extras
	switch r.opcode {
	case opGAT, opGATQ, opGATK, opGATKQ, opTouch:
		out = strconv.AppendUint(out, uint64(binary.BigEndian.Uint32(x)), 10)
	case opSet, opSetQ, opAdd, opAddQ, opReplace, opReplaceQ:
		out = strconv.AppendUint(append(out, " F"...), uint64(binary.BigEndian.Uint32(x)), 10)
		out = strconv.AppendUint(append(out, " T"...), uint64(binary.BigEndian.Uint32(x[4:])), 10)
		switch r.opcode {
		case opSet, opSetQ:
			out = append(out, " c MS"...)
		case opAdd, opAddQ:
			out = append(out, " c ME"...)
		default:
			out = append(out, " c MR"...)
		}
	case opAppend, opAppendQ:
		out = append(out, " c MA"...)
	case opPrepend, opPrependQ:
		out = append(out, " c MP"...)
	case opIncrement, opIncrementQ, opDecrement, opDecrementQ:
		out = strconv.AppendUint(append(out, " D"...), binary.BigEndian.Uint64(x), 10)
		if exp := binary.BigEndian.Uint32(x[16:]); exp != 0xffffffff { // else: no auto-create
			out = strconv.AppendUint(append(out, " N"...), uint64(exp), 10)
			out = strconv.AppendUint(append(out, " J"...), binary.BigEndian.Uint64(x[8:]), 10)
		}
		if r.opcode == opIncrement || r.opcode == opIncrementQ {
			out = append(out, " MI"...)
		} else {
			out = append(out, " MD"...)
		}
	}
	return out
}

// binTooLarge drops a value over the size limit. As memcached does, a set
// that fails this way also removes the key's old value.
func (c *clientConn) binTooLarge(r *binRequest) bool {
	var del *call
	if r.opcode == opSet || r.opcode == opSetQ {
		del = newCall(shapeQuiet, c.env.timeout)
		var ok bool
		if del.out, ok = appendMeta(del.out, &binRequest{opcode: opDelete, key: r.key}); ok {
			del.out = append(del.out[:len(del.out)-2], " q\r\n"...)
			c.env.routes.topo.Load().pick(r.key).send(c.pin, del)
		} else {
			del.release()
			del = nil
		}
	}
	_, err := c.br.Discard(r.valueLen)
	ok := err == nil
	c.send(&tooLarge{del: del, quiet: true})
	if ok {
		c.send(readyReply(binError(r, statusTooLarge, "")))
	}
	return ok
}

// binReply turns the server's meta reply into the binary response.
type binReply struct {
	req  binRequest // extras and value not kept
	call *call
}

func newBinReply(r *binRequest, call *call) *binReply {
	b := &binReply{req: *r, call: call}
	b.req.key = append([]byte(nil), r.key...)
	b.req.extras = nil
	return b
}

func (b *binReply) write(w *bufio.Writer) {
	b.call.wait()
	defer b.call.release()
	if p := b.packet(); p != nil {
		w.Write(p)
	}
}

// packet is the response, or nil when a quiet request has none.
func (b *binReply) packet() []byte {
	r, c := &b.req, b.call
	if c.err != nil {
		return binError(r, statusTempFail, c.err.Error())
	}
	eol := bytes.IndexByte(c.reply, '\n')
	if eol < 1 {
		return binError(r, statusTempFail, errServerReply.Error())
	}
	line := c.reply[:eol-1]
	data := c.reply[eol+1:]
	if len(data) >= 2 {
		data = data[:len(data)-2]
	}
	return metaToBinary(r, line, data)
}

// metaToBinary turns a meta reply line and its data into the response to r,
// or nil when a quiet request has none.
func metaToBinary(r *binRequest, line, data []byte) []byte {
	code, flags, cas := metaReplyFields(line)
	quiet := r.quiet()
	var key []byte
	if r.opcode == opGetK || r.opcode == opGetKQ || r.opcode == opGATK || r.opcode == opGATKQ {
		key = r.key
	}
	switch code {
	case "VA":
		if r.opcode == opIncrement || r.opcode == opIncrementQ || r.opcode == opDecrement || r.opcode == opDecrementQ {
			if quiet {
				return nil
			}
			n, _ := strconv.ParseUint(string(bytes.TrimSpace(data)), 10, 64)
			return binPacket(nil, r, statusOK, cas, nil, nil, binary.BigEndian.AppendUint64(nil, n))
		}
		return binPacket(nil, r, statusOK, cas, binary.BigEndian.AppendUint32(nil, flags), key, data)
	case "HD":
		if quiet {
			return nil
		}
		if r.opcode == opTouch {
			return binPacket(nil, r, statusOK, cas, binary.BigEndian.AppendUint32(nil, flags), nil, nil)
		}
		if r.opcode == opDelete {
			cas = 0
		}
		return binPacket(nil, r, statusOK, cas, nil, nil, nil)
	case "EN", "NF":
		if key != nil { // getk and gatk misses carry the key instead of words
			if quiet {
				return nil
			}
			return binPacket(nil, r, statusNotFound, 0, nil, key, nil)
		}
		if quiet && code == "EN" {
			return nil
		}
		return binError(r, statusNotFound, "")
	case "EX":
		return binError(r, statusExists, "")
	case "NS":
		switch r.opcode {
		case opAdd, opAddQ:
			return binError(r, statusExists, "")
		case opReplace, opReplaceQ:
			return binError(r, statusNotFound, "")
		}
		return binError(r, statusNotStored, "")
	}
	return binServerError(r, line)
}

// binServerError turns memcached's error line into the binary status.
func binServerError(r *binRequest, line []byte) []byte {
	switch {
	case bytes.Contains(line, []byte("non-numeric")):
		return binError(r, statusNonNumeric, "")
	case bytes.Contains(line, []byte("too large")):
		return binError(r, statusTooLarge, "")
	case bytes.Contains(line, []byte("out of memory")):
		return binError(r, statusNoMemory, "")
	case bytes.HasPrefix(line, []byte("CLIENT_ERROR")):
		return binError(r, statusInvalid, "")
	}
	return binError(r, statusTempFail, string(line))
}

// metaReplyFields reads a meta reply line: its code, and the f and c flags.
func metaReplyFields(line []byte) (code string, flags uint32, cas uint64) {
	var toks [16][]byte
	t := tokenize(line, toks[:0])
	if len(t) == 0 {
		return "", 0, 0
	}
	code = string(t[0])
	for _, tok := range t[1:] {
		switch tok[0] {
		case 'f':
			v, _ := strconv.ParseUint(string(tok[1:]), 10, 32)
			flags = uint32(v)
		case 'c':
			cas, _ = strconv.ParseUint(string(tok[1:]), 10, 64)
		}
	}
	return code, flags, cas
}

// binFanout sends version, flush and stat as their text commands to every
// server, merged as for text clients, and translates the merged answer.
func (c *clientConn) binFanout(r *binRequest) reply {
	var line []byte
	switch r.opcode {
	case opVersion:
		line = []byte("version")
	case opFlush, opFlushQ:
		line = []byte("flush_all")
		if len(r.extras) == 4 {
			line = strconv.AppendUint(append(line, ' '), uint64(binary.BigEndian.Uint32(r.extras)), 10)
		}
	case opStat:
		line = []byte("stats")
		if len(r.key) > 0 {
			if bytes.ContainsAny(r.key, "\r\n") {
				return readyReply(binError(r, statusNotFound, ""))
			}
			line = append(append(line, ' '), r.key...)
		}
	}
	if err := parse(line, &c.req); err != nil || c.req.cmd != binCommands[r.opcode] {
		return readyReply(binError(r, statusNotFound, ""))
	}
	b := &binFanout{req: *r, text: c.fanout(line)}
	b.req.key, b.req.extras = nil, nil
	return b
}

type binFanout struct {
	req  binRequest
	text reply
}

func (b *binFanout) write(w *bufio.Writer) {
	var buf bytes.Buffer
	tw := bufio.NewWriter(&buf)
	b.text.write(tw)
	tw.Flush()
	r := &b.req
	text := buf.Bytes()
	if isErrorLine(text) {
		if bytes.HasPrefix(text, []byte("SERVER_ERROR")) {
			w.Write(binError(r, statusTempFail, string(bytes.TrimSpace(text))))
		} else {
			w.Write(binError(r, statusNotFound, "")) // an unknown stats group
		}
		return
	}
	switch r.opcode {
	case opVersion:
		v := bytes.TrimPrefix(bytes.TrimSpace(text), []byte("VERSION "))
		w.Write(binPacket(nil, r, statusOK, 0, nil, nil, v))
	case opFlush, opFlushQ:
		if r.opcode == opFlush {
			w.Write(binPacket(nil, r, statusOK, 0, nil, nil, nil))
		}
	case opStat:
		for _, l := range bytes.Split(text, crlf) {
			if name, value, ok := parseStat(l); ok {
				w.Write(binPacket(nil, r, statusOK, 0, nil, name, value))
			}
		}
		w.Write(binPacket(nil, r, statusOK, 0, nil, nil, nil))
	}
}
