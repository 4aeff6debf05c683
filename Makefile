# memcachedlock: see README.md.
GO ?= go

.PHONY: all build test run bench bench-locks lint deps clean

all: build

build:
	$(GO) build -o bin/memcachedlock ./cmd/memcachedlock

## deps: install memcached, nutcracker, libmemcached-tools and the Python clients when missing
deps:
	scripts/deps.sh

PYTHON ?= /usr/bin/python3

## test: every test, with the race detector, against real memcached processes; then the Python client's
test: deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	cd clients/python && MEMCACHEDLOCK_BIN=$(CURDIR)/bin/memcachedlock $(PYTHON) -m pytest -q tests

## run: the proxy on 127.0.0.1:11311 in front of two local memcached servers
run: build
	scripts/run.sh

## bench: memcaslap straight to memcached, through nutcracker and through the proxy (medians, ratios), then the Go micro-benchmarks
bench: build deps
	$(GO) build -o bin/memcachedlock-bench ./cmd/memcachedlock-bench
	bin/memcachedlock-bench proxy --rounds 3 --duration 4s
	$(GO) test -run XXX -bench . -benchmem ./ring ./proxy

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin

## bench-locks: W=8 workers contend for one lock (hold 1ms, think 5ms) through the proxy, beside 50ms polling
bench-locks: build deps
	$(GO) build -o bin/memcachedlock-bench ./cmd/memcachedlock-bench
	bin/memcachedlock-bench locks --workers 8 --hold 1ms --think 5ms --duration 4s
