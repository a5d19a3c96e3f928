# l4lb — see README.md.
GO        ?= go
export GOTOOLCHAIN ?= local
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build test test-deps test-short lint demo bench reliability fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/l4lb ./cmd/l4lb

# Installs the Debian packages the tests use (redis-server, redis-tools,
# curl) when missing, then runs every test with the race detector.
test: test-deps
	$(GO) test -race -count=1 -timeout 20m ./...

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

# The reliability suite at full length: a 30-minute soak (SOAK=5m for a
# shorter one), 10 000 connections (SCALE=N), 5 000 randomized steps.
SOAK  ?= 30m
SCALE ?= 10000
reliability:
	L4LB_LONG=$(SOAK) L4LB_SCALE=$(SCALE) $(GO) test -count=1 -v -timeout 120m ./internal/reliability/

# Runs every fuzz target for FUZZTIME each; crashers land in the package's
# testdata/fuzz and are then run by plain `go test` as seeds.
FUZZTIME ?= 1m
FUZZ_TARGETS = ./internal/config:FuzzParse ./control:FuzzDecodeRequest \
	./internal/proxyproto:FuzzRead ./health:FuzzParseGreeting
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 10s $$pkg || exit 1; \
	done

clean:
	rm -rf bin
