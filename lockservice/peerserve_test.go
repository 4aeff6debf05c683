package lockservice

import (
	"bufio"
	"net"
	"testing"
)

// A peer is taken for gone only when that is certain: its address refuses
// connections, or what answers there knows no such hello. A proxy that
// answers anything else, such as one at its connection limit, may be
// alive with clients holding their locks.
func TestPeerGoneOnlyWhenCertain(t *testing.T) {
	s := newTestService(t, fakes("a:1"), 1, 5, "a:1")
	answering := func(reply string) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				bufio.NewReader(c).ReadString('\n')
				c.Write([]byte(reply))
				c.Close()
			}
		}()
		return l.Addr().String()
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		what, addr string
		gone       bool
	}{
		{"the proxy itself", answering("PEER\r\n"), false},
		{"the proxy at its connection limit", answering("SERVER_ERROR too many open connections\r\n"), false},
		{"memcached or a new proxy", answering("ERROR\r\n"), true},
		{"nothing listening", closedAddr, true},
	} {
		if got := s.peerGone(member{instance: "peer", addr: tc.addr, token: "t"}); got != tc.gone {
			t.Errorf("%s: gone %v, want %v", tc.what, got, tc.gone)
		}
	}
}
