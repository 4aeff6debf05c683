package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/proxy"
)

// Binary opcodes, as in memcached's protocol_binary.h.
const (
	bGet, bSet, bAdd, bReplace, bDelete, bIncr, bDecr, bQuit, bFlush, bGetQ, bNoop, bVersion = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b
	bGetK, bGetKQ, bAppend, bPrepend, bStat, bSetQ, bAddQ, bReplaceQ, bDeleteQ, bIncrQ       = 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
	bDecrQ, bQuitQ, bFlushQ, bAppendQ, bPrependQ, bVerbosity, bTouch, bGAT, bGATQ            = 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e
	bSASLList, bSASLAuth, bSASLStep, bGATK, bGATKQ                                           = 0x20, 0x21, 0x22, 0x23, 0x24
)

// breq is one binary request.
type breq struct {
	op                  byte
	key, extras, value  string
	opaque              uint32
	cas                 uint64
	magic               byte // 0: 0x80
	keyLen, ext, bodyFx int  // overrides for malformed headers; 0: computed (bodyFx is added)
}

func (r breq) bytes() []byte {
	magic := r.magic
	if magic == 0 {
		magic = 0x80
	}
	keyLen, extLen := len(r.key), len(r.extras)
	if r.keyLen != 0 {
		keyLen = r.keyLen
	}
	if r.ext != 0 {
		extLen = r.ext
	}
	h := make([]byte, 24)
	h[0], h[1] = magic, r.op
	binary.BigEndian.PutUint16(h[2:], uint16(keyLen))
	h[4] = byte(extLen)
	binary.BigEndian.PutUint32(h[8:], uint32(len(r.extras)+len(r.key)+len(r.value)+r.bodyFx))
	binary.BigEndian.PutUint32(h[12:], r.opaque)
	binary.BigEndian.PutUint64(h[16:], r.cas)
	return append(append(append(h, r.extras...), r.key...), r.value...)
}

func u32(v uint32) string { return string(binary.BigEndian.AppendUint32(nil, v)) }
func u64(v uint64) string { return string(binary.BigEndian.AppendUint64(nil, v)) }

// storeX is set/add/replace's extras: flags and exptime.
func storeX(flags, exp uint32) string { return u32(flags) + u32(exp) }

// incrX is incr/decr's extras: delta, initial value, exptime.
func incrX(delta, initial uint64, exp uint32) string { return u64(delta) + u64(initial) + u32(exp) }

// bresp is one response, with the cas reduced to whether there is one:
// servers number their items differently.
type bresp struct {
	magic, op, ext, dataType byte
	keyLen                   uint16
	status                   uint16
	opaque                   uint32
	hasCAS                   bool
	extras, key, value       string
}

func (r bresp) String() string {
	return fmt.Sprintf("{op %#x status %#x opaque %d cas %v extras %q key %q value %.60q}", r.op, r.status, r.opaque, r.hasCAS, r.extras, r.key, r.value)
}

const endOpaque = 0xfeedface

// exchangeBinary sends requests, then a noop, and reads the responses up
// to that noop's, or until the server hangs up.
func exchangeBinary(t *testing.T, addr string, reqs []breq) []bresp {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var in []byte
	for _, r := range append(reqs, breq{op: bNoop, opaque: endOpaque}) {
		in = append(in, r.bytes()...)
	}
	go c.Write(in)
	var out []bresp
	for {
		h := make([]byte, 24)
		if _, err := io.ReadFull(c, h); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return append(out, bresp{op: 0xff, value: "<closed>"})
			}
			t.Fatalf("%s: %v after %v", addr, err, out)
		}
		body := make([]byte, binary.BigEndian.Uint32(h[8:]))
		if _, err := io.ReadFull(c, body); err != nil {
			t.Fatalf("%s: body: %v", addr, err)
		}
		r := bresp{magic: h[0], op: h[1], keyLen: binary.BigEndian.Uint16(h[2:]), ext: h[4], dataType: h[5],
			status: binary.BigEndian.Uint16(h[6:]), opaque: binary.BigEndian.Uint32(h[12:]),
			hasCAS: binary.BigEndian.Uint64(h[16:]) != 0}
		if int(r.ext)+int(r.keyLen) > len(body) {
			t.Fatalf("%s: bad response header %x", addr, h)
		}
		r.extras, r.key, r.value = string(body[:r.ext]), string(body[int(r.ext):int(r.ext)+int(r.keyLen)]), string(body[int(r.ext)+int(r.keyLen):])
		out = append(out, r)
		if r.op == bNoop && r.opaque == endOpaque {
			return out
		}
	}
}

