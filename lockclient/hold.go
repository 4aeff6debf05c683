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
	if _, err := c.Unlock(context.WithoutCancel(ctx), g); err != nil && fnErr == nil && !errors.Is(lost, ErrLeaseLost) {
		return fmt.Errorf("lockclient: unlock: %w", err)
	}
	if fnErr == nil && errors.Is(lost, ErrLeaseLost) {
		return lost
	}
	return fnErr
}
