package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memcachedlock/memcachedlock/proxy"
)

// Memcached is the specification: each case goes byte for byte to a real
// memcached and to the proxy in front of real memcached (one server, and
// three so that multi-key commands are split and merged), and the replies
// must be the same bytes.
func TestDifferentialAgainstMemcached(t *testing.T) {
	direct := startCluster(t, 1)[0].Addr
	one := startCluster(t, 1)
	three := startCluster(t, 3)
	// A long server timeout: these cases are about bytes, and a loaded
	// machine (-race, other tests) can take over a second for 1 MiB values.
	proxyOne, _ := startProxy(t, proxy.Config{Servers: one.servers(t), Timeout: differentialTimeout})
	proxyThree, _ := startProxy(t, proxy.Config{Servers: three.servers(t), Timeout: differentialTimeout})

	for i, tc := range differentialCases() {
		name := fmt.Sprintf("%02d:%.40q", i, tc)
		want := exchange(t, direct, tc)
		for _, target := range []struct{ name, addr string }{{"1 server", proxyOne}, {"3 servers", proxyThree}} {
			got := exchange(t, target.addr, tc)
			if got != want {
				t.Errorf("case %s via proxy (%s):\n sent %q\n memcached %q\n proxy     %q", name, target.name, tc, want, got)
			}
		}
	}
}

const differentialTimeout = 10 * time.Second

// Slow senders: the same bytes, in pieces with pauses between them, to a
// proxy whose server timeout is shorter than the pauses. A slow client is
// not a slow server: memcached waits for it, and so does the proxy.
func TestDifferentialSlowSenders(t *testing.T) {
	const timeout = 100 * time.Millisecond
	direct := startCluster(t, 1)[0].Addr
	proxyOne, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 1).servers(t), Timeout: timeout})
	proxyThree, _ := startProxy(t, proxy.Config{Servers: startCluster(t, 3).servers(t), Timeout: timeout})
	oneByOne := func(s string) []string { return strings.Split(s, "") }
	cases := [][]string{
		{"set greeting 0 0 5\r\n", "hello\r\n", "get greeting\r\n"},
		{"set a 0 0 1", "0 noreply\r\n", "1234567890", "\r\nget a\r\n"},
		{"ms m 5 T0\r\n", "hel", "lo\r\n", "mg m v\r\n"},
		{"get a", " greeting ", "m\r\n"},
		{"set big 0 0 2000000\r\n", strings.Repeat("x", 1000000), strings.Repeat("x", 1000000) + "\r\n", "get big\r\n"},
		oneByOne("set a 0 0 3\r\nabc\r\nget a\r\nincr a 1\r\nmg a v\r\ndelete a noreply\r\nget a\r\n"),
	}
	for i, chunks := range cases {
		pause := 2 * timeout
		if len(chunks) > 10 {
			pause = time.Millisecond
		}
		want := exchangeChunks(t, direct, chunks, pause)
		for _, target := range []struct{ name, addr string }{{"1 server", proxyOne}, {"3 servers", proxyThree}} {
			if got := exchangeChunks(t, target.addr, chunks, pause); got != want {
				t.Errorf("case %d via proxy (%s):\n sent %q\n memcached %q\n proxy     %q", i, target.name, chunks, want, got)
			}
		}
	}
}

func key(n int) string { return strings.Repeat("k", n) }

