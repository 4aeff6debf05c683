package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
)

// Limits as memcached has them.
const (
	maxKeyLen  = 250
	maxLineLen = 2048 // command lines other than retrievals
)

type command uint8

const (
	cmdGet command = iota + 1
	cmdGets
	cmdGat
	cmdGats
	cmdSet
	cmdAdd
	cmdReplace
	cmdAppend
	cmdPrepend
	cmdCas
	cmdIncr
	cmdDecr
	cmdTouch
	cmdDelete
	cmdMetaGet
	cmdMetaSet
	cmdMetaDelete
	cmdMetaArithmetic
	cmdMetaDebug
	cmdMetaNoop
	cmdFlushAll
	cmdVersion
	cmdVerbosity
	cmdStats
	cmdQuit
	cmdCacheMemlimit
	cmdSlabs
	cmdLruCrawler
	cmdLru
	cmdShutdown
	cmdWatch
	cmdLock
	cmdRLock
	cmdUnlock
	cmdExtend
	cmdLockInfo
)

var commands = map[string]command{
	"get": cmdGet, "gets": cmdGets, "gat": cmdGat, "gats": cmdGats,
	"set": cmdSet, "add": cmdAdd, "replace": cmdReplace, "append": cmdAppend,
	"prepend": cmdPrepend, "cas": cmdCas,
	"incr": cmdIncr, "decr": cmdDecr, "touch": cmdTouch, "delete": cmdDelete,
	"mg": cmdMetaGet, "ms": cmdMetaSet, "md": cmdMetaDelete, "ma": cmdMetaArithmetic,
	"me": cmdMetaDebug, "mn": cmdMetaNoop,
	"flush_all": cmdFlushAll, "version": cmdVersion, "verbosity": cmdVerbosity,
	"stats": cmdStats, "quit": cmdQuit,
	"cache_memlimit": cmdCacheMemlimit, "slabs": cmdSlabs, "lru_crawler": cmdLruCrawler,
	"lru": cmdLru, "shutdown": cmdShutdown, "watch": cmdWatch,
	"lock": cmdLock, "rlock": cmdRLock, "unlock": cmdUnlock, "extend": cmdExtend,
	"lockinfo": cmdLockInfo,
}

func (c command) isLock() bool { return c >= cmdLock && c <= cmdLockInfo }

func (c command) isMeta() bool { return c >= cmdMetaGet && c <= cmdMetaNoop }

// A refusal is a line the proxy does not carry out, and memcached's
// answer to it. As a reply it writes that answer.
type refusal struct {
	answer readyReply // nil: hang up without a word
}

func (r *refusal) write(w *bufio.Writer) { w.Write(r.answer) }

// String is the answer without its line end, or "hang up", for the log.
func (r *refusal) String() string {
	if r.answer == nil {
		return "hang up"
	}
	return string(r.answer[:len(r.answer)-2])
}

var (
	refuseUnknown   = &refusal{replyERROR}
	refuseFormat    = &refusal{replyFormat}
	refuseDelete    = &refusal{replyDeleteUsage}
	refuseKeyDecode = &refusal{replyKeyDecode}
	// refuseHTTP: a line that looks like an HTTP request. memcached hangs
	// up on it without a word, and so does the proxy.
	refuseHTTP = &refusal{}
)

// request is one parsed command line. Its slices point into the line, which
// the connection owns until the request has been sent on.
type request struct {
	cmd     command
	tokens  [][]byte // all tokens, the verb first
	keys    [][]byte // retrievals: the keys
	key     []byte   // the routing key of a single-key command, decoded
	noreply bool     // classic noreply (set even on a line that is then refused, as memcached does), or meta quiet mode
	dataLen int      // length of the data block that follows, or -1
}

