package proxy

import (
	"net"
	"testing"
	"time"
)

// fakeServer answers one "stats" with reply, for the identity tests; a
// fake is enough here, the restart itself is tested with real memcached.
func fakeServer(t *testing.T, reply string) net.Conn {
	client, server := net.Pipe()
	go func() {
		buf := make([]byte, 64)
		server.Read(buf)
		server.Write([]byte(reply))
	}()
	t.Cleanup(func() { client.Close(); server.Close() })
	return client
}

func TestFetchIdentity(t *testing.T) {
	id, err := fetchIdentity(fakeServer(t, "STAT pid 42\r\nSTAT uptime 100\r\nSTAT time 1000\r\nSTAT version 1.6.18\r\nEND\r\n"), time.Second)
	if err != nil || id != (identity{pid: 42, boot: 900}) {
		t.Fatalf("got %+v, %v", id, err)
	}
	// A server without stats: no identity, no error, no restart ever seen.
	id, err = fetchIdentity(fakeServer(t, "ERROR\r\n"), time.Second)
	if err != nil || id != (identity{}) {
		t.Fatalf("got %+v, %v", id, err)
	}
	var r recovery
	r.hold = time.Minute
	if r.observe(identity{pid: 1, boot: 100}) || r.observe(identity{pid: 1, boot: 101}) || r.observe(identity{}) {
		t.Fatal("the same server, seen again, counted as a restart")
	}
	if !r.observe(identity{pid: 2, boot: 500}) || !r.recovering() {
		t.Fatal("a new pid and boot time not counted as a restart")
	}
}
