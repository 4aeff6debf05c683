package proxy

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line    string
		refused *refusal
		cmd     command
		key     string
		keys    int
		noreply bool
		data    int
	}{
		{line: "get a", cmd: cmdGet, keys: 1, data: -1},
		{line: "get a b c", cmd: cmdGet, keys: 3, data: -1},
		{line: "  gets   a  b ", cmd: cmdGets, keys: 2, data: -1},
		{line: "gat 10 a b", cmd: cmdGat, keys: 2, data: -1},
		{line: "gat 10", cmd: cmdGat, keys: 0, data: -1},
		{line: "get", refused: refuseUnknown},
		{line: "get " + strings.Repeat("k", 251), refused: refuseFormat},
		{line: "get a\x01b", cmd: cmdGet, keys: 1, data: -1}, // memcached accepts control bytes
		{line: "set a 0 0 5", cmd: cmdSet, key: "a", data: 5},
		{line: "set a 0 0 5 noreply", cmd: cmdSet, key: "a", data: 5, noreply: true},
		{line: "set a 0 0 5 other", cmd: cmdSet, key: "a", data: 5},
		{line: "set a 0 0", refused: refuseUnknown},
		{line: "set a 0 0 1 noreply x", refused: refuseUnknown},
		{line: "set a -1 0 1", refused: refuseFormat},
		{line: "set a 0 0 -1", refused: refuseFormat},
		{line: "set a 0 x 1", refused: refuseFormat},
		{line: "set a 18446744073709551616 0 1", refused: refuseFormat},
		{line: "cas a 0 0 1 99", cmd: cmdCas, key: "a", data: 1},
		{line: "cas a 0 0 1", refused: refuseUnknown},
		{line: "cas a 0 0 1 x", refused: refuseFormat},
		{line: "incr a 1", cmd: cmdIncr, key: "a", data: -1},
		{line: "incr a 1 noreply", cmd: cmdIncr, key: "a", noreply: true, data: -1},
		{line: "incr a", refused: refuseUnknown},
		{line: "delete a", cmd: cmdDelete, key: "a", data: -1},
		{line: "delete a 0 noreply", cmd: cmdDelete, key: "a", noreply: true, data: -1},
		{line: "delete a 5", refused: refuseDelete},
		{line: "delete a 5 noreply", refused: refuseDelete}, // refused quietly
		{line: "verbosity noreply", refused: refuseFormat},  // likewise
		{line: "touch a 1", cmd: cmdTouch, key: "a", data: -1},
		{line: "mg a v q", cmd: cmdMetaGet, key: "a", noreply: true, data: -1},
		{line: "mg YWJj b v", cmd: cmdMetaGet, key: "abc", data: -1},
		{line: "mg !!! b v", refused: refuseKeyDecode},
		{line: "ms a 5 T10", cmd: cmdMetaSet, key: "a", data: 5},
		{line: "ms a x", refused: refuseFormat},
		{line: "ms a", refused: refuseFormat},
		{line: "mg", refused: refuseUnknown},
		{line: "mn", cmd: cmdMetaNoop, data: -1},
		{line: "flush_all noreply", cmd: cmdFlushAll, noreply: true, data: -1},
		{line: "verbosity 1", cmd: cmdVerbosity, data: -1},
		{line: "verbosity x", refused: refuseFormat},
		{line: "lock a 30 100 me", cmd: cmdLock, key: "a", data: -1},
		{line: "GET a", refused: refuseUnknown},
		{line: "", refused: refuseUnknown},
		// memcached takes a last "noreply" as noreply whatever the count
		{line: "incr a noreply", cmd: cmdIncr, key: "a", noreply: true, data: -1},
		{line: "touch a noreply", cmd: cmdTouch, key: "a", noreply: true, data: -1},
		{line: "delete noreply", cmd: cmdDelete, key: "noreply", data: -1},
		{line: "cache_memlimit 10 noreply", cmd: cmdCacheMemlimit, noreply: true, data: -1},
		{line: "slabs reassign 1 2", cmd: cmdSlabs, data: -1},
		{line: "lru_crawler metadump all", cmd: cmdLruCrawler, data: -1},
		{line: "GET / HTTP/1.0", refused: refuseHTTP},
		{line: "foo HTTP/", refused: refuseHTTP},
		{line: "get a HTTP/1.0", cmd: cmdGet, keys: 2, data: -1},
	} {
		var r request
		refused := parse([]byte(tc.line), &r)
		if refused != tc.refused {
			t.Errorf("%q: refused with %v, want %v", tc.line, refused, tc.refused)
			continue
		}
		if refused != nil && r.noreply != (tc.noreply || strings.HasSuffix(tc.line, " noreply") && refused != refuseUnknown) {
			t.Errorf("%q: refused with noreply %v", tc.line, r.noreply)
		}
		if refused != nil {
			continue
		}
		if r.cmd != tc.cmd || string(r.key) != tc.key || len(r.keys) != tc.keys || r.noreply != tc.noreply || r.dataLen != tc.data {
			t.Errorf("%q: got cmd %d key %q keys %d noreply %v data %d", tc.line, r.cmd, r.key, len(r.keys), r.noreply, r.dataLen)
		}
	}
}

func TestParseNumbers(t *testing.T) {
	for in, want := range map[string]bool{"0": true, "+1": true, "01": true, "-1": false, "": false, "1a": false, "18446744073709551615": true, "18446744073709551616": false} {
		if _, ok := parseUint([]byte(in), 64); ok != want {
			t.Errorf("parseUint(%q) ok=%v", in, ok)
		}
	}
	for in, want := range map[string]int64{"-1": -1, "+5": 5, "-9223372036854775808": -1 << 63} {
		if got, ok := parseInt([]byte(in)); !ok || got != want {
			t.Errorf("parseInt(%q) = %d, %v", in, got, ok)
		}
	}
	if _, ok := parseInt([]byte("9223372036854775808")); ok {
		t.Error("parseInt accepted 2^63")
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	var r request
	line := []byte("get a b c d e f")
	parse(line, &r)
	if n := testing.AllocsPerRun(100, func() { parse(line, &r) }); n != 0 {
		t.Errorf("parse allocates %.0f times per line", n)
	}
}

// FuzzParse: no line may panic the parser, and what it accepts must name
// valid keys.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"get a b", "gets a", "gat 1 a", "gats 1 a", "set a 0 0 1", "add a 0 0 1 noreply",
		"replace a 0 0 1", "append a 0 0 1", "prepend a 0 0 1", "cas a 0 0 1 1", "incr a 1",
		"decr a 1", "touch a 1", "delete a", "mg a v", "ms a 1 T0", "md a q", "ma a", "me a",
		"mn", "flush_all", "version", "verbosity 1", "stats", "quit", "lock a", "rlock a 1 1 o",
		"cache_memlimit 1", "slabs automove 1", "lru_crawler crawl all", "lru mode flat", "GET / HTTP/1.1",
		"unlock a 1", "extend a 1 1", "lockinfo a", "mg YWJj b", "set a 99999999999999999999 0 1",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var r request
		if parse(line, &r) != nil {
			return
		}
		for _, k := range r.keys {
			if !validKey(k) {
				t.Fatalf("%q: accepted key %q", line, k)
			}
		}
		if r.dataLen < -1 {
			t.Fatalf("%q: data length %d", line, r.dataLen)
		}
	})
}
