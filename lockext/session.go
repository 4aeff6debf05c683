package lockext

import (
	"context"
	"strconv"
	"sync"
)

// Session is one client connection. Locks it takes without an owner belong
// to it and are released when it closes; locks with an owner are leases that
// outlive it.
type Session struct {
	m  *Manager
	id string

	mu   sync.Mutex
	held map[string]uint64 // connection-owned grants: name -> fence
}

// NewSession starts a session.
func (m *Manager) NewSession() *Session {
	id := m.cfg.Instance + ":" + strconv.FormatUint(m.sessions.Add(1), 10)
	return &Session{m: m, id: id, held: make(map[string]uint64)}
}

// Lock takes a lock, waiting up to req.Wait; see Request.
func (s *Session) Lock(ctx context.Context, req Request) (Grant, error) {
	if req.Owner != "" {
		return s.m.Lock(ctx, req)
	}
	g, err := s.m.LockConn(ctx, req, s.id)
	if err == nil {
		s.mu.Lock()
		s.held[g.Name] = g.Fence
		s.mu.Unlock()
		g.Owner = "conn:" + g.Owner
	}
	return g, err
}

// Unlock releases one level of a grant, as Manager.Unlock, and forgets a
// connection-owned grant that is gone.
func (s *Session) Unlock(ctx context.Context, name string, fence uint64) (int, error) {
	left, err := s.m.Unlock(ctx, name, fence)
	if err == nil && left == 0 {
		s.mu.Lock()
		if s.held[name] == fence {
			delete(s.held, name)
		}
		s.mu.Unlock()
	}
	return left, err
}

// Undelivered gives back what an undelivered reply handed out, as
// Manager.Undelivered, and forgets a connection-owned grant that is gone.
func (s *Session) Undelivered(ctx context.Context, g Grant) (int, error) {
	left, err := s.m.Undelivered(ctx, g)
	if err == nil && left == 0 {
		s.mu.Lock()
		if s.held[g.Name] == g.Fence {
			delete(s.held, g.Name)
		}
		s.mu.Unlock()
	}
	return left, err
}

// Close releases every lock the session owns. A lock whose server cannot be
// reached now is left to its ttl.
func (s *Session) Close(ctx context.Context) {
	s.mu.Lock()
	held := s.held
	s.held = make(map[string]uint64)
	s.mu.Unlock()
	for name, fence := range held {
		s.m.release(ctx, name, fence, true)
	}
}

// ID names the session's connection in the grants it owns; a request
// forwarded to another process for this session carries it.
func (s *Session) ID() string { return s.id }
