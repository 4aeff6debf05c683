package ring

import (
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
)

func servers(t *testing.T, specs ...string) []Server {
	t.Helper()
	s, err := ParseServers(specs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseServer(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want Server
		bad  bool
	}{
		{spec: "10.0.0.1:11211", want: Server{Addr: "10.0.0.1:11211", Weight: 1}},
		{spec: "10.0.0.1:11212:3", want: Server{Addr: "10.0.0.1:11212", Weight: 3}},
		{spec: "10.0.0.1:11212:3 alpha", want: Server{Addr: "10.0.0.1:11212", Weight: 3, Name: "alpha"}},
		{spec: "localhost:1", want: Server{Addr: "localhost:1", Weight: 1}},
		{spec: "[::1]:11211", want: Server{Addr: "[::1]:11211", Weight: 1}},
		{spec: "[fe80::1%eth0]:11212:4 v6", want: Server{Addr: "[fe80::1%eth0]:11212", Weight: 4, Name: "v6"}},
		{spec: "[::1]", bad: true},
		{spec: "[::1]11211", bad: true},
		{spec: "[::1:11211", bad: true},
		{spec: "::1:11211", bad: true},
		{spec: "[::1]:11211:2:3", bad: true},
		{spec: "10.0.0.1", bad: true},
		{spec: "10.0.0.1:0", bad: true},
		{spec: "10.0.0.1:11211:0", bad: true},
		{spec: "10.0.0.1:11211:x", bad: true},
		{spec: ":11211", bad: true},
		{spec: "a:1 b c", bad: true},
	} {
		got, err := ParseServer(tc.spec)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseServer(%q) = %v, want an error", tc.spec, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseServer(%q) = %v, %v; want %v", tc.spec, got, err, tc.want)
		}
	}
}

func TestParseServersReportsEveryError(t *testing.T) {
	_, err := ParseServers([]string{"a", "b:1", "b:1", "c:0"})
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{`"a"`, "listed twice", `"c:0"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestKetamaNameDropsDefaultPort(t *testing.T) {
	for spec, want := range map[string]string{
		"10.0.0.1:11211":       "10.0.0.1",
		"10.0.0.1:11212":       "10.0.0.1:11212",
		"10.0.0.1:11211:2 web": "web",
		"[::1]:11211":          "::1", // bare, as libmemcached names it
		"[::1]:11212:2":        "::1:11212",
	} {
		if got := servers(t, spec)[0].ketamaName(); got != want {
			t.Errorf("%s: ketama name %q, want %q", spec, got, want)
		}
	}
}

// The crc32 variants are defined by the IEEE crc, which the standard
// library computes; python-memcached's "or 1" shows for keys whose top
// bits are zero.
func TestCRC32Variants(t *testing.T) {
	for _, key := range []string{"", "a", "foo", "hello world", "\xff\xfe"} {
		full := crc32.ChecksumIEEE([]byte(key))
		want := (full >> 16) & 0x7fff
		if want == 0 {
			want = 1
		}
		if got := hashCRC32([]byte(key)); got != want {
			t.Errorf("crc32(%q) = %d, want %d", key, got, want)
		}
		if got := hashCRC32a([]byte(key)); got != full {
			t.Errorf("crc32a(%q) = %d, want %d", key, got, full)
		}
	}
	if hashCRC32(nil) != 1 {
		t.Error(`crc32("") must be 1, as python-memcached's "or 1" makes it`)
	}
}

// FNV-1a and one-at-a-time, worked by hand for one byte.
func TestSmallHashesByHand(t *testing.T) {
	basis, prime := uint32(0x84222325), uint32(0x1b3)
	if got, want := hashFNV1a64([]byte("a")), (basis^'a')*prime; got != want {
		t.Errorf("fnv1a_64(a) = %#x, want %#x", got, want)
	}
	// A byte >= 0x80 goes in sign-extended, as C's char does.
	if got, want := hashFNV1a64([]byte{0xe9}), (basis^0xffffffe9)*prime; got != want {
		t.Errorf("fnv1a_64(0xe9) = %#x, want %#x", got, want)
	}
	h := uint32('a')
	h += h << 10
	h ^= h >> 6
	h += h << 3
	h ^= h >> 11
	h += h << 15
	if got := hashOneAtATime([]byte("a")); got != h {
		t.Errorf("one_at_a_time(a) = %#x, want %#x", got, h)
	}
}

