package integration

import (
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/memcachedlock/memcachedlock/internal/testmc"
	"github.com/memcachedlock/memcachedlock/proxy"
)

func TestPrometheusMetrics(t *testing.T) {
	c := startCluster(t, 2)
	addr, srv := startProxy(t, proxy.Config{Servers: c.servers(t)})
	mc := memcache.New(addr)
	mc.Set(&memcache.Item{Key: "m", Value: []byte("1")})
	mc.Get("m")
	conn := testmc.Dial(t, addr)
	conn.RoundTrip("lock metered 30 0")
	conn.RoundTrip("lock metered 30 0 someone-else")

	web := httptest.NewServer(srv.MetricsHandler())
	defer web.Close()
	resp, err := web.Client().Get(web.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`memcachedlock_commands_total{command="gets"} 1`, // gomemcache reads with gets
		`memcachedlock_commands_total{command="lock"} 2`,
		`memcachedlock_lock_wait_seconds_count{outcome="granted"} 1`,
		`memcachedlock_lock_wait_seconds_count{outcome="not_locked"} 1`,
		`memcachedlock_lock_grants_total 1`,
		`memcachedlock_connections `,
		`memcachedlock_server_up{server="` + c[0].Addr + `"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if !regexp.MustCompile(`memcachedlock_server_request_duration_seconds_count\{server="[^"]+"\} [1-9]`).MatchString(text) {
		t.Error("no server request durations observed")
	}
}
