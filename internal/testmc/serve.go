package testmc

import (
	"net"
	"testing"
)

// Serve listens on a free loopback port until the test ends and runs
// handle on each connection, in a goroutine of its own: a stand-in server
// (a fake proxy, a relay) for tests. It returns the address.
func Serve(t testing.TB, handle func(nc net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { nc.Close() })
			go handle(nc)
		}
	}()
	return l.Addr().String()
}
