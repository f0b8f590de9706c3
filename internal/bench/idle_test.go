package bench_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
)

// BenchmarkIdleCost measures what 1,000 unchanged polls (one cycle over
// 1,000 studies whose progress did not move, after the baseline cycle)
// write: observation, outbox and alert rows (the goal is no observation
// row), the WAL the cycle inserts and how much the tables grow on disk.
// For comparison it ends with one cycle in which every study's progress
// moved.
//
// WAL is counted with pg_current_wal_insert_lsn, which is server-wide: other
// clients writing at the same time inflate it, so the minimum over the
// repetitions is reported next to the median.
func BenchmarkIdleCost(b *testing.B) {
	const studies = 1000
	f := newFleet(b, studies)
	p := f.newPoller(b, 8)
	tk := newTicks()
	probe := f.probe(b)
	ctx := b.Context()

	for _, m := range []mix{{status: true}, {}} {
		if _, err := f.cycle(ctx, p, tk.take(), m); err != nil {
			b.Fatal(err)
		}
	}
	var obs, outbox, wal, growth []float64
	for b.Loop() {
		before, err := writes(ctx, probe)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.cycle(ctx, p, tk.take(), mix{}); err != nil {
			b.Fatal(err)
		}
		d, err := before.since(ctx, probe)
		if err != nil {
			b.Fatal(err)
		}
		obs, outbox = append(obs, float64(d.observations)), append(outbox, float64(d.outbox+d.alerts))
		wal = append(wal, float64(d.walBytes)/studies)
		growth = append(growth, float64(d.tableBytes)/studies)
	}
	for _, n := range obs {
		if n != 0 {
			b.Errorf("an unchanged cycle wrote observation rows: %v per cycle of %d polls", obs, studies)
			break
		}
	}

	for _, id := range f.ids {
		f.fake.SetProgress(id, progress(41))
	}
	before, err := writes(ctx, probe)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.cycle(ctx, p, tk.take(), mix{}); err != nil {
		b.Fatal(err)
	}
	changed, err := before.since(ctx, probe)
	if err != nil {
		b.Fatal(err)
	}
	if changed.observations != studies {
		b.Errorf("a cycle in which every study moved wrote %d observation rows, want %d", changed.observations, studies)
	}

	b.Logf("%d unchanged polls per cycle: observation rows %v, outbox and alert rows %v, WAL B/poll %.0f, table growth B/poll %.0f; "+
		"changed cycle: %d observation rows, WAL B/poll %.0f, table growth B/poll %.0f",
		studies, obs, outbox, wal, growth, changed.observations, float64(changed.walBytes)/studies, float64(changed.tableBytes)/studies)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(obs), "observation-rows/cycle")
	b.ReportMetric(median(outbox), "outbox+alert-rows/cycle")
	b.ReportMetric(median(wal), "wal-B/poll")
	b.ReportMetric(minimum(wal), "wal-B/poll-min")
	b.ReportMetric(median(growth), "table-growth-B/poll")
	b.ReportMetric(float64(changed.walBytes)/studies, "changed-wal-B/poll")
}

// writeMark is the state of the schema's tables and the server's WAL at one
// moment, to count what happened since.
type writeMark struct {
	walLSN       string
	observations int64
	outbox       int64
	alerts       int64
	tableBytes   int64
}

// writeDelta is what was written between two marks.
type writeDelta struct {
	observations, outbox, alerts int64
	walBytes                     int64
	tableBytes                   int64
}

// markSQL reads the WAL position, row counts and the tables' total size
// (heap, indexes and TOAST) of the fleet's schema.
const markSQL = `
	SELECT pg_current_wal_insert_lsn()::text,
	       (SELECT count(*) FROM observations), (SELECT count(*) FROM outbox), (SELECT count(*) FROM alerts),
	       pg_total_relation_size('studies') + pg_total_relation_size('watches') + pg_total_relation_size('observations')
	       + pg_total_relation_size('alerts') + pg_total_relation_size('outbox')`

// writes takes a mark.
func writes(ctx context.Context, probe *pgx.Conn) (writeMark, error) {
	var m writeMark
	err := probe.QueryRow(ctx, markSQL).Scan(&m.walLSN, &m.observations, &m.outbox, &m.alerts, &m.tableBytes)
	if err != nil {
		return writeMark{}, fmt.Errorf("reading row counts and WAL position: %w", err)
	}
	return m, nil
}

// since counts what was written after m.
func (m writeMark) since(ctx context.Context, probe *pgx.Conn) (writeDelta, error) {
	now, err := writes(ctx, probe)
	if err != nil {
		return writeDelta{}, err
	}
	var wal int64
	if err := probe.QueryRow(ctx, `SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint`, now.walLSN, m.walLSN).Scan(&wal); err != nil {
		return writeDelta{}, fmt.Errorf("measuring WAL: %w", err)
	}
	return writeDelta{
		observations: now.observations - m.observations,
		outbox:       now.outbox - m.outbox,
		alerts:       now.alerts - m.alerts,
		walBytes:     wal,
		tableBytes:   now.tableBytes - m.tableBytes,
	}, nil
}

// minimum returns the smallest value, or 0 for none.
func minimum(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Min(xs)
}