func differentialCases() []string {
	long := key(250)
	tooLong := key(251)
	cases := []string{
		// storage and retrieval
		"set a 0 0 1\r\nx\r\nget a\r\n",
		"set a 5 0 3\r\nabc\r\nset b 6 0 3\r\ndef\r\nset c 7 0 0\r\n\r\nget a b zz c a b\r\ngets a c\r\n",
		"set e 0 0 0\r\n\r\nget e\r\n",
		"add a 0 0 1\r\nx\r\nadd a 0 0 1\r\ny\r\nreplace zz 0 0 1\r\nx\r\nreplace a 0 0 2\r\nyy\r\nget a\r\n",
		"append zz 0 0 1\r\nx\r\nset a 0 0 1\r\nb\r\nappend a 0 0 1\r\nc\r\nprepend a 0 0 1\r\na\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\ncas a 0 0 1 abc\r\ny\r\ncas a 0 0 1\r\ny\r\ncas a 0 0 1 1\r\ny\r\ncas zz 0 0 1 1\r\ny\r\n",
		"set a 0 -1 1\r\nx\r\nget a\r\n",
		"set a 4294967295 0 1\r\nx\r\nget a\r\nset a 4294967296 0 1\r\nx\r\nset a -1 0 1\r\nx\r\nget a\r\n",
		"set a 18446744073709551615 0 1\r\nx\r\nget a\r\nset a 18446744073709551616 0 1\r\nx\r\n",
		"set a 0 99999999999999999999 1\r\nx\r\nset a 0 abc 1\r\nx\r\nset a 0 0 -1\r\nx\r\nset a 0 0 abc\r\nx\r\n",
		"set a 0 0 01\r\nx\r\nset a 00 +5 1\r\ny\r\nget a\r\n",
		"set a abc 0 1\r\nx\r\nset a 0 0\r\nx\r\nset a 0 0 1 2 3\r\nx\r\nset a 0 0 1 foo\r\nx\r\nget a\r\n",
		"set a 0 0 1 noreply extra\r\nx\r\n",
		"set " + long + " 0 0 1\r\nx\r\nget " + long + "\r\n",
		"set " + tooLong + " 0 0 1\r\nx\r\nget b\r\n",
		"get " + tooLong + "\r\nget a\r\n",
		"get a " + tooLong + " b\r\n",
		"set big 0 0 2000000\r\n" + strings.Repeat("x", 2000000) + "\r\nget big\r\n",
		"set big 0 0 2000000 noreply\r\n" + strings.Repeat("x", 2000000) + "\r\nget big\r\n",
		"set big 0 0 1048576\r\n" + strings.Repeat("x", 1048576) + "\r\n",
		// noreply everywhere
		"set a 0 0 1 noreply\r\nx\r\nadd a 0 0 1 noreply\r\ny\r\nadd b 0 0 1 noreply\r\ny\r\nreplace a 0 0 1 noreply\r\nz\r\nappend a 0 0 1 noreply\r\n1\r\nprepend a 0 0 1 noreply\r\n0\r\nget a b\r\n",
		"set n 0 0 1 noreply\r\n5\r\nincr n 5 noreply\r\ndecr n 1 noreply\r\ntouch n 10 noreply\r\nget n\r\ndelete n noreply\r\nget n\r\n",
		"cas a 0 0 1 1 noreply\r\nx\r\nincr zz 1 noreply\r\nincr a x noreply\r\ntouch a abc noreply\r\ndelete zz noreply\r\n",
		// arithmetic
		"incr zz 1\r\nset n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nincr n 18446744073709551615\r\n",
		"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\nincr n -1\r\nincr n abc\r\nincr n\r\nincr n 1 2\r\nincr\r\n",
		"set s 0 0 1\r\nx\r\nincr s 1\r\ndecr s 1\r\nincr s 01\r\n",
		// touch, delete
		"set a 0 0 1\r\nx\r\ntouch a 10\r\ntouch zz 10\r\ntouch a abc\r\ntouch a\r\ntouch a 1 2 3\r\ntouch a -1\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\ndelete a 0\r\ndelete a 5\r\ndelete a b c\r\ndelete\r\ndelete a\r\n",
		// gat
		"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\ngat 100 a b zz\r\ngats 0 a\r\ngat abc a b\r\ngat\r\ngat 1\r\ngats\r\n",
		// unknown and odd lines
		"foo\r\nGET a\r\n\r\n  get a\r\nget  a  \r\nget a\n",
		// control bytes in keys, as memcaslap sends them
		"set \x10\x10\x10k1 0 0 1\r\nx\r\nset k\x01\x7f 0 0 1\r\ny\r\nget \x10\x10\x10k1 k\x01\x7f zz\r\nmg k\x01\x7f v\r\n",
		"get\r\ngets\r\n",
		// meta commands
		"ms m 2\r\nhi\r\nmg m v\r\nmg m v f t s k O123\r\nmg zz v\r\nmg zz v q\r\nmg m v q k\r\n",
		"ms m 2 q\r\nhi\r\nms m 2 MX\r\nhi\r\nmd m q\r\nmd m q\r\nmd m\r\nma x\r\nma x q\r\nma x N0 J5 v\r\nma x v\r\nma x MD v\r\n",
		"ms m 2 zz\r\nhi\r\nms m 2 T-abc\r\nhi\r\nms m bad\r\nhi\r\nms m\r\nmd\r\nmg\r\n",
		"ms YWJj 2 b\r\nhi\r\nmg YWJj b v k\r\nmg abc v\r\nmd YWJj b q\r\nmg abc v\r\nmg !!!! b v\r\n",
		"ms " + tooLong + " 2\r\nhi\r\nmg " + tooLong + " v\r\n",
		"ms m 2 I\r\nhi\r\nms m 2 c\r\nhi\r\nmg m c v\r\n",
		"mn\r\nmn\r\n",
		// meta flags, each form
		"ms mm 2 T0 F5 I\r\nhi\r\nmg mm s v f h t k O9\r\nmg mm s v f h t k O9 q\r\nmg zz s v O8 q k\r\nmg zz v O7 k\r\n",
		"ms mm 2 MA\r\nhi\r\nms zz 2 MA N0\r\nhi\r\nmg zz v\r\nms mm 2 MP\r\nab\r\nms mm 2 MR\r\ncd\r\nms mm 2 ME\r\nef\r\nms mm 2 MS\r\ngh\r\nms mm 2 MX\r\nij\r\nmg mm v\r\n",
		"ms mm 2\r\nhi\r\nmd mm I T30\r\nmg mm v c\r\nmg mm v\r\nms mm 2 I\r\nho\r\nmg mm v\r\nmd mm q\r\nmd mm q\r\nmd mm O5\r\n",
		"ma cnt N0 J10 MI D5 v t\r\nma cnt MD D100 v\r\nma cnt q\r\nma cnt v O1 k\r\nma cnt MX\r\nma cnt D-1\r\nma cnt Dx\r\n",
		"ms mm 2\r\nhi\r\nme mm\r\nme zz\r\nme\r\n",
		"mg zz N30 v s t\r\nmg zz v\r\nms mm 2 E999\r\nhi\r\nmg mm c v\r\nms mm 2 C998\r\nho\r\nms mm 2 C999\r\nho\r\n",
		"mg mm v T-1\r\nmg mm v\r\nms mm S2\r\nhi\r\nmg mm v O12345678901234567890123456789012\r\nmg mm v O123456789012345678901234567890123\r\n",
		// whole-cache commands
		"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\nflush_all 0\r\nflush_all abc\r\nflush_all noreply\r\nflush_all 0 noreply\r\n",
		"version\r\nverbosity\r\nverbosity 1\r\nverbosity 1 noreply\r\nverbosity a\r\nverbosity 1 2 3\r\n",
		// a long pipelined mix
		strings.Repeat("set p 0 0 1\r\n1\r\nincr p 1\r\nget p zz\r\ndelete p\r\nmg p v\r\n", 50),
		"quit\r\nget a\r\n",
		// malformed lines that end in noreply: memcached keeps quiet
		"delete a 5 noreply\r\ndelete a 0 noreply\r\ndelete a b c noreply\r\ndelete noreply\r\ndelete a noreply noreply\r\n",
		"verbosity noreply\r\nverbosity x noreply\r\nverbosity noreply noreply\r\nverbosity 1 2 noreply\r\n",
		"incr a noreply\r\ntouch a noreply\r\nincr noreply\r\nincr a x noreply\r\ntouch a x noreply\r\nincr " + tooLong + " 1 noreply\r\n",
		"set a 0 0 noreply\r\nx\r\nset a x 0 1 noreply\r\nx\r\ncas a 0 0 1 noreply\r\nx\r\ncas a 0 0 1 x noreply\r\nx\r\nset a 0 0 -1 noreply\r\n",
		"set " + tooLong + " 0 0 1 noreply\r\nx\r\nset " + tooLong + " 0 0 5\r\nx\r\ndelete " + tooLong + " noreply\r\n",
		"flush_all x noreply\r\nflush_all 1 2 noreply\r\nset a 0 0 1 2 noreply\r\nx\r\n",
		// a value over the limit also removes the old one (set, ms); the others keep it
		"set a 0 0 1\r\nx\r\nset a 0 0 2000000\r\n" + strings.Repeat("x", 2000000) + "\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\nset a 0 0 2000000 noreply\r\n" + strings.Repeat("x", 2000000) + "\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\nms a 2000000 q\r\n" + strings.Repeat("x", 2000000) + "\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\nms YQ== 2000000 b\r\n" + strings.Repeat("x", 2000000) + "\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\nappend a 0 0 2000000\r\n" + strings.Repeat("x", 2000000) + "\r\nget a\r\n",
		"set a 0 0 1\r\nx\r\nadd a 0 0 2000000\r\n" + strings.Repeat("x", 2000000) + "\r\nreplace a 0 0 2000000\r\n" + strings.Repeat("x", 2000000) + "\r\ncas a 0 0 2000000 1\r\n" + strings.Repeat("x", 2000000) + "\r\nget a\r\n",
		// admin commands: fanned out, OK when all say OK
		"cache_memlimit 100\r\ncache_memlimit\r\ncache_memlimit abc\r\ncache_memlimit 100 noreply\r\ncache_memlimit 1 2 3\r\ncache_memlimit x noreply\r\ncache_memlimit 64\r\n",
		"slabs reassign\r\nslabs reassign a b\r\nslabs automove 1\r\nslabs automove 5\r\nslabs automove\r\nslabs foo\r\nslabs\r\nslabs reassign 1 2 noreply\r\nslabs automove 0\r\n",
		"slabs reassign 50 51\r\nslabs reassign 1 1\r\n",
		"lru_crawler sleep 100\r\nlru_crawler tocrawl 10\r\nlru_crawler foo\r\nlru_crawler\r\nlru_crawler crawl all\r\nlru_crawler tocrawl 0\r\n",
		"lru tune 10 25 0.1 2\r\nlru mode flat\r\nlru mode segmented\r\nlru temp_ttl 10\r\nlru foo\r\nlru\r\n",
		"stats sizes\r\nstats sizes_enable\r\nstats sizes_disable\r\nstats detail on\r\nstats detail dump\r\nstats detail off\r\nstats detail\r\n",
		"stats cachedump\r\nstats bogus\r\nstats reset\r\nstats extstore\r\nshutdown\r\n",
		// lines that look like HTTP requests: memcached hangs up
		"GET / HTTP/1.0\r\n",
		"POST /x HTTP/1.1\r\nHost: y\r\n\r\n",
		"foo HTTP/1.0\r\n",
		"GET a\r\nGET /\r\nget a HTTP/1.0\r\nversion HTTP/1.0\r\nGET / HTTP/1.0 x\r\n",
	}
	var many strings.Builder
	many.WriteString("get")
	for i := 0; i < 100; i++ {
		cases = append(cases, fmt.Sprintf("set m%d 0 0 %d\r\n%d\r\n", i, len(fmt.Sprint(i)), i))
		fmt.Fprintf(&many, " m%d x%d", i, i)
	}
	return append(cases, many.String()+"\r\n")
}

