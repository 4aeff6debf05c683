package proxy

import (
	"bufio"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
)

// memcached's binary protocol. A connection whose first byte is 0x80 speaks
// it, as memcached decides. Each request is translated into a meta command
// (or, for the whole-cache ones, the text command) on the same shared
// server connections that text clients use; the server's meta reply is
// translated back. Lock commands exist in the text protocol only.

const (
	binRequestMagic  = 0x80
	binResponseMagic = 0x81
	binHeaderLen     = 24
)

// Opcodes memcached 1.6 answers.
const (
	opGet        = 0x00
	opSet        = 0x01
	opAdd        = 0x02
	opReplace    = 0x03
	opDelete     = 0x04
	opIncrement  = 0x05
	opDecrement  = 0x06
	opQuit       = 0x07
	opFlush      = 0x08
	opGetQ       = 0x09
	opNoop       = 0x0a
	opVersion    = 0x0b
	opGetK       = 0x0c
	opGetKQ      = 0x0d
	opAppend     = 0x0e
	opPrepend    = 0x0f
	opStat       = 0x10
	opSetQ       = 0x11
	opAddQ       = 0x12
	opReplaceQ   = 0x13
	opDeleteQ    = 0x14
	opIncrementQ = 0x15
	opDecrementQ = 0x16
	opQuitQ      = 0x17
	opFlushQ     = 0x18
	opAppendQ    = 0x19
	opPrependQ   = 0x1a
	opTouch      = 0x1c
	opGAT        = 0x1d
	opGATQ       = 0x1e
	opGATK       = 0x23
	opGATKQ      = 0x24
)

// Response statuses, with the words memcached puts in the body.
type binStatus uint16

const (
	statusOK         binStatus = 0x00
	statusNotFound   binStatus = 0x01
	statusExists     binStatus = 0x02
	statusTooLarge   binStatus = 0x03
	statusInvalid    binStatus = 0x04
	statusNotStored  binStatus = 0x05
	statusNonNumeric binStatus = 0x06
	statusUnknown    binStatus = 0x81
	statusNoMemory   binStatus = 0x82
	statusTempFail   binStatus = 0x86
)

var statusText = map[binStatus]string{
	statusNotFound:   "Not found",
	statusExists:     "Data exists for key.",
	statusTooLarge:   "Too large.",
	statusInvalid:    "Invalid arguments",
	statusNotStored:  "Not stored.",
	statusNonNumeric: "Non-numeric server-side value for incr or decr",
	statusUnknown:    "Unknown command",
	statusNoMemory:   "Out of memory",
}

// binRequest is one request's header and, once read, its extras and key;
// a value is read straight into the server call.
type binRequest struct {
	opcode   byte
	keyLen   int
	extLen   int
	bodyLen  int
	opaque   uint32
	cas      uint64
	extras   []byte
	key      []byte
	valueLen int
}

// quiet: the opcode's reply is left out when it has nothing to tell (a
// miss for the gets, success for the others).
func (r *binRequest) quiet() bool {
	switch r.opcode {
	case opGetQ, opGetKQ, opGATQ, opGATKQ, opSetQ, opAddQ, opReplaceQ, opDeleteQ,
		opIncrementQ, opDecrementQ, opQuitQ, opFlushQ, opAppendQ, opPrependQ:
		return true
	}
	return false
}

// shape is what an opcode's body must hold: its extras length, whether a
// key is required (1), forbidden (-1) or optional (0), and whether a value
// may follow.
type binShape struct {
	extras []int
	key    int
	value  bool
}

var binShapes = map[byte]binShape{
	opGet: {[]int{0}, 1, false}, opGetQ: {[]int{0}, 1, false}, opGetK: {[]int{0}, 1, false}, opGetKQ: {[]int{0}, 1, false},
	opSet: {[]int{8}, 1, true}, opSetQ: {[]int{8}, 1, true}, opAdd: {[]int{8}, 1, true}, opAddQ: {[]int{8}, 1, true},
	opReplace: {[]int{8}, 1, true}, opReplaceQ: {[]int{8}, 1, true},
	opAppend: {[]int{0}, 1, true}, opAppendQ: {[]int{0}, 1, true}, opPrepend: {[]int{0}, 1, true}, opPrependQ: {[]int{0}, 1, true},
	opDelete: {[]int{0}, 1, false}, opDeleteQ: {[]int{0}, 1, false},
	opIncrement: {[]int{20}, 1, false}, opIncrementQ: {[]int{20}, 1, false},
	opDecrement: {[]int{20}, 1, false}, opDecrementQ: {[]int{20}, 1, false},
	opTouch: {[]int{4}, 1, false}, opGAT: {[]int{4}, 1, false}, opGATQ: {[]int{4}, 1, false},
	opGATK: {[]int{4}, 1, false}, opGATKQ: {[]int{4}, 1, false},
	opQuit: {[]int{0}, -1, false}, opQuitQ: {[]int{0}, -1, false}, opNoop: {[]int{0}, -1, false},
	opVersion: {[]int{0}, -1, false}, opFlush: {[]int{0, 4}, -1, false}, opFlushQ: {[]int{0, 4}, -1, false},
	opStat: {[]int{0}, 0, false},
}

