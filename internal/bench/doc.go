// Package bench holds the benchmarks behind the performance goals of the
// design and the numbers in BENCHMARKS.md: a poll cycle's own cost beside
// the HTTP fetches it makes, what an unchanged poll writes, rule evaluation
// at 100 and 1,000,000 stored observations, the worker's peak memory with
// 10,000 watched studies, and the polling throughput per core.
//
// The package has no code besides its benchmarks. They need Postgres (see
// storetest) and take minutes, so they run only with -bench, never as part
// of `go test ./...`; `make bench` runs each with the repetition count it
// needs. Every benchmark reports medians of its own repetitions through
// b.ReportMetric, so one run prints the numbers the table shows.
package bench