// The binary protocol, differentially: the same requests to memcached and
// to the proxy in front of one and of three servers, the same responses.
func TestBinaryDifferentialAgainstMemcached(t *testing.T) {
	direct := startCluster(t, 1)[0].Addr
	proxyOne, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 1).servers(t), Timeout: differentialTimeout})
	proxyThree, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 3).servers(t), Timeout: differentialTimeout})
	for i, tc := range binaryCases() {
		want := exchangeBinary(t, direct, tc)
		for _, target := range []struct{ name, addr string }{{"1 server", proxyOne}, {"3 servers", proxyThree}} {
			got := exchangeBinary(t, target.addr, tc)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("case %d via proxy (%s):\n sent %v\n memcached %v\n proxy     %v", i, target.name, tc, want, got)
			}
		}
	}
}

func binaryCases() [][]breq {
	sx := storeX(7, 0)
	big := strings.Repeat("v", 1<<20-100)
	return [][]breq{
		// get family, with opaque and flags
		{{op: bSet, key: "a", extras: sx, value: "hello", opaque: 1}, {op: bGet, key: "a", opaque: 2}, {op: bGetK, key: "a", opaque: 3},
			{op: bGet, key: "zz", opaque: 4}, {op: bGetK, key: "zz", opaque: 5}},
		// quiet gets answer hits only; a batch ends at the noop
		{{op: bSet, key: "a", extras: sx, value: "x"}, {op: bGetQ, key: "a", opaque: 1}, {op: bGetQ, key: "zz", opaque: 2},
			{op: bGetKQ, key: "a", opaque: 3}, {op: bGetKQ, key: "zz", opaque: 4}, {op: bGetKQ, key: "b", opaque: 5}},
		// storage: add, replace, cas, quiet forms
		{{op: bAdd, key: "s", extras: sx, value: "1"}, {op: bAdd, key: "s", extras: sx, value: "2"}, {op: bReplace, key: "zz", extras: sx, value: "x"},
			{op: bReplace, key: "s", extras: storeX(9, 0), value: "3"}, {op: bGet, key: "s"},
			{op: bSet, key: "s", extras: sx, value: "4", cas: 1 << 40}, {op: bSet, key: "zzz", extras: sx, value: "x", cas: 1 << 40},
			{op: bAddQ, key: "s", extras: sx, value: "x"}, {op: bReplaceQ, key: "zz", extras: sx, value: "x"}, {op: bSetQ, key: "q", extras: sx, value: "q"},
			{op: bSetQ, key: "q", extras: sx, value: "q", cas: 1 << 40}, {op: bGet, key: "q"}},
		// append, prepend
		{{op: bAppend, key: "zz", value: "x"}, {op: bSet, key: "p", extras: sx, value: "b"}, {op: bAppend, key: "p", value: "c"},
			{op: bPrepend, key: "p", value: "a"}, {op: bAppendQ, key: "p", value: "d"}, {op: bPrependQ, key: "zz", value: "x"}, {op: bGet, key: "p"}},
		// delete
		{{op: bSet, key: "d", extras: sx, value: "x"}, {op: bDelete, key: "d", cas: 1 << 40}, {op: bDelete, key: "d"}, {op: bDelete, key: "d"},
			{op: bDeleteQ, key: "d"}, {op: bSet, key: "d", extras: sx, value: "x"}, {op: bDeleteQ, key: "d"}, {op: bGet, key: "d"}},
		// incr, decr: initial value, no auto-create, non-numeric, quiet
		{{op: bIncr, key: "n", extras: incrX(1, 10, 0)}, {op: bIncr, key: "n", extras: incrX(5, 10, 0)}, {op: bDecr, key: "n", extras: incrX(100, 0, 0)},
			{op: bIncr, key: "m", extras: incrX(1, 10, 0xffffffff)}, {op: bSet, key: "t", extras: sx, value: "abc"}, {op: bIncr, key: "t", extras: incrX(1, 0, 0)},
			{op: bIncrQ, key: "n", extras: incrX(3, 0, 0)}, {op: bDecrQ, key: "m", extras: incrX(1, 0, 0xffffffff)}, {op: bGet, key: "n"},
			{op: bIncr, key: "n", extras: incrX(1<<63, 0, 0)}, {op: bIncr, key: "n", extras: incrX(1<<63, 0, 0)}},
		// touch and gat
		{{op: bSet, key: "g", extras: sx, value: "v"}, {op: bTouch, key: "g", extras: u32(100)}, {op: bTouch, key: "zz", extras: u32(100)},
			{op: bGAT, key: "g", extras: u32(100)}, {op: bGATK, key: "g", extras: u32(0)}, {op: bGATQ, key: "zz", extras: u32(1)},
			{op: bGATKQ, key: "zz", extras: u32(1)}, {op: bGATKQ, key: "g", extras: u32(1)}, {op: bGAT, key: "zz", extras: u32(1)}, {op: bGATK, key: "zz", extras: u32(1)}},
		// keys the text protocol cannot carry as they are
		{{op: bSet, key: "a b\r\nc\x00", extras: sx, value: "odd"}, {op: bGetK, key: "a b\r\nc\x00"}, {op: bGet, key: "a"},
			{op: bSet, key: strings.Repeat("k", 250), extras: sx, value: "long"}, {op: bGetK, key: strings.Repeat("k", 250)}},
		// text and binary share items
		{{op: bSet, key: "shared", extras: storeX(3, 0), value: "bin"}, {op: bGet, key: "shared"}},
		// incr and decr: auto-create with an expiration, cas given
		{{op: bDecr, key: "c", extras: incrX(1, 5, 100)}, {op: bDecr, key: "c", extras: incrX(1, 5, 100)}, {op: bGet, key: "c"},
			{op: bIncr, key: "c", extras: incrX(1, 0, 0), cas: 1 << 40}, {op: bDeleteQ, key: "c"}, {op: bIncr, key: "c", extras: incrX(1, 7, 0xfffffffe)}},
		// cas on append and delete that match nothing
		{{op: bSet, key: "x", extras: sx, value: "1"}, {op: bAppend, key: "x", value: "2", cas: 1 << 40}, {op: bPrepend, key: "zz", value: "2", cas: 1 << 40},
			{op: bDelete, key: "zz", cas: 1 << 40}, {op: bTouch, key: "x", extras: u32(0)}, {op: bGet, key: "x"}},
		// a long getkq batch over every server, in order, ended by the noop
		getkqBatch(60),
		// big values, and one over the limit, which also removes the old value
		{{op: bSet, key: "big", extras: sx, value: big}, {op: bGet, key: "big"}, {op: bSet, key: "big", extras: sx, value: big + big},
			{op: bGet, key: "big"}, {op: bSetQ, key: "big", extras: sx, value: big + big}, {op: bAdd, key: "big", extras: sx, value: big + big}},
		// whole-cache commands
		{{op: bVersion, opaque: 7}, {op: bNoop, opaque: 8}, {op: bFlush, extras: u32(0)}, {op: bFlushQ}, {op: bFlush}, {op: bGet, key: "a"}},
		{{op: bStat, key: "bogus"}, {op: bStat, key: "reset"}, {op: bStat, key: "detail on"}, {op: bStat, key: "detail off"}, {op: bStat, key: "sizes"}},
		// what memcached 1.6 does not answer: SASL without SASL, unknown opcodes
		{{op: bSASLList}, {op: bSASLAuth, key: "PLAIN", value: "\x00u\x00p"}, {op: bSASLStep, key: "PLAIN"},
			{op: 0x30, value: "whatever"}, {op: 0x50}},
		// quit
		{{op: bQuit, opaque: 3}, {op: bGet, key: "a"}},
		{{op: bQuitQ}, {op: bGet, key: "a"}},
		// malformed: memcached answers "Invalid arguments" and hangs up
		{{op: bGet, key: strings.Repeat("k", 251)}},
		{{op: bGet}},
		{{op: bSet, key: "a", value: "x"}},
		{{op: bGet, key: "a", extras: "1234"}},
		{{op: bNoop, key: "x"}},
		{{op: bFlush, extras: "12"}},
		{{op: bIncr, key: "n", extras: "123"}},
		{{op: bDelete, key: "a", value: "x"}},
		{{op: bAppend, key: "a", extras: "1234", value: "x"}},
		{{op: bTouch, key: "a"}},
		{{op: bGet, key: "a", bodyFx: -1}},
		// a bad magic after the first request
		{{op: bNoop, opaque: 1}, {op: bNoop, magic: 0x81}},
	}
}