// tokenize splits a line on spaces as memcached does, reusing dst.
func tokenize(line []byte, dst [][]byte) [][]byte {
	dst = dst[:0]
	for i := 0; i < len(line); {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		start := i
		for i < len(line) && line[i] != ' ' {
			i++
		}
		if i > start {
			dst = append(dst, line[start:i])
		}
	}
	return dst
}

// parse turns one command line (without its line ending) into r, or
// refuses it with the exact reply memcached gives such a line; the
// connection goes on with the next line either way, as memcached does,
// unless the refusal is a hang-up.
func parse(line []byte, r *request) *refusal {
	r.tokens = tokenize(line, r.tokens)
	r.keys, r.key, r.noreply, r.dataLen = r.keys[:0], nil, false, -1
	if len(r.tokens) == 0 {
		return refuseUnknown
	}
	cmd, ok := commands[string(r.tokens[0])]
	if !ok {
		if bytes.HasPrefix(r.tokens[len(r.tokens)-1], []byte("HTTP/")) {
			return refuseHTTP
		}
		return refuseUnknown
	}
	r.cmd = cmd
	t := r.tokens
	n := len(t)
	switch cmd {
	case cmdGet, cmdGets, cmdGat, cmdGats:
		return parseRetrieval(r)
	case cmdSet, cmdAdd, cmdReplace, cmdAppend, cmdPrepend, cmdCas:
		return parseStorage(r)
	case cmdIncr, cmdDecr, cmdTouch:
		if n != 3 && n != 4 {
			return refuseUnknown
		}
		r.key, r.noreply = t[1], string(t[n-1]) == "noreply"
		if !validKey(t[1]) {
			return refuseFormat
		}
	case cmdDelete:
		return parseDelete(r)
	case cmdMetaGet, cmdMetaSet, cmdMetaDelete, cmdMetaArithmetic, cmdMetaDebug:
		return parseMeta(r)
	case cmdMetaNoop, cmdVersion, cmdQuit:
	case cmdFlushAll, cmdCacheMemlimit:
		r.noreply = string(t[n-1]) == "noreply"
	case cmdVerbosity:
		if n != 2 && n != 3 {
			return refuseUnknown
		}
		r.noreply = string(t[n-1]) == "noreply"
		if _, ok := parseUint(t[1], 32); !ok {
			return refuseFormat
		}
	case cmdStats, cmdSlabs, cmdLruCrawler, cmdLru, cmdShutdown, cmdWatch:
		// memcached judges the arguments; these reply even to "noreply".
	default: // lock commands check their own arguments
		if n >= 2 {
			r.key = t[1]
		}
	}
	return nil
}

// parseRetrieval reads the keys of get, gets, gat and gats.
func parseRetrieval(r *request) *refusal {
	t := r.tokens
	if len(t) < 2 {
		return refuseUnknown
	}
	first := 1
	if r.cmd == cmdGat || r.cmd == cmdGats {
		first = 2
	}
	for _, k := range t[min(first, len(t)):] {
		if !validKey(k) {
			return refuseFormat
		}
		r.keys = append(r.keys, k)
	}
	return nil
}

// parseStorage checks "<cmd> <key> <flags> <exptime> <bytes> [<cas>]
// [noreply]" and reads the key and data length.
func parseStorage(r *request) *refusal {
	t := r.tokens
	n := len(t)
	want := 5
	if r.cmd == cmdCas {
		want = 6
	}
	if n != want && n != want+1 {
		return refuseUnknown
	}
	r.noreply = string(t[n-1]) == "noreply"
	if !validKey(t[1]) {
		return refuseFormat
	}
	if _, ok := parseUint(t[2], 64); !ok { // memcached takes any 64-bit value and keeps 32 bits
		return refuseFormat
	}
	if _, ok := parseInt(t[3]); !ok {
		return refuseFormat
	}
	size, ok := parseInt(t[4])
	if !ok || size < 0 || size > 1<<31-3 {
		return refuseFormat
	}
	if r.cmd == cmdCas {
		if _, ok := parseUint(t[5], 64); !ok {
			return refuseFormat
		}
	}
	r.key, r.dataLen = t[1], int(size)
	return nil
}

