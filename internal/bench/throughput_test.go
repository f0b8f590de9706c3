package bench_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkThroughput measures how many studies per second steady-state
// cycles poll (progress only, nothing changed) for 2,000 studies against a
// zero-latency fake API, and where the CPU goes. The fake runs in its own
// process, so the three parties are measured apart: this process (the
// poller, the client, pgx: the worker's own CPU), the fake API, and the
// store's Postgres backends. A bare fetch loop in the same repetition gives
// the part of the worker's CPU that is the HTTP client.
//
// Metrics are medians over the repetitions: studies/s (wall), worker-us/study,
// http-client-us/study, pg-us/study, fake-us/study (CPU per study),
// studies/worker-core-s (1 s / worker CPU per study),
// studies/core-s-with-pg (1 s / worker and Postgres CPU per study) and
// cpu-busy (the share of all cores the three used during the cycle).
func BenchmarkThroughput(b *testing.B) {
	const studies = 2000
	api := startFakeAPI(b, studies)
	f := newFleetAt(b, studies, api.url)
	probe := f.probe(b)
	tk := newTicks()
	ctx := b.Context()

	for _, concurrency := range []int{8, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", concurrency), func(b *testing.B) {
			p := f.newPoller(b, concurrency)
			// Warm up: the first run reads statuses and writes the baseline,
			// and opens every pooled connection.
			for _, m := range []mix{{status: true}, {}} {
				if _, err := f.cycle(ctx, p, tk.take(), m); err != nil {
					b.Fatal(err)
				}
			}
			var rate, worker, client, pg, fake, busy []float64
			n := float64(studies)
			perStudy := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / n }
			for b.Loop() {
				pids, err := f.backendPIDs(ctx, probe)
				if err != nil {
					b.Fatal(err)
				}
				self0, pg0, fake0 := selfCPU(), procsCPU(pids), mustProcCPU(b, api.pid)
				wall, err := f.cycle(ctx, p, tk.take(), mix{})
				if err != nil {
					b.Fatal(err)
				}
				self1, pg1, fake1 := selfCPU(), procsCPU(pids), mustProcCPU(b, api.pid)
				if _, err := f.bare(ctx, concurrency, mix{}); err != nil {
					b.Fatal(err)
				}
				self2 := selfCPU()

				rate = append(rate, n/wall.Seconds())
				worker = append(worker, perStudy(self1-self0))
				client = append(client, perStudy(self2-self1))
				pg = append(pg, perStudy(pg1-pg0))
				fake = append(fake, perStudy(fake1-fake0))
				busy = append(busy, float64((self1-self0)+(pg1-pg0)+(fake1-fake0))/float64(wall)/float64(runtime.NumCPU()))
			}
			b.Logf("studies/s %.0f; CPU us/study: worker %.0f, of it HTTP client %.0f; Postgres %.0f; fake %.0f; cores busy %.2f",
				rate, worker, client, pg, fake, busy)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(rate), "studies/s")
			b.ReportMetric(median(worker), "worker-us/study")
			b.ReportMetric(median(client), "http-client-us/study")
			b.ReportMetric(median(pg), "pg-us/study")
			b.ReportMetric(median(fake), "fake-us/study")
			b.ReportMetric(1e6/median(worker), "studies/worker-core-s")
			b.ReportMetric(1e6/(median(worker)+median(pg)), "studies/core-s-with-pg")
			b.ReportMetric(median(busy), "cpu-busy")
		})
	}
}

// mustProcCPU is procCPU failing the benchmark on error.
func mustProcCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, err := procCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}
