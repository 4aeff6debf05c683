package lockservice

import (
	"testing"
	"time"
)

// A forwarded lock's answer may come just as its caller gives up: read
// takes the tag out of pending and puts the answer in the caller's
// channel, and the caller's select, with that answer and its give-up both
// ready, picks the give-up (select picks at random). The grant in it then
// reached nobody, like one that comes later: it goes to late, to be given
// back, not dropped to stand for its ttl.
func TestAbandonPassesOnAnAnswerThatJustCame(t *testing.T) {
	l := &peerLink{pending: make(map[uint64]chan []string)}
	ch := make(chan []string, 2)
	ch <- []string{"LOCKED", "5", "10", "1", "o", "7"} // delivered by read: tag 1 is no longer pending
	got := make(chan []string, 1)
	l.abandon(1, ch, func(f []string) { got <- f }, time.Minute)
	select {
	case f := <-got:
		if f[0] != "LOCKED" {
			t.Errorf("late got %q", f)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the answer that came as its caller gave up was dropped: the grant in it stands for its ttl")
	}
	if l.awaited != 0 {
		t.Errorf("awaited %d, want 0", l.awaited)
	}
}
