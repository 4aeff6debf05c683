package lockext

import (
	"errors"
	"fmt"
)

// Errors returned by the Manager; compare with errors.Is.
var (
	ErrNotFound     = errors.New("lockext: no such grant")
	ErrNotOwner     = errors.New("lockext: not owner")
	ErrNotLocked    = errors.New("lockext: not locked")
	ErrModeMismatch = errors.New("lockext: lock held in another mode")
	ErrUnavailable  = errors.New("lockext: lock server unavailable")
	ErrClosed       = errors.New("lockext: shutting down")
	ErrBadRequest   = errors.New("lockext: bad request")
	// ErrKept is Undelivered's refusal: the grant may be known to its
	// holder, and stands until released or its ttl runs out.
	ErrKept = errors.New("lockext: grant kept: its holder may know it")
)

// Errors a Store returns for the two expected outcomes of its atomic
// operations; any other error means the store could not answer.
var (
	ErrStoreMiss   = errors.New("lockext: store: miss")
	ErrStoreExists = errors.New("lockext: store: exists or changed")
)

// NotLockedError is returned when a wait ran out. It matches ErrNotLocked.
type NotLockedError struct {
	HolderTTL int // the holder's remaining seconds, -1 when unknown
}

func (e *NotLockedError) Error() string {
	return fmt.Sprintf("lockext: not locked (holder ttl %d)", e.HolderTTL)
}

func (e *NotLockedError) Is(target error) bool { return target == ErrNotLocked }

// unavailable wraps a store failure so that it matches ErrUnavailable.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
