# amqphub: the two commands a newcomer needs are `make run` and `make test`.
GO       ?= go
STATICCHECK_VERSION ?= v0.8.2
GOBIN    := $(shell $(GO) env GOPATH)/bin
FUZZTIME ?= 5s

.PHONY: run test deps lint unit fuzz-short bench build

run:
	$(GO) run ./cmd/amqphub serve

build:
	$(GO) build -o bin/amqphub ./cmd/amqphub

# test installs what the tests need (Go modules, the interop suite's npm
# packages, staticcheck), checks formatting and static analysis, runs every
# test with the race detector, and gives each fuzz target a short run.
test: deps lint unit fuzz-short

deps:
	$(GO) mod download
	cd interop/node && npm ci --no-audit --no-fund --loglevel=error
	@test -x $(GOBIN)/staticcheck || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './interop/node/*')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

unit:
	$(GO) test -race -count=1 -timeout 15m ./...

# Each fuzz target gets a short run on top of its committed corpus (which
# the unit run already replays).  Minimizing off: when the short -fuzztime ends while
# the engine minimizes a new interesting input, `go test` fails with
# "context deadline exceeded" (seen on FuzzPatch); a crasher is still saved.
fuzz-short:
	@set -e; for spec in $$($(GO) run ./internal/tools/fuzztargets); do \
	  pkg=$${spec%%:*}; fn=$${spec##*:}; \
	  echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=0 $$pkg; \
	done

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...
