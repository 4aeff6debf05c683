package lockext

import (
	"context"
	"errors"
	"sync"
	"time"
)

// memStore is an in-memory Store with memcached's semantics for the four
// operations, for unit tests of the manager. The integration tests run the
// same semantics against real memcached.
type memStore struct {
	mu    sync.Mutex
	items map[string]memItem
	cas   uint64
	down  bool
	ops   int
}

type memItem struct {
	value   []byte
	cas     uint64
	expires time.Time
}

func newMemStore() *memStore { return &memStore{items: make(map[string]memItem)} }

var errDown = errors.New("connection refused")

func (s *memStore) live(k string) (memItem, bool) {
	it, ok := s.items[k]
	if ok && time.Now().After(it.expires) {
		delete(s.items, k)
		return memItem{}, false
	}
	return it, ok
}

func (s *memStore) Get(_ context.Context, k Key) (Item, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops++
	if s.down {
		return Item{}, errDown
	}
	it, ok := s.live(k.Item)
	if !ok {
		return Item{}, ErrStoreMiss
	}
	return Item{Value: append([]byte(nil), it.value...), Version: it.cas, TTL: int(time.Until(it.expires).Seconds() + 0.5)}, nil
}

func (s *memStore) put(k Key, value []byte, ttl int) uint64 {
	s.cas++
	s.items[k.Item] = memItem{value: append([]byte(nil), value...), cas: s.cas, expires: time.Now().Add(time.Duration(ttl) * time.Second)}
	return s.cas
}

func (s *memStore) Add(_ context.Context, k Key, value []byte, ttl int) (Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops++
	if s.down {
		return nil, errDown
	}
	if _, ok := s.live(k.Item); ok {
		return nil, ErrStoreExists
	}
	return s.put(k, value, ttl), nil
}

func (s *memStore) CompareAndSwap(_ context.Context, k Key, value []byte, ttl int, v Version) (Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops++
	if s.down {
		return nil, errDown
	}
	it, ok := s.live(k.Item)
	if !ok {
		return nil, ErrStoreMiss
	}
	if cas, _ := v.(uint64); it.cas != cas {
		return nil, ErrStoreExists
	}
	return s.put(k, value, ttl), nil
}

func (s *memStore) CompareAndDelete(_ context.Context, k Key, v Version) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops++
	if s.down {
		return errDown
	}
	it, ok := s.live(k.Item)
	if !ok {
		return ErrStoreMiss
	}
	if cas, _ := v.(uint64); it.cas != cas {
		return ErrStoreExists
	}
	delete(s.items, k.Item)
	return nil
}

func (s *memStore) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

func (s *memStore) deleteAll() {
	s.mu.Lock()
	s.items = make(map[string]memItem)
	s.mu.Unlock()
}

func (s *memStore) opCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops
}
