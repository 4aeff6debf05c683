package proxy

import "context"

// lockConn lets the lock service use a server's shared pipelined
// connections: a batch of meta commands goes out as one call, so nothing
// of another client's comes between them and the mn that ends them.
type lockConn struct{ b *backend }

func (lc lockConn) Exchange(ctx context.Context, batch []byte) ([]byte, error) {
	c := newCall(shapeQuiet, lc.b.timeout)
	c.out = append(c.out, batch...)
	lc.b.send(0, c)
	select {
	case <-c.done:
	case <-ctx.Done():
		// The call is in flight: let it finish before it goes back to the pool.
		go func() { c.wait(); c.release() }()
		return nil, ctx.Err()
	}
	reply, err := append([]byte(nil), c.reply...), c.err
	c.release()
	return reply, err
}
