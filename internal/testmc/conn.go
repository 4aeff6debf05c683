package testmc

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// readTimeout bounds every read of a Conn. It only ends a hang: tests
// never assert on time.
const readTimeout = 20 * time.Second

// Conn is a raw client connection, as telnet makes one: bytes out, lines
// or exact bytes back. It closes when the test ends.
type Conn struct {
	NetConn net.Conn
	Reader  *bufio.Reader // reads NetConn; read replies through it
	t       testing.TB
}

// Dial connects to addr.
func Dial(t testing.TB, addr string) *Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &Conn{NetConn: nc, Reader: bufio.NewReader(nc), t: t}
}

// Send writes s as it is.
func (c *Conn) Send(s string) {
	c.t.Helper()
	if _, err := c.NetConn.Write([]byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

// Line reads one reply line and returns it without its line end.
func (c *Conn) Line() string {
	c.t.Helper()
	c.NetConn.SetReadDeadline(time.Now().Add(readTimeout))
	l, err := c.Reader.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading a line: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// RoundTrip sends one command line and reads one reply line.
func (c *Conn) RoundTrip(cmd string) string {
	c.t.Helper()
	c.Send(cmd + "\r\n")
	return c.Line()
}

// Expect reads exactly len(want) bytes and fails the test unless they are
// want.
func (c *Conn) Expect(want string) {
	c.t.Helper()
	c.NetConn.SetReadDeadline(time.Now().Add(readTimeout))
	got := make([]byte, len(want))
	n, err := io.ReadFull(c.Reader, got)
	if err != nil || string(got) != want {
		c.t.Fatalf("want %q\n got %q (%v)", want, got[:n], err)
	}
}

// ExpectClosed fails the test unless the other side closes the connection
// without sending anything more.
func (c *Conn) ExpectClosed() {
	c.t.Helper()
	c.NetConn.SetReadDeadline(time.Now().Add(readTimeout))
	if b, err := c.Reader.ReadByte(); err != io.EOF {
		c.t.Fatalf("connection still open: read %q, %v", b, err)
	}
}
