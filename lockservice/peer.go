package lockservice

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/memcachedlock/memcachedlock/lockext"
)

// The peer protocol: a proxy forwards lock commands for a name to the
// name's home proxy over one connection to the home's client port, opened
// with "peer <home's token>". Requests carry a tag, so many waits share the
// connection and replies come back in any order:
//
//	<tag> L <name> <ttl> <wait_ms> <x|r> <o|c> <owner>   lock (owner, or connection)
//	<tag> U <name> <fence>                              unlock
//	<tag> E <name> <fence> <ttl>                        extend
//	<tag> R <name> <fence> <reply> <by>                 give back an undelivered grant (lockext.Manager.Undelivered)
//	<tag> I <name>                                      lockinfo
//	<tag> C                                             cancel the request <tag>
//
// and the home answers:
//
//	<tag> LOCKED <fence> <ttl> <count> <owner> <reply> [again]  reply, again: see lockext.Grant
//	<tag> UNLOCKED <levels left>                 to U, and to R when given back
//	<tag> EXTENDED <ttl>
//	<tag> LOCK <fence> <ttl> <count> <owner> <waiters>
//	<tag> ERR <code> <n>                     an error (codes below); n is a holder's ttl
//
// Homes of versions before 2026-11-26 also sent "<tag> W" when a lock
// request started to wait, which the forwarding proxy ignores.
//
// Homes of versions before R send no <reply> and answer R with an error:
// the forwarding proxy then keeps the grant. (Proxies of those versions
// read <reply> as part of the owner, which they only show.)
//
// The truth stays in memcached: the home runs the same lock manager a
// proxy runs for its own clients.

const peerHello = "peer "

// errPeer means the home could not be asked or did not answer: the caller
// serves the name itself.
var errPeer = errors.New("lockservice: home proxy unreachable")

// errAnswerLost means a request reached the home, which may have carried
// it out, but its answer did not come back: serving it here as well is
// right only for a request that may be carried out twice.
var errAnswerLost = fmt.Errorf("%w: its answer lost", errPeer)

var errCodes = []struct {
	code string
	err  error
}{
	{"NF", lockext.ErrNotFound},
	{"NO", lockext.ErrNotOwner},
	{"MM", lockext.ErrModeMismatch},
	{"BR", lockext.ErrBadRequest},
	{"RC", ErrRecovering},
	{"SD", ErrServersDiffer},
	{"CL", lockext.ErrClosed},
	{"CX", context.Canceled},
	{"KP", lockext.ErrKept},
	{"UN", lockext.ErrUnavailable},
}

// encodeErr names err for the wire.
func encodeErr(err error) string {
	var nl *lockext.NotLockedError
	if errors.As(err, &nl) {
		return "ERR NL " + strconv.Itoa(nl.HolderTTL)
	}
	for _, c := range errCodes {
		if errors.Is(err, c.err) {
			return "ERR " + c.code + " 0"
		}
	}
	return "ERR UN 0"
}

// decodeErr turns "<code> <n>" back into the error the manager returned.
func decodeErr(f []string) error {
	if len(f) < 2 {
		return errPeer
	}
	if f[0] == "NL" {
		n, _ := strconv.Atoi(f[1])
		return &lockext.NotLockedError{HolderTTL: n}
	}
	for _, c := range errCodes {
		if c.code == f[0] {
			switch c.err {
			case ErrRecovering, ErrServersDiffer:
				return fmt.Errorf("%w: %w", lockext.ErrUnavailable, c.err)
			case lockext.ErrClosed:
				return errPeer // the home is going: serve it here
			}
			return c.err
		}
	}
	return lockext.ErrUnavailable
}

func lockLine(req lockext.Request, conn string) string {
	mode, kind, owner := "x", "o", req.Owner
	if req.Reentrant {
		mode = "r"
	}
	if owner == "" {
		kind, owner = "c", conn
	}
	return fmt.Sprintf("L %s %d %d %s %s %s", req.Name, req.TTL, req.Wait.Milliseconds(), mode, kind, owner)
}

// parseLock reads the arguments of an L request.
func parseLock(f []string) (req lockext.Request, conn string, err error) {
	if len(f) != 6 {
		return req, "", lockext.ErrBadRequest
	}
	ttl, err1 := strconv.Atoi(f[1])
	wait, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return req, "", lockext.ErrBadRequest
	}
	req = lockext.Request{Name: f[0], TTL: ttl, Wait: time.Duration(wait) * time.Millisecond, Reentrant: f[3] == "r"}
	if f[4] == "c" {
		return req, f[5], nil
	}
	req.Owner = f[5]
	return req, "", nil
}

func parseGrant(f []string) (lockext.Grant, error) {
	if len(f) < 4 {
		return lockext.Grant{}, errPeer
	}
	fence, err1 := strconv.ParseUint(f[0], 10, 64)
	ttl, err2 := strconv.Atoi(f[1])
	count, err3 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return lockext.Grant{}, errPeer
	}
	return lockext.Grant{Fence: fence, TTL: ttl, Count: count, Owner: strings.Join(f[3:], " ")}, nil
}
