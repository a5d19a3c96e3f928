# l4lb — see README.md.
GO        ?= go
export GOTOOLCHAIN ?= local
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build test test-deps test-short lint demo bench microbench reliability fuzz clean install uninstall deb

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/l4lb ./cmd/l4lb

# Installs the Debian packages the tests use (redis-server, redis-tools,
# curl) when missing, then runs every test with the race detector.
# The second run covers the write(2) and sendmsg(2) paths, which the engine's
# loops and the UDP listeners take where io_uring is refused (L4LB_IO_URING=0
# forces it).
test: test-deps
	$(GO) test -race -count=1 -timeout 20m ./...
	L4LB_IO_URING=0 $(GO) test -race -count=1 -timeout 10m ./splice/ ./internal/proxy/ ./internal/udp/

test-deps:
	@scripts/test-deps.sh

# Quicker: smaller payloads, no race detector.
test-short:
	$(GO) test -short -count=1 ./...

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Runs l4lb in front of three backends it starts itself and shows weights
# and failover in the terminal. Needs nothing but Go.
demo: build
	$(GO) run ./internal/demo -bin bin/l4lb

# Direct vs l4lb vs HAProxy (nbthread 1, 2) vs nginx stream (1, 2 workers) on
# loopback; installs haproxy, nginx, redis and iperf3 with apt-get when missing.
# Quick mode takes under 5 minutes; FULL=1 runs 3 repetitions, longer;
# SMOKE=1 runs direct and l4lb only for a few seconds. Results are printed and
# written to bench/results/<timestamp>.txt, or to OUT=path.
bench: build
	$(GO) run ./bench/cmd/l4lb-bench -bin bin/l4lb $(if $(FULL),-full) $(if $(SMOKE),-smoke) $(if $(OUT),-o $(OUT))

# The Go benchmarks of the hot paths (docs/PERFORMANCE.md, "Go benchmarks"):
# host selection, the splice copier, a proxied connection, the UDP relay and
# its batched reads, with allocations per operation. BENCHTIME per benchmark.
# BenchmarkReadQueued's untimed part (its writes, and the memory statistics
# that StopTimer reads on every op) is many times its timed part, so at 1s
# each case ran hundreds of thousands of ops and the whole took 5 minutes:
# it runs a fixed count instead.
BENCHTIME ?= 1s
microbench:
	$(GO) test -run '^$$' -bench . -skip ReadQueued -benchmem -benchtime $(BENCHTIME) -count 1 ./pool/ ./splice/ ./internal/proxy/ ./internal/udp/
	$(GO) test -run '^$$' -bench ReadQueued -benchmem -benchtime 20000x -count 1 ./internal/udp/

# The reliability suite at full length (docs/RELIABILITY.md): L4LB_LONG=1
# runs each test's long variant at its own documented length; SOAK is the
# soak's length alone (SOAK=5m for a shorter one); SCALE is the scale test's
# connections for 60 s (capped by the fd hard limit: 9 800 under 20 000).
SOAK  ?= 30m
SCALE ?= 10000
RELIABILITY_TIMEOUT ?= 120m
reliability:
	L4LB_LONG=1 L4LB_SOAK=$(SOAK) L4LB_SCALE=$(SCALE) $(GO) test -count=1 -v -timeout $(RELIABILITY_TIMEOUT) ./internal/reliability/

# Runs every fuzz target for FUZZTIME each (all of them, even after one
# finds a crasher; the list of those is printed and make fails at the end).
# Crashers land in the package's testdata/fuzz and are then run by plain
# `go test` as seeds. internal/reliability's TestFuzzTargetsListed fails when
# a Fuzz function is missing here.
FUZZTIME ?= 1m
FUZZ_TARGETS = ./internal/config:FuzzParse ./control:FuzzDecodeRequest \
	./internal/proxyproto:FuzzRead ./health:FuzzParseGreeting \
	./internal/discovery:FuzzConsulPayload ./internal/discovery:FuzzLKG \
	./internal/server:FuzzDecodeJournal ./internal/consolelog:FuzzSameAsZerolog
