package proxy

import (
	"bufio"
	"strings"
	"testing"
	"testing/iotest"
)

// readReply must find where each shape of reply ends whatever pieces the
// bytes arrive in: fed one byte at a time here, as nats-server feeds its
// parser.
func TestReadReplyOneByteAtATime(t *testing.T) {
	for _, tc := range []struct {
		shape replyShape
		in    string
		want  string
	}{
		{shapeSingle, "STORED\r\nnext", "STORED\r\n"},
		{shapeSingle, "VA 5 c9\r\nhello\r\nnext", "VA 5 c9\r\nhello\r\n"},
		{shapeSingle, "VA 0\r\n\r\nnext", "VA 0\r\n\r\n"},
		{shapeUntilEnd, "VALUE a 0 2\r\nhi\r\nVALUE b 1 3 7\r\nEND\r\n\r\nEND\r\nnext", "VALUE a 0 2\r\nhi\r\nVALUE b 1 3 7\r\nEND\r\n\r\nEND\r\n"},
		{shapeUntilEnd, "STAT pid 1\r\nSTAT uptime 2\r\nEND\r\nnext", "STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n"},
		{shapeUntilEnd, "SERVER_ERROR out of memory\r\nnext", "SERVER_ERROR out of memory\r\n"},
		// A value that reads "MN" is data, not the end of a quiet reply.
		{shapeQuiet, "HD c3\r\nVA 2\r\nMN\r\nEN\r\nMN\r\nnext", "HD c3\r\nVA 2\r\nMN\r\nEN\r\n"},
		{shapeQuiet, "EN\r\nMN\r\nnext", "EN\r\n"},
		{shapeQuiet, "MN\r\nnext", ""},
	} {
		br := bufio.NewReader(iotest.OneByteReader(strings.NewReader(tc.in)))
		c := &call{shape: tc.shape}
		if err := readReply(br, c); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if string(c.reply) != tc.want {
			t.Errorf("%q: read %q, want %q", tc.in, c.reply, tc.want)
		}
		rest := make([]byte, 8)
		n, _ := br.Read(rest)
		if string(rest[:n]) != "n" { // one byte at a time: the next reply starts here
			t.Errorf("%q: left %q unread, want the next reply's first byte", tc.in, rest[:n])
		}
	}
}

// Framing lost is an error, never a reply cut short or run on.
func TestReadReplyBadFraming(t *testing.T) {
	for _, in := range []string{
		"VA 5\r\nhelloXX",          // the data block does not end in CRLF
		"VALUE a 0 3\r\nab",        // cut short
		"STORED\n",                 // a bare LF
		strings.Repeat("x", 9<<10), // no end of line
	} {
		br := bufio.NewReader(iotest.OneByteReader(strings.NewReader(in)))
		if err := readReply(br, &call{shape: shapeUntilEnd}); err == nil {
			t.Errorf("%.40q: no error", in)
		}
	}
}

func TestDataLength(t *testing.T) {
	for _, tc := range []struct {
		line string
		n    int
		ok   bool
	}{
		{"VALUE k 0 5\r\n", 5, true},
		{"VALUE k 0 5 123\r\n", 5, true},
		{"VALUE k 4294967295 0\r\n", 0, true},
		{"VA 12 f1 t-1\r\n", 12, true},
		{"VA 7\r\n", 7, true},
		{"VALUE k 0\r\n", 0, false},
		{"VALUE k 0 x\r\n", 0, false},
		{"VA -1\r\n", 0, false},
		{"HD\r\n", 0, false},
		{"END\r\n", 0, false},
		{"VALUE k 0 99999999999\r\n", 0, false},
	} {
		n, ok := dataLength([]byte(tc.line))
		if n != tc.n || ok != tc.ok {
			t.Errorf("dataLength(%q) = %d, %v; want %d, %v", tc.line, n, ok, tc.n, tc.ok)
		}
	}
}

func TestNextValue(t *testing.T) {
	reply := []byte("VALUE a 0 2\r\nhi\r\nVALUE bb 1 0\r\n\r\nEND\r\n")
	key, end := nextValue(reply, 0)
	if string(key) != "a" || string(reply[end:end+5]) != "VALUE" {
		t.Fatalf("first: key %q, end %d", key, end)
	}
	key, end2 := nextValue(reply, end)
	if string(key) != "bb" || string(reply[end2:]) != "END\r\n" {
		t.Fatalf("second: key %q, rest %q", key, reply[end2:])
	}
	if _, end := nextValue(reply, end2); end != 0 {
		t.Fatalf("END taken for a value")
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"1.6.9", "1.6.18", true},
		{"1.6.18", "1.6.9", false},
		{"1.5.22", "1.6.0", true},
		{"1.6.18", "1.6.18", false},
		{"1.6", "1.6.1", true},
		{"1.6.21-rc1", "1.6.21", false},
	} {
		if got := versionLess([]byte(tc.a), []byte(tc.b)); got != tc.less {
			t.Errorf("versionLess(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}
