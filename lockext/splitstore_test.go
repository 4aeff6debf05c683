package lockext

import (
	"context"
	"errors"
	"testing"
)

// splitStore is a memStore whose compare-and-swaps and deletes all find
// the item changed, while reads find it as it was: replicas split so
// that no state of the grant is on a majority, the one read naming it
// all the same.
type splitStore struct{ *memStore }

func (s splitStore) CompareAndSwap(context.Context, Key, []byte, int, Version) (Version, error) {
	return nil, ErrStoreExists
}

func (s splitStore) CompareAndDelete(context.Context, Key, Version) error { return ErrStoreExists }

// A holder's unlock and extend whose every write finds the item changed,
// while every read finds the holder's grant in force, are told that the
// lock servers could not do it, not that the lock is somebody else's.
// (Found by TestCrossStress: three replicas split between the grant, the
// record before it, which names it as successor, and an older grant; the
// holder's unlock was told NOT_OWNER after eight tries.)
func TestChangedUnderEveryTryIsUnavailable(t *testing.T) {
	store := newMemStore()
	m := testManager(store)
	g, err := m.Lock(context.Background(), req("k", 30, 0, "holder"))
	if err != nil {
		t.Fatal(err)
	}
	other := testManager(splitStore{store}) // knows nothing of the grant: reads it
	if _, err := other.Unlock(context.Background(), "k", g.Fence); !errors.Is(err, ErrUnavailable) {
		t.Errorf("unlock: %v, want unavailable", err)
	}
	if _, err := other.Extend(context.Background(), "k", g.Fence, 10); !errors.Is(err, ErrUnavailable) {
		t.Errorf("extend: %v, want unavailable", err)
	}
	if _, err := m.Unlock(context.Background(), "k", g.Fence); err != nil {
		t.Fatalf("unlock once the writes go through: %v", err)
	}
}
