package proxy

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

var testLimits = lockLimits{ttlMax: 300, waitMax: 300 * time.Second}

func lockArgs(line string) (command, [][]byte) {
	f := strings.Fields(line)
	args := make([][]byte, len(f)-1)
	for i, a := range f[1:] {
		args[i] = []byte(a)
	}
	return commands[f[0]], args
}

func TestParseLock(t *testing.T) {
	for _, tc := range []struct {
		line  string
		want  lockRequest
		reply string
	}{
		{line: "lock k", want: lockRequest{cmd: cmdLock, name: "k", wait: -1}},
		{line: "lock k 30", want: lockRequest{cmd: cmdLock, name: "k", ttl: 30, wait: -1}},
		{line: "lock k 30 0", want: lockRequest{cmd: cmdLock, name: "k", ttl: 30, wait: 0}},
		{line: "lock k 30 5000 zeo1:4711:140230", want: lockRequest{cmd: cmdLock, name: "k", ttl: 30, wait: 5 * time.Second, owner: "zeo1:4711:140230"}},
		{line: "rlock k 1 300000 me", want: lockRequest{cmd: cmdRLock, name: "k", ttl: 1, wait: 300 * time.Second, owner: "me"}},
		{line: "unlock k 18446744073709551615", want: lockRequest{cmd: cmdUnlock, name: "k", wait: -1, fence: 1<<64 - 1}},
		{line: "extend k 7 300", want: lockRequest{cmd: cmdExtend, name: "k", wait: -1, fence: 7, ttl: 300}},
		{line: "lockinfo k", want: lockRequest{cmd: cmdLockInfo, name: "k", wait: -1}},

		{line: "lock", reply: "CLIENT_ERROR usage: lock <key> [<ttl> [<wait_ms> [<owner>]]]\r\n"},
		{line: "lock k 1 2 o x", reply: "CLIENT_ERROR usage: lock <key> [<ttl> [<wait_ms> [<owner>]]]\r\n"},
		{line: "rlock k 30 0", reply: "CLIENT_ERROR usage: rlock <key> <ttl> <wait_ms> <owner>\r\n"},
		{line: "unlock k", reply: "CLIENT_ERROR usage: unlock <key> <fence>\r\n"},
		{line: "extend k 1", reply: "CLIENT_ERROR usage: extend <key> <fence> <ttl>\r\n"},
		{line: "lockinfo", reply: "CLIENT_ERROR usage: lockinfo <key>\r\n"},
		{line: "lock k noreply", reply: "CLIENT_ERROR noreply not allowed\r\n"},
		{line: "lock k 0", reply: "CLIENT_ERROR ttl must be 1 to 300\r\n"},
		{line: "lock k 301", reply: "CLIENT_ERROR ttl must be 1 to 300\r\n"},
		{line: "lock k -1", reply: "CLIENT_ERROR ttl must be 1 to 300\r\n"},
		{line: "lock k 99999999999999", reply: "CLIENT_ERROR ttl must be 1 to 300\r\n"},
		{line: "lock k 30 300001", reply: "CLIENT_ERROR wait_ms must be 0 to 300000\r\n"},
		{line: "lock k 30 1x", reply: "CLIENT_ERROR wait_ms must be 0 to 300000\r\n"},
		{line: "lock k 30 0 " + strings.Repeat("o", 65), reply: "CLIENT_ERROR owner must be 1 to 64 printable bytes\r\n"},
		{line: "unlock k -5", reply: "CLIENT_ERROR invalid fence\r\n"},
		{line: "unlock k 18446744073709551616", reply: "CLIENT_ERROR invalid fence\r\n"},
		{line: "extend k 5 0", reply: "CLIENT_ERROR ttl must be 1 to 300\r\n"},
		{line: "lock " + strings.Repeat("k", 251), reply: string(replyFormat)},
	} {
		cmd, args := lockArgs(tc.line)
		got, reply := parseLock(cmd, args, testLimits)
		if string(reply) != tc.reply {
			t.Errorf("%q: reply %q, want %q", tc.line, reply, tc.reply)
			continue
		}
		if tc.reply == "" && got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.line, got, tc.want)
		}
	}
}

// FuzzParseLock: any arguments give either a request within the limits or
// a reply line; never a panic.
func FuzzParseLock(f *testing.F) {
	for _, s := range []string{"lock k", "lock k 30 5000 o", "rlock k 1 0 o", "unlock k 1", "extend k 1 2", "lockinfo k",
		"lock k noreply", "unlock k x", "lock \x00 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		f := bytes.Fields([]byte(line))
		if len(f) == 0 {
			return
		}
		cmd, ok := commands[string(f[0])]
		if !ok || !cmd.isLock() {
			cmd = cmdLock
		}
		r, reply := parseLock(cmd, f[1:], testLimits)
		if reply != nil {
			if !bytes.HasSuffix(reply, []byte("\r\n")) || !bytes.HasPrefix(reply, []byte("CLIENT_ERROR ")) {
				t.Fatalf("%q: reply %q", line, reply)
			}
			return
		}
		if r.ttl < 0 || r.ttl > testLimits.ttlMax || r.wait > testLimits.waitMax || !validName([]byte(r.name)) || len(r.owner) > 64 {
			t.Fatalf("%q: out of bounds: %+v", line, r)
		}
	})
}
