# Every target that needs Postgres goes through scripts/with-postgres.sh,
# which reuses TEST_DATABASE_URL / DATABASE_URL or starts a throwaway cluster.
GO ?= go
WITH_PG := scripts/with-postgres.sh

.PHONY: test demo bench build lint

test: ## run the whole test suite against a real Postgres
	$(WITH_PG) $(GO) test -race -count=1 ./...

demo: build ## run the worker against the built-in Prolific simulator (Ctrl-C stops it)
	$(WITH_PG) bin/worker demo

# Each benchmark of BENCHMARKS.md runs with the repetitions it needs and
# prints the medians of its repetitions; about 4 minutes in all.
BENCH := $(WITH_PG) $(GO) test -run '^$$' -count 1 -timeout 20m ./internal/bench
bench: ## run the benchmarks recorded in BENCHMARKS.md, then the packages' micro-benchmarks
	$(BENCH) -bench '^BenchmarkCycleOverhead$$' -benchtime 7x
	$(BENCH) -bench '^BenchmarkIdleCost$$' -benchtime 7x
	$(BENCH) -bench '^BenchmarkHistoryIndependence$$' -benchtime 1000x -v
	$(BENCH) -bench '^BenchmarkWorkerPeakRSS$$' -benchtime 1x
	$(BENCH) -bench '^BenchmarkThroughput$$' -benchtime 7x
	$(WITH_PG) $(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v /internal/bench$$)

build: ## a static binary in bin/worker
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/worker ./cmd/worker

lint: ## formatting and vet
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...
