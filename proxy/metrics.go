package proxy

import (
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/memcachedlock/memcachedlock/lockservice"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the proxy's Prometheus series. Counters the proxy keeps
// anyway (connections, per-server errors, locks) are read when scraped
// (readOnScrape); only the histograms and per-command counts cost anything
// on the request path, and those are resolved to plain series up front.
type metrics struct {
	registry  *prometheus.Registry
	commands  [cmdLockInfo + 1]prometheus.Counter
	serverLat *prometheus.HistogramVec
	lockWait  *prometheus.HistogramVec
}

var commandNames = func() map[command]string {
	m := make(map[command]string, len(commands))
	for name, c := range commands {
		m[c] = name
	}
	return m
}()

func newMetrics() *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	cmds := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "memcachedlock_commands_total", Help: "Client commands, by command.",
	}, []string{"command"})
	for c, name := range commandNames {
		m.commands[c] = cmds.WithLabelValues(name)
	}
	m.serverLat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "memcachedlock_server_request_duration_seconds",
		Help:    "Time from sending a request to a memcached server to its reply (or failure), by server.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16), // 50µs to ~1.6s
	}, []string{"server"})
	m.lockWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "memcachedlock_lock_wait_seconds",
		Help:    "Time a lock or rlock command waited, by outcome (granted, not_locked, error).",
		Buckets: prometheus.ExponentialBuckets(100e-6, 2, 22), // 100µs to ~3.5min
	}, []string{"outcome"})
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "memcachedlock_build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": Version, "commit": BuildCommit(), "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	m.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		cmds, m.serverLat, m.lockWait, buildInfo)
	return m
}

// readOnScrape registers the series read from counters the proxy keeps
// anyway: its own, the servers', the lock service's.
func (m *metrics) readOnScrape(count *counters, routes *routing, locks *lockservice.Service) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	m.registry.MustRegister(
		gauge("memcachedlock_connections", "Client connections open.", func() float64 { return float64(count.connsCurr.Load()) }),
		counter("memcachedlock_connections_total", "Client connections accepted.", func() float64 { return float64(count.connsTotal.Load()) }),
		counter("memcachedlock_connections_rejected_total", "Client connections refused (--max-connections).", func() float64 { return float64(count.connsRefused.Load()) }),
		counter("memcachedlock_get_server_error_misses_total", "Multi-get keys answered as misses because their server failed.", func() float64 { return float64(count.getMisses.Load()) }),
		gauge("memcachedlock_lock_waiters", "Lock commands waiting in this proxy.", func() float64 { return float64(locks.Stats().Waiters) }),
		counter("memcachedlock_lock_grants_total", "Locks granted.", func() float64 { return float64(locks.Stats().Grants) }),
		counter("memcachedlock_lock_handoffs_total", "Locks handed straight from a releasing holder to a waiter.", func() float64 { return float64(locks.Stats().Handoffs) }),
		counter("memcachedlock_lock_handoffs_early_total", "Handoffs to a waiter reserved as the successor, made before memcached was written.", func() float64 { return float64(locks.Stats().EarlyHandoffs) }),
		counter("memcachedlock_lock_timeouts_total", "Lock waits that ran out.", func() float64 { return float64(locks.Stats().Timeouts) }),
		counter("memcachedlock_lock_forwarded_total", "Lock commands forwarded to the name's home proxy.", func() float64 { return float64(locks.Stats().ForwardedOut) }),
		counter("memcachedlock_lock_forwarded_in_total", "Lock commands served here for other proxies, as the name's home.", func() float64 { return float64(locks.Stats().ForwardedIn) }),
		counter("memcachedlock_lock_forward_failed_total", "Forwards that fell back to serving the name here (home unreachable).", func() float64 { return float64(locks.Stats().ForwardFailed) }),
		gauge("memcachedlock_lock_proxies", "Proxies registered in front of the same lock servers, this one included.", func() float64 { return float64(locks.Stats().Proxies) }),
		serverCollector{routes}, lockServerCollector{locks},
	)
}

// serverCollector reports the per-server counters the backends keep.
type serverCollector struct{ routes *routing }

var (
	descRequests  = prometheus.NewDesc("memcachedlock_server_requests_total", "Requests sent to a memcached server.", []string{"server"}, nil)
	descErrors    = prometheus.NewDesc("memcachedlock_server_errors_total", "Requests a memcached server did not answer.", []string{"server"}, nil)
	descTimeouts  = prometheus.NewDesc("memcachedlock_server_timeouts_total", "Requests that timed out.", []string{"server"}, nil)
	descEjections = prometheus.NewDesc("memcachedlock_server_ejections_total", "Times a server was ejected from the ring.", []string{"server"}, nil)
	descUp        = prometheus.NewDesc("memcachedlock_server_up", "1 while the proxy is connected to the server.", []string{"server"}, nil)
)

func (c serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descErrors, descTimeouts, descEjections, descUp} {
		ch <- d
	}
}

func (c serverCollector) Collect(ch chan<- prometheus.Metric) {
	for _, sc := range c.routes.counts() {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(sc.requests), sc.addr)
		ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(sc.errors), sc.addr)
		ch <- prometheus.MustNewConstMetric(descTimeouts, prometheus.CounterValue, float64(sc.timeouts), sc.addr)
		ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(sc.ejections), sc.addr)
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, float64(b2i(sc.up)), sc.addr)
	}
}

// lockServerCollector reports each lock server's state.
type lockServerCollector struct{ locks *lockservice.Service }

var (
	descLockRecovering = prometheus.NewDesc("memcachedlock_lock_server_recovering_seconds",
		"Seconds until a lock server that lost its state takes writes again; 0 when it takes them.", []string{"server"}, nil)
	descLockReady = prometheus.NewDesc("memcachedlock_lock_server_ready",
		"1 while the lock server carries the marker this proxy trusts and takes writes.", []string{"server"}, nil)
)

func (c lockServerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLockRecovering
	ch <- descLockReady
}

func (c lockServerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.locks.States() {
		left, ready := 0.0, 0.0
		if st.Recovering {
			left = max(time.Until(st.Until).Seconds(), 0)
		}
		if st.Ready {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(descLockRecovering, prometheus.GaugeValue, left, st.Addr)
		ch <- prometheus.MustNewConstMetric(descLockReady, prometheus.GaugeValue, ready, st.Addr)
	}
}

// MetricsHandler serves the proxy's metrics in Prometheus' format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})
}

// HealthHandler answers 200 when the proxy is connected to every server
// (cache and lock servers), and 503 with the servers it is not connected
// to, one per line.
func (s *Server) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if down := downServers(s.routes.counts()); len(down) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "servers down:\n%s\n", strings.Join(down, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// ReadyHandler answers 200 while the proxy accepts clients, which it does
// only once every server has been dialled a first time, and 503 before
// that and once it is shutting down.
func (s *Server) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		s.mu.Lock()
		ready := len(s.listeners) > 0 && !s.closing
		s.mu.Unlock()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not accepting clients")
			return
		}
		fmt.Fprintln(w, "ready")
	})
}

// downServers lists, sorted, the servers the proxy is not connected to.
func downServers(counts []serverCounts) []string {
	var down []string
	for _, sc := range counts {
		if !sc.up {
			down = append(down, sc.addr)
		}
	}
	slices.Sort(down)
	return down
}

func (m *metrics) lockWaited(start time.Time, outcome string) {
	m.lockWait.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
}
