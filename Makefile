# deviceid: see README.md.
GO       ?= go
BIN      := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2

.PHONY: all build test lint unit e2e fuzz run bench clean

all: build

build:
	$(GO) build -o $(BIN)/coredns ./cmd/coredns
	$(GO) build -o $(BIN)/deviceid-signer ./cmd/deviceid-signer
	$(GO) build -o $(BIN)/deviceid-verify ./cmd/deviceid-verify

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# Everything CI checks: formatting, vet, staticcheck, unit tests (with the race
# detector), the end-to-end tests, and the Corefile examples.
test: lint unit e2e

lint: $(BIN)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/staticcheck ./...

unit:
	$(GO) test -race -count=1 ./record/... ./plugin/... ./signer/... ./verify/... ./internal/... ./cmd/...

e2e:
	$(GO) test -count=1 -timeout 10m ./test/...

# A short fuzzing run of each parser; longer runs: make fuzz FUZZTIME=10m.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run XXX -fuzz FuzzParseDevice -fuzztime $(FUZZTIME) ./record/
	$(GO) test -run XXX -fuzz FuzzServeDNS -fuzztime $(FUZZTIME) ./plugin/
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime $(FUZZTIME) ./internal/pkcs11key/

# CoreDNS on 127.0.0.1:1053 over an embedded etcd with sample devices.
run: build
	@scripts/run-dev.sh

bench: build
	$(GO) test -run XXX -bench . -benchmem -cpu 1,2 ./plugin/
	scripts/bench.sh

clean:
	rm -rf $(BIN) .deviceid-dev bench-out