// getkqBatch sets n keys, then asks for them and as many misses with getkq.
func getkqBatch(n int) []breq {
	var reqs []breq
	for i := 0; i < n; i++ {
		reqs = append(reqs, breq{op: bSetQ, key: fmt.Sprintf("batch:%d", i), extras: storeX(uint32(i), 0), value: strings.Repeat("v", i)})
	}
	for i := 0; i < n; i++ {
		reqs = append(reqs, breq{op: bGetKQ, key: fmt.Sprintf("batch:%d", i), opaque: uint32(i)}, breq{op: bGetKQ, key: fmt.Sprintf("nope:%d", i)})
	}
	return reqs
}

// One item, three protocols, one server connection each: what text sets,
// binary and meta read, and the other way round.
func TestTextMetaAndBinaryShareItems(t *testing.T) {
	addr, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 3).servers(t)})
	if got := exchange(t, addr, "set t 9 0 4\r\ntext\r\n"); got != "STORED\r\nMN\r\n" {
		t.Fatalf("text set: %q", got)
	}
	got := exchangeBinary(t, addr, []breq{{op: bGetK, key: "t"}, {op: bSet, key: "b c", extras: storeX(4, 0), value: "binary"}})
	if got[0].status != 0 || got[0].extras != u32(9) || got[0].value != "text" || got[1].status != 0 {
		t.Fatalf("binary: %v", got)
	}
	if got := exchange(t, addr, "mg YiBj b v f\r\n"); got != "VA 6 f4\r\nbinary\r\nMN\r\n" {
		t.Errorf("meta get of a binary key with a space: %q", got)
	}
}

