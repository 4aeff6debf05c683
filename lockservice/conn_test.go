package lockservice

import "testing"

// The lock service's reading of memcached's replies: meta statuses, flags,
// values that look like replies, stats, and framing that does not hold.
func TestReplies(t *testing.T) {
	rs := replies{[]byte("HD c42 t-1\r\nVA 4 c7\r\nEN\r\n\r\nEN\r\nSTAT pid 9\r\nSTAT evictions 3\r\nEND\r\nNS\r\n")}
	m, err := rs.meta()
	if err != nil || m.status != "HD" {
		t.Fatalf("%+v %v", m, err)
	}
	if c, ok := m.flag('c'); !ok || c != 42 {
		t.Fatalf("cas %d %v", c, ok)
	}
	if ttl, ok := m.flag('t'); !ok || ttl != -1 {
		t.Fatalf("ttl %d %v", ttl, ok)
	}
	if m, err = rs.meta(); err != nil || m.status != "VA" || string(m.value) != "EN\r\n" {
		t.Fatalf("a value that looks like a reply: %+v %v", m, err)
	}
	if m, err = rs.meta(); err != nil || m.status != "EN" {
		t.Fatalf("%+v %v", m, err)
	}
	if n, err := rs.evictions(); err != nil || n != 3 {
		t.Fatalf("evictions %d %v", n, err)
	}
	if m, err = rs.meta(); err != nil || m.status != "NS" {
		t.Fatalf("%+v %v", m, err)
	}
	for _, bad := range []string{"VA 9\r\nshort\r\n", "VA 2\r\nhiXX", "HD", "SERVER_ERROR out of memory\r\n", "\r\n", "VA x\r\n"} {
		rs := replies{[]byte(bad)}
		if m, err := rs.meta(); err == nil {
			t.Errorf("%q: %+v, want an error", bad, m)
		}
	}
	if _, err := (&replies{[]byte("STAT pid 1\r\nEND\r\n")}).evictions(); err == nil {
		t.Error("stats without evictions: no error")
	}
}

func TestMarkerValues(t *testing.T) {
	v := markerValue(7, "abc")
	n, recovering, layout, ok := parseMarker(v)
	if !ok || recovering || n != 7 || layout != "abc" || markerBorn(v).IsZero() {
		t.Fatalf("%q: %d %v %q %v", v, n, recovering, layout, ok)
	}
	r := recoveryValue(markerBorn(v), "abc")
	n, recovering, layout, ok = parseMarker(r)
	if !ok || !recovering || n != markerBorn(v).UnixMilli() || layout != "abc" {
		t.Fatalf("%q: %d %v %q %v", r, n, recovering, layout, ok)
	}
	for _, bad := range []string{"", "v2 a 1 x", "v1 a x y", "v1 a 1"} {
		if _, _, _, ok := parseMarker(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}
