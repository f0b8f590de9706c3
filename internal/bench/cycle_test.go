package bench_test

import (
	"context"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/poller"
)

// BenchmarkCycleOverhead compares one full cycle of the real poller (claim,
// fetch through the real client, RecordPoll with the rules, in Postgres)
// with a bare loop that makes the same HTTP requests through the same
// client at the same concurrency, for 2,000 studies of 3 URLs each. The two
// alternate within each repetition, so both see the same machine.
//
// Three request mixes, checked against the fake's counters on both sides:
//   - first: status and progress per study, every poll writes the baseline
//     observation (the state is reset before each repetition);
//   - steady: progress only, nothing changed, so no observation is written;
//   - changed: progress only, every study's allocation moved, so every poll
//     writes an observation and commits synchronously.
//
// The fake answers at once, which makes the bare loop as cheap as HTTP can
// be. The steady mix is also run with 20 ms added to every reply, a
// conservative stand-in for the round trip to the real API.
//
// Metrics are medians over the repetitions (-benchtime Nx): cycle-ms,
// bare-ms, ratio (cycle over bare, per repetition) and overhead-us/study.
func BenchmarkCycleOverhead(b *testing.B) {
	const studies, concurrency = 2000, 8
	f := newFleet(b, studies)
	p := f.newPoller(b, concurrency)
	tk := newTicks()
	probe := f.probe(b)
	// The baseline cycle reads every status and writes the first
	// observations, so the steady mixes also hold when run alone.
	if _, err := f.cycle(b.Context(), p, tk.take(), mix{status: true}); err != nil {
		b.Fatal(err)
	}

	b.Run("mix=first", func(b *testing.B) {
		compareCycles(b, f, p, tk, mix{status: true}, func(ctx context.Context, _ int) error {
			// Forget what the rules learned, so the next cycle is a first one again.
			_, err := probe.Exec(ctx, `
				DELETE FROM observations;
				UPDATE studies SET status_checked_at = NULL, stall_since = NULL`)
			return err
		})
	})
	b.Run("mix=steady", func(b *testing.B) {
		compareCycles(b, f, p, tk, mix{}, nil)
	})
	b.Run("mix=steady,latency=20ms", func(b *testing.B) {
		f.latency.Store(int64(20 * time.Millisecond))
		defer f.latency.Store(0)
		compareCycles(b, f, p, tk, mix{}, nil)
	})
	b.Run("mix=changed", func(b *testing.B) {
		compareCycles(b, f, p, tk, mix{}, func(_ context.Context, i int) error {
			for j := range f.ids {
				f.fake.SetProgress(f.ids[j], progress(41+i%50))
			}
			return nil
		})
	})
}

// compareCycles runs one untimed warm-up pair, then per repetition prepare
// (untimed) and a cycle and a bare loop in alternating order.
func compareCycles(b *testing.B, f *fleet, p *poller.Poller, tk *ticks, m mix, prepare func(ctx context.Context, i int) error) {
	ctx := b.Context()
	const concurrency = 8
	run := func(i int) (cycle, bare time.Duration) {
		if prepare != nil {
			if err := prepare(ctx, i); err != nil {
				b.Fatalf("preparing repetition %d: %v", i, err)
			}
		}
		var err error
		if i%2 == 0 {
			if bare, err = f.bare(ctx, concurrency, m); err == nil {
				cycle, err = f.cycle(ctx, p, tk.take(), m)
			}
		} else {
			if cycle, err = f.cycle(ctx, p, tk.take(), m); err == nil {
				bare, err = f.bare(ctx, concurrency, m)
			}
		}
		if err != nil {
			b.Fatalf("repetition %d: %v", i, err)
		}
		return cycle, bare
	}

	run(-1)
	var cycles, bares, ratios []float64
	i := 0
	for b.Loop() {
		cycle, bare := run(i)
		cycles, bares = append(cycles, ms(cycle)), append(bares, ms(bare))
		ratios = append(ratios, float64(cycle)/float64(bare))
		i++
	}
	b.Logf("%d studies, concurrency %d: cycle ms %.0f, bare ms %.0f, ratio %.2f", len(f.ids), concurrency, cycles, bares, ratios)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(cycles), "cycle-ms")
	b.ReportMetric(median(bares), "bare-ms")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric((median(cycles)-median(bares))*1000/float64(len(f.ids)), "overhead-us/study")
}