// A binary client that sends its requests a byte at a time, and its value
// long after the header, is answered the same.
func TestBinarySlowSender(t *testing.T) {
	const timeout = 100 * time.Millisecond
	addr, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 3).servers(t), Timeout: timeout})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	set := breq{op: bSet, key: "slow", extras: storeX(5, 0), value: "value", opaque: 9}.bytes()
	for _, b := range set[:len(set)-5] {
		c.Write([]byte{b})
		time.Sleep(time.Millisecond)
	}
	time.Sleep(2 * timeout)
	c.Write(set[len(set)-5:])
	c.Write(breq{op: bGetK, key: "slow", opaque: 10}.bytes())
	h := make([]byte, 24)
	var bodies [][]byte
	for i := 0; i < 2; i++ {
		if _, err := io.ReadFull(c, h); err != nil {
			t.Fatal(err)
		}
		if status := binary.BigEndian.Uint16(h[6:]); status != 0 {
			t.Fatalf("response %d: status %#x", i, status)
		}
		body := make([]byte, binary.BigEndian.Uint32(h[8:]))
		io.ReadFull(c, body)
		bodies = append(bodies, body)
	}
	if want := u32(5) + "slow" + "value"; !bytes.Equal(bodies[1], []byte(want)) {
		t.Errorf("getk after a slow set: %q, want %q", bodies[1], want)
	}
}