func TestKetamaPointCounts(t *testing.T) {
	r, err := New(servers(t, "a:1", "b:1", "c:1"), Ketama, "md5")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.points) != 3*160 {
		t.Errorf("%d points for 3 equal servers, want 480", len(r.points))
	}
	r, _ = New(servers(t, "a:1:1", "b:1:3"), Ketama, "md5")
	count := map[int]int{}
	for _, p := range r.points {
		count[p.server]++
	}
	// pct*160/4*2 = 20 and 60 digests: 80 and 240 points.
	if count[0] != 80 || count[1] != 240 {
		t.Errorf("weights 1:3 gave %v points, want 80 and 240", count)
	}
}

func keys(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("key:%d", i))
	}
	return out
}

func TestOrderOfServersDoesNotMatter(t *testing.T) {
	for _, dist := range []string{Ketama} {
		a, _ := New(servers(t, "a:1", "b:1", "c:1"), dist, "md5")
		b, _ := New(servers(t, "c:1", "a:1", "b:1"), dist, "md5")
		for _, k := range keys(2000) {
			if x, y := a.Servers()[a.Pick(k)].Addr, b.Servers()[b.Pick(k)].Addr; x != y {
				t.Fatalf("%s: key %s on %s or %s depending on listing order", dist, k, x, y)
			}
		}
	}
}

// Adding a fourth server moves about a quarter of the keys, all of them to
// the new server: the point of consistent hashing.
func TestAddingServerMovesKeysOnlyToIt(t *testing.T) {
	before, _ := New(servers(t, "a:1", "b:1", "c:1"), Ketama, "md5")
	after, _ := New(servers(t, "a:1", "b:1", "c:1", "d:1"), Ketama, "md5")
	ks := keys(10000)
	moved := 0
	for _, k := range ks {
		x, y := before.Servers()[before.Pick(k)].Addr, after.Servers()[after.Pick(k)].Addr
		if x != y {
			moved++
			if y != "d:1" {
				t.Fatalf("key %s moved from %s to %s, not to the new server", k, x, y)
			}
		}
	}
	if frac := float64(moved) / float64(len(ks)); frac < 0.15 || frac > 0.35 {
		t.Errorf("%.2f of keys moved, want about 0.25", frac)
	}
}

func TestModulaBucketsByWeight(t *testing.T) {
	r, _ := New(servers(t, "a:1:2", "b:1"), Modula, "crc32")
	if fmt.Sprint(r.buckets) != "[0 0 1]" {
		t.Fatalf("buckets %v, want [0 0 1]", r.buckets)
	}
	for _, k := range keys(100) {
		want := r.buckets[hashCRC32(k)%3]
		if got := r.Pick(k); got != want {
			t.Fatalf("Pick(%s) = %d, want %d", k, got, want)
		}
	}
}

func TestNewRejectsUnknownNames(t *testing.T) {
	s := servers(t, "a:1")
	if _, err := New(s, "random", "md5"); err == nil {
		t.Error("unknown distribution accepted")
	}
	if _, err := New(s, Ketama, "sha1"); err == nil {
		t.Error("unknown hash accepted")
	}
	if _, err := New(nil, Ketama, "md5"); err == nil {
		t.Error("empty server list accepted")
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	for _, dist := range []string{Ketama, Modula} {
		for _, h := range Hashes() {
			r, _ := New(servers(t, "a:1", "b:1", "c:1"), dist, h)
			key := []byte("some:key:1234")
			if n := testing.AllocsPerRun(100, func() { r.Pick(key) }); n != 0 {
				t.Errorf("%s/%s: Pick allocates %.0f times", dist, h, n)
			}
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, h := range []string{"md5", "fnv1a_64"} {
		b.Run(h, func(b *testing.B) {
			s, _ := ParseServers([]string{"a:1", "b:1", "c:1", "d:1"})
			r, _ := New(s, Ketama, h)
			key := []byte("user:session:0123456789")
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				r.Pick(key)
			}
		})
	}
}

func TestPickNDistinctAndStartsWithPick(t *testing.T) {
	servers, _ := ParseServers([]string{"10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211", "10.0.0.4:11211"})
	for _, dist := range []string{Ketama, Modula} {
		r, err := New(servers, dist, "md5")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2000; i++ {
			key := []byte(fmt.Sprintf("lock-%d", i))
			got := r.PickN(nil, key, 3)
			if len(got) != 3 || got[0] != r.Pick(key) {
				t.Fatalf("%s: PickN(%s) = %v, Pick = %d", dist, key, got, r.Pick(key))
			}
			if got[0] == got[1] || got[1] == got[2] || got[0] == got[2] {
				t.Fatalf("%s: PickN(%s) = %v: not distinct", dist, key, got)
			}
		}
		if got := r.PickN(nil, []byte("x"), 9); len(got) != 4 {
			t.Fatalf("%s: PickN over 4 servers asked for 9 = %v", dist, got)
		}
	}
}
