package proxy

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/ring"
)

// readStats reads one server's stats reply as the proxy does, the bytes
// arriving one at a time, as nats-server feeds its parser.
func readStats(t *testing.T, in string) []byte {
	t.Helper()
	c := &call{shape: shapeUntilEnd}
	if err := readReply(bufio.NewReader(iotest.OneByteReader(strings.NewReader(in))), c); err != nil {
		t.Fatalf("%q: %v", in, err)
	}
	return c.reply
}

func merged(replies [][]byte, group string) string {
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	mergeStats(w, replies, group)
	w.Flush()
	return out.String()
}

func TestMergeStats(t *testing.T) {
	for _, tc := range []struct {
		name    string
		group   string
		servers []string // "" is a server that failed
		want    string
	}{{
		name: "counts are summed, settings and words are the first server's",
		servers: []string{
			"STAT pid 10\r\nSTAT curr_items 3\r\nSTAT rusage_user 0.5\r\nSTAT version 1.6.21\r\nSTAT threads 4\r\nEND\r\n",
			"STAT pid 20\r\nSTAT curr_items 4\r\nSTAT rusage_user 1.25\r\nSTAT version 1.6.9\r\nSTAT threads 2\r\nEND\r\n",
		},
		want: "STAT pid 10\r\nSTAT curr_items 7\r\nSTAT rusage_user 1.750000\r\nSTAT version 1.6.21\r\nSTAT threads 4\r\n",
	}, {
		name: "an integer and a float make a float; a word among numbers is the first value",
		servers: []string{
			"STAT a 1\r\nSTAT b 2\r\nSTAT c 3\r\nEND\r\n",
			"STAT a 0.5\r\nSTAT b x\r\nSTAT c 4\r\nEND\r\n",
		},
		want: "STAT a 1.500000\r\nSTAT b 2\r\nSTAT c 7\r\n",
	}, {
		name:  "per-class settings are the first server's, per-class counts summed",
		group: "slabs",
		servers: []string{
			"STAT 1:chunk_size 96\r\nSTAT 1:used_chunks 5\r\nSTAT active_slabs 1\r\nEND\r\n",
			"STAT 1:chunk_size 96\r\nSTAT 1:used_chunks 6\r\nSTAT active_slabs 1\r\nEND\r\n",
		},
		want: "STAT 1:chunk_size 96\r\nSTAT 1:used_chunks 11\r\nSTAT active_slabs 2\r\n",
	}, {
		name: "a stat only one server has, in the order first seen; a failed server adds nothing",
		servers: []string{
			"STAT a 1\r\nEND\r\n",
			"",
			"STAT b 2\r\nSTAT a 1\r\nEND\r\n",
		},
		want: "STAT a 2\r\nSTAT b 2\r\n",
	}, {
		name:    "a value with spaces is one value",
		servers: []string{"STAT libevent 2.1 stable\r\nEND\r\n", "STAT libevent 2.2 stable\r\nEND\r\n"},
		want:    "STAT libevent 2.1 stable\r\n",
	}, {
		name:    "a listing group is the first server's as it is",
		group:   "settings",
		servers: []string{"STAT growth_factor 1.25\r\nSTAT maxconns 1024\r\nEND\r\n", "STAT growth_factor 2\r\nSTAT maxconns 10\r\nEND\r\n"},
		want:    "STAT growth_factor 1.25\r\nSTAT maxconns 1024\r\n",
	}, {
		name:    "lines other than STAT are the first server's, passed on",
		group:   "items",
		servers: []string{"ITEM a [1 b; 0 s]\r\nSTAT items:1:number 1\r\nEND\r\n", "ITEM b [1 b; 0 s]\r\nSTAT items:1:number 2\r\nEND\r\n"},
		want:    "ITEM a [1 b; 0 s]\r\nSTAT items:1:number 3\r\n",
	}} {
		replies := make([][]byte, len(tc.servers))
		for i, in := range tc.servers {
			if in != "" {
				replies[i] = readStats(t, in+"next")
			}
		}
		if got := merged(replies, tc.group); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	for in, want := range map[string][2]string{
		"STAT pid 1":                  {"pid", "1"},
		"STAT libevent 2.1.12 stable": {"libevent", "2.1.12 stable"},
		"STAT empty ":                 {"empty", ""},
	} {
		name, value, ok := parseStat([]byte(in))
		if !ok || string(name) != want[0] || string(value) != want[1] {
			t.Errorf("%q: %q %q %v", in, name, value, ok)
		}
	}
	for _, in := range []string{"END", "STAT", "STAT pid", "ITEM a [1 b; 0 s]", "stat pid 1"} {
		if _, _, ok := parseStat([]byte(in)); ok {
			t.Errorf("%q: taken for a STAT line", in)
		}
	}
}

// stats, /metrics and /healthz report the same servers, in one order: the
// cache servers as configured, then the lock servers not among them.
func TestServerCountsOrder(t *testing.T) {
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = testmc.FreeAddr(t) // nothing listens: the servers are down
	}
	cfg := Config{
		Servers:     []ring.Server{{Addr: addrs[1], Weight: 1}, {Addr: addrs[0], Weight: 1}},
		LockServers: []ring.Server{{Addr: addrs[0], Weight: 1}, {Addr: addrs[2], Weight: 1}},
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt := newRouting(cfg, false, nil)
	defer rt.close()
	if err := rt.reload(cfg.Servers, cfg.Distribution, cfg.Hash); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sc := range rt.counts() {
		got = append(got, sc.addr)
	}
	if want := []string{addrs[1], addrs[0], addrs[2]}; !slices.Equal(got, want) {
		t.Errorf("servers %v, want %v", got, want)
	}
	if down := downServers(rt.counts()); len(down) != 3 || !slices.IsSorted(down) {
		t.Errorf("down %v, want all three, sorted", down)
	}
}
