# memcachedlock: see README.md.
GO ?= go

.PHONY: all build test test-python run bench bench-locks bench-zodb lint deps clean release docker venv

all: build

# The commit is stamped into every build; the version only when HEAD is
# tagged (v1.2.3 or 1.2.3), else the source's own (proxy.Version) stays.
# `memcachedlock --version` prints both; stats and /metrics report them.
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
VERSION ?= $(patsubst v%,%,$(shell git describe --tags --exact-match 2>/dev/null))
PKG     := github.com/memcachedlock/memcachedlock
LDFLAGS := -X $(PKG)/proxy.Commit=$(COMMIT) $(if $(VERSION),-X $(PKG)/proxy.Version=$(VERSION))

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/memcachedlock ./cmd/memcachedlock

## release: static binaries (no cgo) for linux/amd64 and linux/arm64 in dist/, with SHA256SUMS
release:
	rm -rf dist && mkdir -p dist
	for arch in amd64 arm64; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" \
			-o dist/memcachedlock-linux-$$arch ./cmd/memcachedlock || exit 1; \
	done
	cd dist && sha256sum memcachedlock-* > SHA256SUMS
	@cat dist/SHA256SUMS

## docker: the image (multi-stage, static binary, non-root), when docker works; says why when it skips
docker:
	VERSION="$(VERSION)" COMMIT="$(COMMIT)" scripts/docker.sh

## deps: install memcached, nutcracker, libmemcached-tools and the Python clients when missing
deps:
	scripts/deps.sh

# Debian's python3 (scripts/deps.sh installs python3-venv for it), else the first on PATH.
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
VENV ?= $(CURDIR)/.venv

## venv: the Python client installed (editable) with ZODB, ZEO, Products.ZCatalog and pytest into .venv; reused until pyproject.toml changes
venv: $(VENV)/.installed

$(VENV)/.installed: clients/python/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e './clients/python[test,zope]'
	touch $@

## test: every test, with the race detector, against real memcached processes; then the Python client's
test: deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	$(MAKE) test-python

## test-python: the Python client's pytest suite, ZODB and ZEO included, against the built proxy
test-python: build venv
	cd clients/python && MEMCACHEDLOCK_BIN=$(CURDIR)/bin/memcachedlock $(VENV)/bin/python -m pytest -q

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
	rm -rf bin dist $(VENV)

## bench-locks: W=8 workers contend for one lock (hold 1ms, think 5ms) through the proxy, beside 50ms polling
bench-locks: build deps
	$(GO) build -o bin/memcachedlock-bench ./cmd/memcachedlock-bench
	bin/memcachedlock-bench locks --workers 8 --hold 1ms --think 5ms --duration 3s --rounds 3

## bench-zodb: 6 ZEO client processes write one hot catalog-like object (one client alone, no lock, 50ms polling, zlock via one and via two proxies), then index into a real ZCatalog with and without patch_catalog
bench-zodb: build deps venv
	$(VENV)/bin/python clients/python/bench/zodb_bench.py --proxy-bin bin/memcachedlock
	$(VENV)/bin/python clients/python/bench/zcatalog_bench.py --proxy-bin bin/memcachedlock