// These differ between runs and servers: cas values, access times.
var volatile = regexp.MustCompile(`(?m)( c| cas=| la=|^VALUE \S+ \d+ \d+ )\d+`)

// exchange sends one case (then an mn, so the end of the replies is
// known) and returns what came back, with volatile numbers blanked.
func exchange(t *testing.T, addr, in string) string {
	t.Helper()
	return exchangeChunks(t, addr, []string{in}, 0)
}

// exchangeChunks is exchange with the input sent in pieces, pause apart.
func exchangeChunks(t *testing.T, addr string, chunks []string, pause time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	in := strings.Join(chunks, "")
	go func() {
		for i, chunk := range chunks {
			if i > 0 {
				time.Sleep(pause)
			}
			c.Write([]byte(chunk))
		}
		c.Write([]byte("mn\r\n"))
	}()
	var got []byte
	buf := make([]byte, 64<<10)
	noops := 1 + strings.Count(in, "mn\r\n")
	for !bytes.HasSuffix(got, []byte("MN\r\n")) || bytes.Count(got, []byte("MN\r\n")) < noops {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		// A server that hangs up on unread input resets the connection.
		if err == io.EOF || errors.Is(err, syscall.ECONNRESET) {
			got = append(got, "<closed>"...)
			break
		}
		if err != nil {
			t.Fatalf("%s: %v after %q", addr, err, got)
		}
	}
	return volatile.ReplaceAllString(string(got), "${1}N")
}
