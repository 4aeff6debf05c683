package lockservice

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// peerProxy is a Service behind a loopback listener that answers as the
// proxy's client port does, as far as other proxies are concerned: a
// first line that IsPeerHello accepts gets "PEER" and ServePeer, anything
// else "ERROR" (what a proxy answers to a hello with a token it does not
// know). It stands in for a whole proxy in the cross-proxy stress test.
type peerProxy struct {
	svc  *Service
	l    net.Listener
	addr string

	mu      sync.Mutex
	closing bool
	conns   map[net.Conn]context.CancelFunc // peer connections served here
	wg      sync.WaitGroup                  // the accept loop and every connection
}

// listenAgain listens on addr, trying for a while: the address of a proxy
// just closed may not be free again at once.
func listenAgain(addr string) (net.Listener, error) {
	var err error
	for try := 0; try < 100; try++ {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return l, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, err
}

// startPeerProxy runs svc on a listener at addr ("127.0.0.1:0": a free
// port) and advertises it, as proxy.Server.Serve does.
func startPeerProxy(svc *Service, addr string) (*peerProxy, error) {
	l, err := listenAgain(addr)
	if err != nil {
		return nil, err
	}
	p := &peerProxy{svc: svc, l: l, addr: l.Addr().String(), conns: make(map[net.Conn]context.CancelFunc)}
	p.wg.Add(1)
	go p.accept()
	svc.Advertise(p.addr)
	return p, nil
}

func (p *peerProxy) accept() {
	defer p.wg.Done()
	for {
		nc, err := p.l.Accept()
		if err != nil {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		p.mu.Lock()
		if p.closing {
			p.mu.Unlock()
			cancel()
			nc.Close()
			return
		}
		p.conns[nc] = cancel
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(ctx, nc)
			cancel()
			nc.Close()
			p.mu.Lock()
			delete(p.conns, nc)
			p.mu.Unlock()
		}()
	}
}

// serve reads one connection's lines as proxy/conn.go does: a peer hello
// first turns it into a peer connection (proxy/locks.go servePeer).
func (p *peerProxy) serve(ctx context.Context, nc net.Conn) {
	br := bufio.NewReader(nc)
	var wmu sync.Mutex
	send := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		nc.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := nc.Write(b); err != nil {
			nc.Close() // as the proxy's writer stops its reader
		}
	}
	next := func() ([]byte, error) {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		return line, nil
	}
	for first := true; ; first = false {
		line, err := next()
		if err != nil {
			return
		}
		if first && p.svc.IsPeerHello(line) {
			send([]byte("PEER\r\n"))
			p.svc.ServePeer(ctx, next, send)
			return
		}
		send([]byte("ERROR\r\n"))
	}
}

// peerConns returns the peer connections served here now.
func (p *peerProxy) peerConns() []net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]net.Conn, 0, len(p.conns))
	for nc := range p.conns {
		out = append(out, nc)
	}
	return out
}

// shutdown stops the proxy as proxy.Server.Shutdown does: the lock
// service stops (its waiters are told, it leaves the registry), the
// listener closes, each connection stops reading and the requests already
// read are answered before it closes; clients, if set, ends the clients'
// connections and returns once they have finished (releasing their
// locks); then the service closes, its links to homes last.
func (p *peerProxy) shutdown(clients func()) {
	p.svc.Stop()
	p.l.Close()
	p.stopReading()
	if clients != nil {
		clients()
	}
	p.wg.Wait()
	p.svc.Close()
}

// stopReading makes every connection stop reading, and cancels what it
// carries out, as the proxy's shutdown does once its lock service is
// closed; the answers already made are written.
func (p *peerProxy) stopReading() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closing = true
	for nc, cancel := range p.conns {
		nc.SetReadDeadline(time.Now())
		cancel()
	}
}

// crash stops the proxy as a kill would, as near as one process can: its
// listener and every connection close at once, with nothing more said;
// then the service stops (its links close, its waiters end: their
// clients are gone with it).
func (p *peerProxy) crash() {
	p.l.Close()
	p.mu.Lock()
	p.closing = true
	for nc, cancel := range p.conns {
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, as the kernel of a killed process sends
		}
		nc.Close()
		cancel()
	}
	p.mu.Unlock()
	p.svc.peers.closeAll()
	p.svc.Close()
	p.wg.Wait()
}

// cutLink closes one connection between p and the proxy at addr, from
// p's side as the forwarder (out) or as the home (in); false if there was
// none to cut.
func (p *peerProxy) cutLink(out bool, pick func(n int) int) bool {
	if out {
		p.svc.peers.mu.Lock()
		var links []*peerLink
		for _, l := range p.svc.peers.links {
			links = append(links, l)
		}
		p.svc.peers.mu.Unlock()
		var ncs []net.Conn
		for _, l := range links {
			l.mu.Lock()
			if l.nc != nil {
				ncs = append(ncs, l.nc)
			}
			l.mu.Unlock()
		}
		if len(ncs) == 0 {
			return false
		}
		ncs[pick(len(ncs))].Close()
		return true
	}
	ncs := p.peerConns()
	if len(ncs) == 0 {
		return false
	}
	ncs[pick(len(ncs))].Close()
	return true
}