fuzz:
	@failed=""; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 10s $$pkg || failed="$$failed $$name"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed"; exit 1; fi

# Install layout (docs/OPERATING.md). PREFIX=/usr/local puts the unit in
# /usr/local/lib/systemd/system, which systemd searches for local units;
# the .deb (PREFIX=/usr) uses Debian's /lib/systemd/system. The unit's
# /usr/local paths are rewritten to PREFIX. An existing l4lb.toml is never
# overwritten: the example is always refreshed beside it. Every docs/*.md is
# installed, flat, beside README.md, whose docs/ links are rewritten to match.
PREFIX    ?= /usr/local
DESTDIR   ?=
BINDIR    ?= $(PREFIX)/bin
UNITDIR   ?= $(PREFIX)/lib/systemd/system
DOCDIR    ?= $(PREFIX)/share/doc/l4lb
CONFDIR   ?= /etc/l4lb
DOCS      := $(sort $(wildcard docs/*.md))

install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(CONFDIR)
	install -m 0755 bin/l4lb $(DESTDIR)$(BINDIR)/l4lb
	sed 's|/usr/local/bin/|$(BINDIR)/|; s|/usr/local/share/doc/l4lb/|$(DOCDIR)/|' dist/systemd/l4lb.service > $(DESTDIR)$(UNITDIR)/l4lb.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/l4lb.service
	sed 's|/usr/local/share/doc/l4lb/|$(DOCDIR)/|' dist/systemd/l4lb.socket > $(DESTDIR)$(UNITDIR)/l4lb.socket
	chmod 0644 $(DESTDIR)$(UNITDIR)/l4lb.socket
	install -m 0644 config.example.toml $(DESTDIR)$(CONFDIR)/l4lb.toml.example
	test -e $(DESTDIR)$(CONFDIR)/l4lb.toml || install -m 0644 config.example.toml $(DESTDIR)$(CONFDIR)/l4lb.toml
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	sed 's|](docs/)|](.)|g; s|](docs/\([^)]\)|](\1|g' README.md > $(DESTDIR)$(DOCDIR)/README.md
	chmod 0644 $(DESTDIR)$(DOCDIR)/README.md
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; \
	  echo "installed; edit $(CONFDIR)/l4lb.toml, then: systemctl enable --now l4lb"; fi

# Leaves $(CONFDIR) (the admin's config) and /var/lib/l4lb (live edits).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/l4lb $(DESTDIR)$(UNITDIR)/l4lb.service $(DESTDIR)$(UNITDIR)/l4lb.socket $(DESTDIR)$(CONFDIR)/l4lb.toml.example
	rm -rf $(DESTDIR)$(DOCDIR)
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# bin/l4lb_<version>_<arch>.deb with dpkg-deb: /usr/bin/l4lb, the unit in
# /lib/systemd/system, /etc/l4lb/l4lb.toml as a conffile. The version is
# git describe's: a tag v1.2.3 gives 1.2.3, later commits 1.2.3+4+gHASH,
# no tag 0~gitHASH (Debian wants a leading digit).
DEB_VERSION = $(shell echo '$(VERSION)' | sed -e 's/^v\([0-9]\)/\1/;t' -e 's/^/0~git/' | sed 's/-/+/g')
DEB_ARCH    = $(shell dpkg --print-architecture 2>/dev/null || $(GO) env GOARCH)
deb:
	rm -rf bin/deb
	$(MAKE) install DESTDIR=$(CURDIR)/bin/deb PREFIX=/usr UNITDIR=/lib/systemd/system
	install -d bin/deb/DEBIAN
	sed 's/@VERSION@/$(DEB_VERSION)/; s/@ARCH@/$(DEB_ARCH)/' dist/debian/control > bin/deb/DEBIAN/control
	install -m 0644 dist/debian/conffiles bin/deb/DEBIAN/conffiles
	install -m 0755 dist/debian/postinst dist/debian/prerm dist/debian/postrm bin/deb/DEBIAN/
	dpkg-deb --root-owner-group --build bin/deb bin/l4lb_$(DEB_VERSION)_$(DEB_ARCH).deb

clean:
	rm -rf bin
