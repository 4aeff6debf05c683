package lockservice

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// IsPeerHello reports whether line opens a peer connection from another
// proxy: "peer" and this proxy's token, which only readers of the lock
// namespace in memcached (proxies) know. Anything else is a client's.
func (s *Service) IsPeerHello(line []byte) bool {
	token, ok := strings.CutPrefix(strings.TrimRight(string(line), "\r\n"), peerHello)
	return ok && token == s.members.me().token
}

// ServePeer serves a peer connection after its hello: next reads a request
// line, send queues a reply line (they are written in the order queued).
// Each request runs on its own; ServePeer returns when next fails, after
// cancelling the requests still running and waiting for them.
func (s *Service) ServePeer(ctx context.Context, next func() ([]byte, error), send func([]byte)) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	running := make(map[string]context.CancelFunc)
	defer func() {
		cancel()
		wg.Wait()
	}()
	for {
		line, err := next()
		if err != nil {
			return
		}
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		tag, op, args := f[0], f[1], f[2:]
		if op == "C" {
			mu.Lock()
			if stop := running[tag]; stop != nil {
				stop()
			}
			mu.Unlock()
			continue
		}
		rctx, stop := context.WithCancel(ctx)
		mu.Lock()
		running[tag] = stop
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := s.servePeerRequest(rctx, op, args, func() { send([]byte(tag + " W\r\n")) })
			mu.Lock()
			delete(running, tag)
			mu.Unlock()
			stop()
			send([]byte(tag + " " + out + "\r\n"))
		}()
	}
}

// servePeerRequest carries out one forwarded request here, as home.
func (s *Service) servePeerRequest(ctx context.Context, op string, args []string, onWait func()) string {
	s.forwardedIn.Add(1)
	need := map[string]int{"L": 6, "U": 2, "E": 3, "I": 1}[op]
	if need == 0 || len(args) != need {
		return encodeErr(lockext.ErrBadRequest)
	}
	name := args[0]
	switch op {
	case "L":
		req, conn, err := parseLock(args)
		if err != nil {
			return encodeErr(err)
		}
		req.OnWait = onWait
		var g lockext.Grant
		if conn != "" {
			g, err = s.manager.LockConn(ctx, req, conn)
		} else {
			g, err = s.manager.Lock(ctx, req)
		}
		if err != nil {
			return encodeErr(err)
		}
		return fmt.Sprintf("LOCKED %d %d %d %s", g.Fence, g.TTL, g.Count, g.Owner)
	case "U", "E":
		fence, err := strconv.ParseUint(args[1], 10, 64)
		if err != nil {
			return encodeErr(lockext.ErrBadRequest)
		}
		if op == "U" {
			left, err := s.manager.Unlock(ctx, name, fence)
			if err != nil {
				return encodeErr(err)
			}
			return fmt.Sprintf("UNLOCKED %d", left)
		}
		ttl, err := strconv.Atoi(args[2])
		if err != nil {
			return encodeErr(lockext.ErrBadRequest)
		}
		n, err := s.manager.Extend(ctx, name, fence, ttl)
		if err != nil {
			return encodeErr(err)
		}
		return fmt.Sprintf("EXTENDED %d", n)
	default:
		info, err := s.manager.Info(ctx, name)
		if err != nil {
			return encodeErr(err)
		}
		return fmt.Sprintf("LOCK %d %d %d %s %d", info.Fence, info.TTL, info.Count, info.Owner, info.Waiters)
	}
}
