package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"slices"
)

// maxReplyLine bounds one line of a server reply; memcached's are short.
const maxReplyLine = 8 << 10

// readReply reads the server's reply to c, in the shape c expects, and
// appends it to c.reply. Any error means the connection's framing is lost.
func readReply(br *bufio.Reader, c *call) error {
	for {
		line, err := readServerLine(br)
		if err != nil {
			return err
		}
		if c.shape == shapeQuiet && bytes.Equal(line, replyMN) {
			return nil
		}
		c.reply = append(c.reply, line...)
		if n, ok := dataLength(line); ok {
			if c.reply, err = readData(br, c.reply, n); err != nil {
				return err
			}
		}
		switch c.shape {
		case shapeSingle:
			return nil
		case shapeUntilEnd:
			if bytes.Equal(line, replyEND) || isErrorLine(line) {
				return nil
			}

		}
	}
}

func readServerLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || err == nil && !bytes.HasSuffix(line, crlf) || len(line) > maxReplyLine {
		return nil, fmt.Errorf("%w: line framing", errServerReply)
	}
	return line, err
}

// dataLength finds the size of the data block announced by a VALUE or VA line.
func dataLength(line []byte) (int, bool) {
	var field []byte
	switch {
	case bytes.HasPrefix(line, prefixVAL): // VALUE <key> <flags> <bytes> [<cas>]
		rest := line[len(prefixVAL) : len(line)-2]
		for i := 0; i < 2; i++ { // skip key and flags
			sp := bytes.IndexByte(rest, ' ')
			if sp < 0 {
				return 0, false
			}
			rest = rest[sp+1:]
		}
		if i := bytes.IndexByte(rest, ' '); i >= 0 {
			rest = rest[:i]
		}
		field = rest
	case bytes.HasPrefix(line, prefixVA): // VA <size> <flags>*
		rest := line[3 : len(line)-2]
		if i := bytes.IndexByte(rest, ' '); i >= 0 {
			rest = rest[:i]
		}
		field = rest
	default:
		return 0, false
	}
	n, ok := parseUint(field, 31)
	return int(n), ok
}

// readData appends a data block of n bytes and its CRLF to dst.
func readData(br *bufio.Reader, dst []byte, n int) ([]byte, error) {
	start := len(dst)
	dst = slices.Grow(dst, n+2)[:start+n+2]
	if _, err := io.ReadFull(br, dst[start:]); err != nil {
		return dst, err
	}
	if !bytes.HasSuffix(dst, crlf) {
		return dst, fmt.Errorf("%w: data block", errServerReply)
	}
	return dst, nil
}

func isErrorLine(line []byte) bool {
	return bytes.HasPrefix(line, []byte("ERROR")) ||
		bytes.HasPrefix(line, []byte("CLIENT_ERROR ")) ||
		bytes.HasPrefix(line, []byte("SERVER_ERROR "))
}
