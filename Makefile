# containerd-shim-graceful-v2
PREFIX ?= /usr/local
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/graceful-shim/graceful/shim.Version=$(VERSION)
BIN := bin/containerd-shim-graceful-v2

.PHONY: all build install stack test test-unit test-integration demo vet fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/containerd-shim-graceful-v2

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/containerd-shim-graceful-v2

# Installs apt packages, runc and containerd into the stack cache (reused when present).
stack:
	bash integration/stack/install.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test-unit:
	$(GO) test -race -count=1 ./process/... ./shim/...

test-integration: stack
	$(GO) test -count=1 -v -timeout 20m ./integration/

test: stack vet test-unit test-integration

# A short fuzz pass over the annotation and options-file parsers (FUZZTIME each).
FUZZTIME ?= 10s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfigFile$$' -fuzztime $(FUZZTIME) ./shim/
	$(GO) test -run '^$$' -fuzz '^FuzzApplyAnnotations$$' -fuzztime $(FUZZTIME) ./shim/

demo: stack
	$(GO) run ./integration/demo

clean:
	rm -rf bin
