package proxy

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// Replies larger than the client's socket buffers, single and merged from
// several parts, arrive whole and in order while the client reads slowly.
func TestLargeRepliesKeepOrder(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t))
	c := testmc.Dial(t, addr)
	value := strings.Repeat("v", 900<<10)
	c.Send(fmt.Sprintf("set big 0 0 %d\r\n%s\r\n", len(value), value))
	c.Expect("STORED\r\n")
	// Nothing is read until the end: the socket buffers (a few MiB on
	// loopback) fill, and the writer waits for the client.
	big := fmt.Sprintf("VALUE big 0 %d\r\n%s\r\nEND\r\n", len(value), value)
	var want strings.Builder
	for i := 0; i < 12; i++ {
		c.Send("get big\r\n")
		want.WriteString(big)
		if i >= 8 {
			c.Send("get big nothing big\r\n")
			want.WriteString(big[:len(big)-5] + big)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Send("version\r\n")
	expectLong(t, c, want.String())
	if l := c.Line(); !strings.HasPrefix(l, "VERSION ") {
		t.Fatalf("got %q", l)
	}
}

// expectLong is Conn.Expect for replies too long to print.
func expectLong(t *testing.T, c *testmc.Conn, want string) {
	t.Helper()
	c.NetConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	n, err := io.ReadFull(c.Reader, got)
	if err != nil || string(got) != want {
		i := 0
		for i < n && got[i] == want[i] {
			i++
		}
		t.Fatalf("got %d of %d bytes (%v), the first %d as wanted", n, len(want), err, i)
	}
}

// Clients sending the next command before the last answer arrived get
// their replies in command order, single gets, split gets and the noop
// the proxy answers itself mixed. Keys on two servers make the replies
// complete in either order.
func TestReplyOrderUnderPipelining(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t), testmc.Start(t))
	setup := testmc.Dial(t, addr)
	for i := 0; i < 20; i++ {
		setup.Send(fmt.Sprintf("set k%d 0 0 %d\r\n%d\r\n", i, len(fmt.Sprint(i)), i))
		setup.Expect("STORED\r\n")
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		c := testmc.Dial(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 100; round++ {
				var want strings.Builder
				for i := 0; i < 20; i++ {
					k := (i*7 + round + w) % 20
					var err error
					switch i % 3 {
					case 0:
						_, err = fmt.Fprintf(c.NetConn, "get k%d\r\n", k)
						fmt.Fprintf(&want, "VALUE k%d 0 %d\r\n%d\r\nEND\r\n", k, len(fmt.Sprint(k)), k)
					case 1:
						_, err = fmt.Fprintf(c.NetConn, "get k%d k%d\r\n", k, (k+1)%20)
						fmt.Fprintf(&want, "VALUE k%d 0 %d\r\n%d\r\n", k, len(fmt.Sprint(k)), k)
						fmt.Fprintf(&want, "VALUE k%d 0 %d\r\n%d\r\nEND\r\n", (k+1)%20, len(fmt.Sprint((k+1)%20)), (k+1)%20)
					case 2:
						_, err = c.NetConn.Write([]byte("mn\r\n"))
						want.WriteString("MN\r\n")
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
				got := make([]byte, want.Len())
				c.NetConn.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := io.ReadFull(c.Reader, got); err != nil || string(got) != want.String() {
					t.Errorf("want %q\n got %q (%v)", want.String(), got[:n], err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