// parseDelete checks "delete <key> [0] [noreply]".
func parseDelete(r *request) *refusal {
	t := r.tokens
	n := len(t)
	if n < 2 || n > 4 {
		return refuseUnknown
	}
	r.key, r.noreply = t[1], n > 2 && string(t[n-1]) == "noreply"
	if !validKey(t[1]) {
		return refuseFormat
	}
	// memcached accepts a legacy "0" hold time and nothing else.
	if rest := n - 2 - b2i(r.noreply); rest > 1 || rest == 1 && string(t[2]) != "0" {
		return refuseDelete
	}
	return nil
}

// touchesReserved reports whether an ordinary command names a key in the
// lock namespace; only the lock commands may reach lock state.
func (r *request) touchesReserved(prefix []byte) bool {
	if len(prefix) == 0 || r.cmd.isLock() {
		return false
	}
	if r.key != nil && bytes.HasPrefix(r.key, prefix) {
		return true
	}
	for _, k := range r.keys {
		if bytes.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// parseMeta reads the key (decoding base64 keys for routing), the quiet flag
// and, for ms, the data length. Other flags are memcached's to judge.
func parseMeta(r *request) *refusal {
	t := r.tokens
	if len(t) < 2 {
		if r.cmd == cmdMetaDebug {
			return refuseFormat // memcached's words for "me" alone
		}
		return refuseUnknown
	}
	if len(t[1]) > maxKeyLen {
		return refuseFormat
	}
	flags := t[2:]
	if r.cmd == cmdMetaSet {
		if len(t) < 3 {
			return refuseFormat
		}
		size, ok := parseInt(t[2])
		if !ok || size < 0 || size > 1<<31-3 {
			return refuseFormat
		}
		r.dataLen = int(size)
		flags = t[3:]
	}
	base64Key := false
	for _, f := range flags {
		switch f[0] {
		case 'q':
			r.noreply = true
		case 'b':
			base64Key = true
		}
	}
	r.key = t[1]
	if base64Key {
		dec := make([]byte, base64.StdEncoding.DecodedLen(len(t[1])))
		n, err := base64.StdEncoding.Decode(dec, t[1])
		if err != nil || n == 0 {
			return refuseKeyDecode
		}
		r.key = dec[:n]
	} else if !validKey(r.key) {
		return refuseFormat
	}
	return nil
}

// validKey: 1 to 250 bytes, no NUL (memcached cuts a key there, so the
// proxy would route one key and memcached read another). Tokens never hold
// spaces or line ends; other control bytes are accepted because memcached
// accepts them and clients use them (memcaslap's keys begin with 0x10
// bytes): refusing them would break programs that work against memcached.
func validKey(k []byte) bool {
	return len(k) > 0 && len(k) <= maxKeyLen && bytes.IndexByte(k, 0) < 0
}

// validName: lock names and the lock prefix, which the proxy itself writes
// into meta commands and shows in lockinfo: printable bytes only.
func validName(k []byte) bool {
	if !validKey(k) {
		return false
	}
	for _, c := range k {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// parseUint accepts what C's strtoul accepts in a whole token (an optional
// '+', digits) and refuses what memcached's safe_strtoul refuses: signs that
// wrap, overflow, trailing junk.
func parseUint(b []byte, bits uint) (uint64, bool) {
	if len(b) > 0 && b[0] == '+' {
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	if bits < 64 && v >= 1<<bits {
		return 0, false
	}
	return v, true
}

// parseInt accepts what C's strtol accepts in a whole token.
func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	} else if len(b) > 0 && b[0] == '+' {
		b = b[1:]
	}
	v, ok := parseUint(b, 64)
	if !ok || v > 1<<63 || (!neg && v == 1<<63) {
		return 0, false
	}
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
