package lockclient

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrLeaseLost is the cause of the context given to a Hold function when
// the lease could not be kept alive.
var ErrLeaseLost = errors.New("lockclient: lease lost")

// Hold takes the lock, runs fn while keeping the lease alive, and releases
// the lock when fn returns. fn's context is cancelled, with cause
// ErrLeaseLost, if the lease cannot be renewed; fn should then stop
// touching what the lock protects. The lease is renewed over its own
// connection, so fn may use c freely, at about half its ttl (half of what
// is left after a second's margin), so that one failed renewal still
// leaves time for the next; Hold asks for at least two seconds.
func Hold(ctx context.Context, c *Client, key string, opts Options, fn func(ctx context.Context, g Grant) error) error {
	if opts.TTL > 0 && opts.TTL < 2*time.Second {
		opts.TTL = 2 * time.Second
	}
	g, err := c.Lock(ctx, key, opts)
	if err != nil {
		return err
	}
	keeper, err := Dial(ctx, c.addr)
	if err != nil {
		c.Unlock(context.WithoutCancel(ctx), g)
		return err
	}
	defer keeper.Close()

	work, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ttl := max(g.TTL, 2*time.Second)
		period := (ttl - time.Second) / 2
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-work.Done():
				return
			case <-tick.C:
				rctx, rcancel := context.WithTimeout(work, period)
				err := keeper.Extend(rctx, g, ttl)
				rcancel()
				if err != nil && work.Err() == nil {
					cancel(fmt.Errorf("%w: %v", ErrLeaseLost, err))
					return
				}
			}
		}
	}()
	fnErr := fn(work, g)
	cancel(nil)
	<-done
	lost := context.Cause(work)
	if err := release(context.WithoutCancel(ctx), c, g); err != nil && fnErr == nil && !errors.Is(lost, ErrLeaseLost) {
		return fmt.Errorf("lockclient: unlock: %w", err)
	}
	if fnErr == nil && errors.Is(lost, ErrLeaseLost) {
		return lost
	}
	return fnErr
}

// releaseRetries are the pauses before Hold tries its release again when
// the proxy cannot be reached or answers with a server error (restarted,
// or its lock servers out for a moment): 1.55 s in all, rather than leave
// the lock to run out its ttl while others wait for it.
var releaseRetries = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond,
	200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}

// release unlocks g for Hold, trying again (on a new connection) when the
// proxy cannot be reached, for a grant's last level only: a deeper
// level's unlock may have arrived with its reply lost, and a second one
// would release the level of an outer holder. A try that did arrive shows
// as NOT_OWNER or NOT_FOUND to the next: then the lock is released.
func release(ctx context.Context, c *Client, g Grant) error {
	for try := 0; ; try++ {
		_, err := c.Unlock(ctx, g)
		switch {
		case try > 0 && (errors.Is(err, ErrNotOwner) || errors.Is(err, ErrNotFound)):
			return nil
		case err == nil, !errors.Is(err, ErrServer), g.Count > 1, try == len(releaseRetries):
			return err
		}
		select {
		case <-time.After(releaseRetries[try]):
		case <-ctx.Done():
			return err
		}
	}
}
