package proxy

import (
	"fmt"
	"time"
)

// lockRequest is a lock command line, parsed and checked.
type lockRequest struct {
	cmd   command
	name  string
	ttl   int           // lock, rlock, extend: seconds; 0 takes the default
	wait  time.Duration // lock, rlock; -1 takes the default
	owner string        // lock, rlock; empty: the connection owns the lock
	fence uint64        // unlock, extend
}

// lockLimits are the configured bounds a lock command is checked against.
type lockLimits struct {
	ttlMax  int
	waitMax time.Duration
}

var lockUsage = map[command]string{
	cmdLock:     "lock <key> [<ttl> [<wait_ms> [<owner>]]]",
	cmdRLock:    "rlock <key> <ttl> <wait_ms> <owner>",
	cmdUnlock:   "unlock <key> <fence>",
	cmdExtend:   "extend <key> <fence> <ttl>",
	cmdLockInfo: "lockinfo <key>",
}

// lockArity is the least and most arguments of each lock command.
var lockArity = map[command][2]int{
	cmdLock: {1, 4}, cmdRLock: {4, 4}, cmdUnlock: {2, 2}, cmdExtend: {3, 3}, cmdLockInfo: {1, 1},
}

// parseLock checks the arguments of a lock command (the tokens after the
// verb). When they are wrong it returns the reply to send instead. It does
// no I/O: a pure function, table-tested and fuzzed.
func parseLock(cmd command, args [][]byte, lim lockLimits) (lockRequest, []byte) {
	r := lockRequest{cmd: cmd, wait: -1}
	if len(args) > 0 && string(args[len(args)-1]) == "noreply" {
		return r, replyNoReplyErr // the reply carries the fence: it cannot be dropped
	}
	if arity := lockArity[cmd]; len(args) < arity[0] || len(args) > arity[1] {
		return r, []byte("CLIENT_ERROR usage: " + lockUsage[cmd] + "\r\n")
	}
	if !validName(args[0]) {
		return r, replyFormat
	}
	r.name = string(args[0])
	ttlErr := func() []byte { return fmt.Appendf(nil, "CLIENT_ERROR ttl must be 1 to %d\r\n", lim.ttlMax) }
	ttl := func(b []byte) (int, bool) {
		n, ok := parseUint(b, 31)
		return int(n), ok && n >= 1 && int(n) <= lim.ttlMax
	}
	switch cmd {
	case cmdLock, cmdRLock:
		var ok bool
		if len(args) > 1 {
			if r.ttl, ok = ttl(args[1]); !ok {
				return r, ttlErr()
			}
		}
		if len(args) > 2 {
			ms, ok := parseUint(args[2], 40)
			if !ok || time.Duration(ms)*time.Millisecond > lim.waitMax {
				return r, fmt.Appendf(nil, "CLIENT_ERROR wait_ms must be 0 to %d\r\n", lim.waitMax.Milliseconds())
			}
			r.wait = time.Duration(ms) * time.Millisecond
		}
		if len(args) > 3 {
			if !validOwner(args[3]) {
				return r, []byte("CLIENT_ERROR owner must be 1 to 64 printable bytes\r\n")
			}
			r.owner = string(args[3])
		}
	case cmdUnlock, cmdExtend:
		var ok bool
		if r.fence, ok = parseUint(args[1], 64); !ok {
			return r, []byte("CLIENT_ERROR invalid fence\r\n")
		}
		if cmd == cmdExtend {
			if r.ttl, ok = ttl(args[2]); !ok {
				return r, ttlErr()
			}
		}
	}
	return r, nil
}

func validOwner(b []byte) bool {
	if len(b) == 0 || len(b) > 64 {
		return false
	}
	for _, ch := range b {
		if ch <= ' ' || ch >= 0x7f {
			return false
		}
	}
	return true
}