var (
	errBinMagic   = errors.New("proxy: not a binary request")
	errBinInvalid = errors.New("proxy: invalid binary request")       // memcached: "Invalid arguments", and closes
	errBinLength  = errors.New("proxy: binary body shorter than key") // memcached: "Unknown command", and closes
)

// readBinRequest reads one request's header, extras and key from br into
// r; the value, r.valueLen bytes, is left for the caller. errBinMagic,
// errBinInvalid and errBinLength mean the stream cannot be trusted
// (memcached closes it); an unknown opcode is not an error here. It reads
// at most 24+255+250 bytes, however long the body claims to be.
func readBinRequest(br *bufio.Reader, r *binRequest) error {
	var h [binHeaderLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return err
	}
	if h[0] != binRequestMagic {
		return errBinMagic
	}
	r.opcode = h[1]
	r.keyLen = int(binary.BigEndian.Uint16(h[2:]))
	r.extLen = int(h[4])
	r.bodyLen = int(binary.BigEndian.Uint32(h[8:]))
	r.opaque = binary.BigEndian.Uint32(h[12:])
	r.cas = binary.BigEndian.Uint64(h[16:])
	r.extras, r.key, r.valueLen = r.extras[:0], r.key[:0], 0
	if r.keyLen+r.extLen > r.bodyLen {
		return errBinLength
	}
	shape, known := binShapes[r.opcode]
	if !known {
		r.valueLen = r.bodyLen // dropped unread by the caller
		return nil
	}
	if !shape.allows(r) {
		return errBinInvalid
	}
	buf := make([]byte, r.extLen+r.keyLen)
	if _, err := io.ReadFull(br, buf); err != nil {
		return err
	}
	r.extras, r.key = buf[:r.extLen], buf[r.extLen:]
	r.valueLen = r.bodyLen - r.extLen - r.keyLen
	return nil
}

func (s binShape) allows(r *binRequest) bool {
	extrasOK := false
	for _, n := range s.extras {
		extrasOK = extrasOK || r.extLen == n
	}
	switch {
	case !extrasOK, s.key == 1 && (r.keyLen == 0 || r.keyLen > maxKeyLen), s.key == -1 && r.keyLen != 0:
		return false
	case r.keyLen > maxKeyLen:
		return false
	}
	return s.value || r.bodyLen == r.extLen+r.keyLen
}

// binPacket appends one response packet to dst.
func binPacket(dst []byte, r *binRequest, status binStatus, cas uint64, extras, key, value []byte) []byte {
	var h [binHeaderLen]byte
	h[0], h[1] = binResponseMagic, r.opcode
	binary.BigEndian.PutUint16(h[2:], uint16(len(key)))
	h[4] = byte(len(extras))
	binary.BigEndian.PutUint16(h[6:], uint16(status))
	binary.BigEndian.PutUint32(h[8:], uint32(len(extras)+len(key)+len(value)))
	binary.BigEndian.PutUint32(h[12:], r.opaque)
	binary.BigEndian.PutUint64(h[16:], cas)
	dst = append(dst, h[:]...)
	dst = append(dst, extras...)
	dst = append(dst, key...)
	return append(dst, value...)
}

// binError is a packet with an error status and memcached's words for it.
func binError(r *binRequest, status binStatus, text string) []byte {
	if text == "" {
		text = statusText[status]
	}
	return binPacket(nil, r, status, 0, nil, nil, []byte(text))
}

// metaKey writes a binary key as a meta command's key token: as it is when
// the text protocol can carry it, else in base64 with the b flag set.
// Keys that need base64 and are longer than 187 bytes do not fit in a
// token (memcached limits the encoded form to 250 bytes): false.
func metaKey(dst, key []byte) ([]byte, bool, bool) {
	plain := true
	for _, c := range key {
		if c == ' ' || c == '\r' || c == '\n' || c == 0 {
			plain = false
			break
		}
	}
	if plain {
		return append(dst, key...), false, true
	}
	n := base64.StdEncoding.EncodedLen(len(key))
	if n > maxKeyLen {
		return dst, true, false
	}
	return base64.StdEncoding.AppendEncode(dst, key), true, true
}
