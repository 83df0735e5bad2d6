# deviceid: see README.md.
GO       ?= go
BIN      := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2

VERSION  := $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT   := $(shell git rev-parse --short HEAD 2>/dev/null)
# The deviceid build, and CoreDNS's commit field (bin/coredns -version names both).
LDFLAGS  := -X github.com/deviceid/deviceid/internal/version.Version=$(VERSION) \
            -X github.com/coredns/coredns/coremain.GitCommit=$(COMMIT)

.PHONY: all help build test lint unit e2e fuzz run bench bench-import bench-scale bench-sites soak screenshots clean

all: build

# The targets' descriptions in one column, however long the longest target's name.
help: ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
	  '{n[NR] = $$1; d[NR] = $$2; if (length($$1) > w) w = length($$1)} END {for (i = 1; i <= NR; i++) printf "  make %-" w "s  %s\n", n[i], d[i]}'

build: ## bin/coredns (with the plugin), bin/deviceid-signer, -verify, -mqtt, -device
	@echo "make build: bin/coredns, bin/deviceid-signer, bin/deviceid-verify, bin/deviceid-mqtt, bin/deviceid-device"
	@echo "  (one go build, packages in parallel; the first build on a cold cache takes minutes, CoreDNS most of them)"
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# Shopify's toxiproxy, the WAN and partition tests' fault injection, built from its own
# module (its client, in go.mod, has the same version).
TOXIPROXY_VERSION := v2.5.0
$(BIN)/toxiproxy-server:
	GOBIN=$(BIN)/.toxiproxy $(GO) install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)
	mv $(BIN)/.toxiproxy/server $@ && rmdir $(BIN)/.toxiproxy
bin/toxiproxy-server: $(BIN)/toxiproxy-server

# etcd itself, at the version of go.mod: the tests run its grpc-proxy (etcd grpc-proxy
# start), the documented way to put many replicas on one cluster.
$(BIN)/etcd: go.mod
	$(GO) build -o $@ go.etcd.io/etcd/server/v3
bin/etcd: $(BIN)/etcd

# Everything CI checks: formatting, vet, staticcheck, unit tests (with the race
# detector), the end-to-end tests, and the Corefile examples.
test: lint unit e2e ## everything CI checks

lint: $(BIN)/staticcheck ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/staticcheck ./...

unit: ## unit tests with the race detector
	$(GO) test -race -count=1 ./record/... ./plugin/... ./signer/... ./verify/... ./internal/... ./cmd/...

e2e: $(BIN)/toxiproxy-server $(BIN)/etcd ## end-to-end tests: etcd (one node and a 3-member cluster), CoreDNS, the signer, unbound, delv, SoftHSM, Chromium, toxiproxy
	$(GO) test -count=1 -timeout 15m ./test/...

# A short fuzzing run of each parser; longer runs: make fuzz FUZZTIME=10m.
FUZZTIME ?= 30s
fuzz: ## a short fuzzing run of each parser (FUZZTIME=10m for longer)
	$(GO) test -run XXX -fuzz FuzzParseDevice -fuzztime $(FUZZTIME) -timeout 0 ./record/
	$(GO) test -run XXX -fuzz FuzzParseZoneKey -fuzztime $(FUZZTIME) -timeout 0 ./record/
	$(GO) test -run XXX -fuzz FuzzServeDNS -fuzztime $(FUZZTIME) -timeout 0 ./plugin/
	$(GO) test -run XXX -fuzz FuzzDecodeSnapshot -fuzztime $(FUZZTIME) -timeout 0 ./plugin/
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime $(FUZZTIME) -timeout 0 ./internal/pkcs11key/
	$(GO) test -run XXX -fuzz FuzzImportLines -fuzztime $(FUZZTIME) -timeout 0 ./cmd/deviceid-signer/
	$(GO) test -run XXX -fuzz FuzzAPIDecode -fuzztime $(FUZZTIME) -timeout 0 ./signer/httpapi/
	$(GO) test -run XXX -fuzz FuzzVerifyAnswer -fuzztime $(FUZZTIME) -timeout 0 -fuzzminimizetime 5s ./verify/
	$(GO) test -run XXX -fuzz FuzzBrokerACL -fuzztime $(FUZZTIME) -timeout 0 -fuzzminimizetime 5s ./internal/mqttbroker/

# CoreDNS on 127.0.0.1:1053 over an embedded etcd with sample devices.
run: build ## the dev stack: etcd, signer, demo service, CoreDNS, MQTT broker and device on 127.0.0.1
	@scripts/run-dev.sh

bench: build ## query-path benchmarks, the load runs and the MQTT figures of BENCHMARKS.md, with SVG charts in bench-out/
	$(GO) test -run XXX -bench . -benchmem -cpu 1,2 ./plugin/
	scripts/bench.sh

bench-import: build ## deviceid-signer import of 100,000 devices beside raw etcd puts (N=, ROUNDS=)
	$(GO) run ./test/importbench -n $${N:-100000} -rounds $${ROUNDS:-3} 2>&1 | grep -v '^import:'

bench-sites: $(BIN)/toxiproxy-server ## replicas across sites: cold start and restart from a snapshot, write-to-answer 150 ms away, catch-up after a cut (DEVICEID_SITES_N=1000000 for a million, DEVICEID_SITES_CUT=10m)
	$(GO) test -run XXX -bench BenchmarkSites -benchtime 1x -timeout 0 ./test/

bench-scale: build ## a million and ten million signed devices, floods, freshness (SIZES=1000000 for one size), with SVG charts
	scripts/bench-scale.sh

soak: ## 30 minutes of queries and enrollments against a 3-member cluster with restarts (SOAK=30m)
	@DEVICEID_SOAK=$${SOAK:-30m} $(GO) test -tags soak -count=1 -run TestSoak -timeout 0 -v ./test/ > soak.log 2>&1; \
	  status=$$?; grep -v '^\[' soak.log | tail -40; exit $$status

screenshots: ## the console's pictures in docs/img (headless Chromium, as the console tests click through)
	mkdir -p docs/img
	DEVICEID_SCREENSHOTS=$(CURDIR)/docs/img $(GO) test -count=1 -run TestConsole ./test/

clean: ## remove bin/, the dev data and benchmark output
	rm -rf $(BIN) .deviceid-dev bench-out
