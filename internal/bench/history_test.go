package bench_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

// Sizes of the two histories the poll is timed against.
const (
	smallHistory = 100
	largeHistory = 1_000_000
	// fillerStudies are other watched studies, never due, so that the
	// study lookups run against a table of realistic size.
	fillerStudies = 10_000
)

// historyStudy is the study polled in both histories.
var historyStudy = studyID(0)

// BenchmarkHistoryIndependence times one poll-and-evaluate (store.RecordPoll
// with rules.Evaluate, as the poller runs it) of a study with 100 stored
// observations and of one with 1,000,000, in two schemas that differ only
// in that history. The two alternate, one pair per repetition. Each schema
// also holds 10,000 other watched studies and one resolved alert per 100
// observations, and is ANALYZEd after the bulk load.
//
// Before timing, the queries RecordPoll runs are shown with EXPLAIN
// (ANALYZE, BUFFERS) against the large history (run with -v to see them in
// full); the benchmark fails if one scans a table instead of using an index.
//
// Sub-benchmarks: poll=unchanged (progress as last stored: nothing is
// written, the commit is asynchronous) and poll=changed (progress moves on
// every poll: an observation is written and the commit waits for the WAL
// flush). Metrics are medians: small-us, large-us and ratio (large over
// small, over the medians).
func BenchmarkHistoryIndependence(b *testing.B) {
	small := newHistory(b, smallHistory)
	large := newHistory(b, largeHistory)
	explainRecordPoll(b, large)

	b.Run("poll=unchanged", func(b *testing.B) {
		comparePolls(b, small, large, func(int) []rules.URLCounts { return progress(40) }, false)
	})
	b.Run("poll=changed", func(b *testing.B) {
		comparePolls(b, small, large, func(i int) []rules.URLCounts { return progress(41 + (i & 1)) }, true)
	})
}

// history is one schema with the polled study and its stored observations.
type history struct {
	rows  int
	store *store.Store
	probe *pgx.Conn
}

// newHistory makes a schema whose polled study has rows observations, the
// latest of them equal to progress(40).
func newHistory(b *testing.B, rows int) *history {
	b.Helper()
	ctx := b.Context()
	dsn := storetest.NewDatabaseURL(b)
	s, err := store.Open(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	probe, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { probe.Close(context.Background()) })
	h := &history{rows: rows, store: s, probe: probe}

	now := time.Now()
	if err := register(ctx, s, []string{historyStudy}); err != nil {
		b.Fatal(err)
	}
	latest, err := json.Marshal(progress(40))
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	load := []struct {
		what string
		sql  string
		args []any
	}{
		{"filler studies", `
			INSERT INTO studies (id, name, status, created_at, next_poll_at)
			SELECT 'f' || lpad(to_hex(n), 23, '0'), 'Filler ' || n, 'ACTIVE', $1, 'infinity'
			FROM generate_series(1, $2) n`, []any{now, fillerStudies}},
		{"filler watches", `
			INSERT INTO watches (study_id, channel_id, created_at, updated_at)
			SELECT id, 'CFILLER', $1, $1 FROM studies WHERE id <> $2`, []any{now, historyStudy}},
		// One row a minute going back in time, allocation creeping up to
		// the latest row, which is the progress the unchanged poll sees.
		{"observations", `
			INSERT INTO observations (study_id, observed_at, progress, allocated_total)
			SELECT $1, $2::timestamptz - n * interval '1 minute',
			       CASE WHEN n = 1 THEN $4::jsonb ELSE jsonb_build_array(
			           jsonb_build_object('external_url', 'https://tasks.example/a', 'total_allocation', 100, 'allocated', (40 - n / 100000) % 100, 'capacity_increments', 0),
			           jsonb_build_object('external_url', 'https://tasks.example/b', 'total_allocation', 100, 'allocated', (40 - n / 100000) % 100, 'capacity_increments', 0),
			           jsonb_build_object('external_url', 'https://tasks.example/c', 'total_allocation', 200, 'allocated', (40 - n / 100000) % 100, 'capacity_increments', 2)) END,
			       3 * ((40 - n / 100000) % 100)
			FROM generate_series(1, $3) n`, []any{historyStudy, now, rows, latest}},
		{"resolved alerts", `
			INSERT INTO alerts (study_id, rule, external_url, fired_at, resolved_at)
			SELECT $1, 'over_allocation', 'https://tasks.example/a', $2::timestamptz - n * interval '100 minutes',
			       $2::timestamptz - n * interval '100 minutes' + interval '10 minutes'
			FROM generate_series(1, $3) n`, []any{historyStudy, now, max(rows/100, 1)}},
		{"statistics", `ANALYZE`, nil},
	}
	for _, l := range load {
		if _, err := probe.Exec(ctx, l.sql, l.args...); err != nil {
			b.Fatalf("loading %s: %v", l.what, err)
		}
	}
	var stored int
	if err := probe.QueryRow(ctx, `SELECT count(*) FROM observations WHERE study_id = $1`, historyStudy).Scan(&stored); err != nil || stored != rows {
		b.Fatalf("stored %d observations (%v), want %d", stored, err, rows)
	}
	b.Logf("loaded %d observations in %s", rows, time.Since(start).Round(time.Millisecond))
	return h
}

// poll claims the study (untimed) and times one RecordPoll with the rules
// seeing urls. It fails the benchmark when the poll wrote an observation
// and wantWrite is false, or the other way round.
func (h *history) poll(b *testing.B, urls []rules.URLCounts, wantWrite bool) time.Duration {
	b.Helper()
	ctx := b.Context()
	const owner = "bench-history"
	now := time.Now()
	claimed, err := h.store.ClaimDueStudies(ctx, owner, now, now, time.Minute, 1)
	if err != nil || len(claimed) != 1 {
		b.Fatalf("claiming the study: %d claimed, %v", len(claimed), err)
	}
	poll := rules.Poll{Status: rules.StatusActive, URLs: urls}
	settings := rules.Settings{}.WithDefaults()
	start := time.Now()
	at := start
	res, err := h.store.RecordPoll(ctx, store.PollRecord{StudyID: historyStudy, Owner: owner, At: at, OK: true},
		func(prev store.PollState) store.Evaluation {
			next, transitions := rules.Evaluate(prev.State, poll, settings, at)
			// Due again at once, so the next repetition can claim it.
			return store.Evaluation{State: next, Transitions: transitions, NextPollAt: at}
		})
	elapsed := time.Since(start)
	switch {
	case err != nil:
		b.Fatal(err)
	case res.Lost:
		b.Fatal("lease lost")
	case res.ObservationWritten != wantWrite:
		b.Fatalf("with %d stored rows the poll wrote an observation: %t, want %t", h.rows, res.ObservationWritten, wantWrite)
	}
	return elapsed
}

// comparePolls alternates polls of the small and the large history.
func comparePolls(b *testing.B, small, large *history, urls func(i int) []rules.URLCounts, wantWrite bool) {
	// Warm up: the first poll of each prepares the statements.
	for _, h := range []*history{small, large} {
		h.poll(b, urls(-1), wantWrite)
	}
	var smallUS, largeUS []float64
	i := 0
	for b.Loop() {
		u := urls(i)
		order := []*history{small, large}
		if i%2 == 1 {
			order = []*history{large, small}
		}
		for _, h := range order {
			us := float64(h.poll(b, u, wantWrite)) / float64(time.Microsecond)
			if h == small {
				smallUS = append(smallUS, us)
			} else {
				largeUS = append(largeUS, us)
			}
		}
		i++
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(smallUS), "small-us")
	b.ReportMetric(median(largeUS), "large-us")
	b.ReportMetric(median(largeUS)/median(smallUS), "ratio")
}

// recordPollQueries are the statements RecordPoll runs for an unchanged
// poll, copied from internal/store; explainRecordPoll checks that the copies
// still match the source, so a changed query cannot go unexplained.
var recordPollQueries = []struct {
	name, file, sql string
	args            func(now time.Time) []any
}{
	{"study state", "poll.go", `
		SELECT s.name, s.status, s.consecutive_failures, s.stall_since, s.lease_owner,
		       coalesce((SELECT min(stall_after_seconds) FROM watches w WHERE w.study_id = s.id), 0),
		       coalesce((SELECT bool_or(stall_after_seconds IS NULL) FROM watches w WHERE w.study_id = s.id), true),
		       (SELECT o.progress FROM observations o WHERE o.study_id = s.id
		        ORDER BY o.observed_at DESC, o.id DESC LIMIT 1),
		       (SELECT jsonb_agg(jsonb_build_object('rule', a.rule, 'external_url', a.external_url, 'since', a.fired_at)
		               ORDER BY a.rule, a.external_url)
		        FROM alerts a WHERE a.study_id = s.id AND a.resolved_at IS NULL)
		FROM studies s WHERE s.id = $1 FOR UPDATE OF s`,
		func(time.Time) []any { return []any{historyStudy} }},
	{"study update", "poll.go", `
		UPDATE studies SET name = $2, status = $3, consecutive_failures = $4, stall_since = $5,
		       last_polled_at = $6, last_poll_ok = $7, last_error = $8, poll_note = $9,
		       next_poll_at = CASE WHEN poll_requested THEN LEAST($10::timestamptz, $6::timestamptz) ELSE $10::timestamptz END,
		       lease_owner = NULL, lease_until = NULL,
		       status_checked_at = CASE WHEN status_recheck THEN NULL WHEN $11 THEN $6::timestamptz ELSE status_checked_at END,
		       status_recheck = false
		WHERE id = $1`,
		func(now time.Time) []any {
			return []any{historyStudy, "Bench study 0", rules.StatusActive, 0, now, now, true, "", "", now, false}
		}},
}

// explainRecordPoll shows the plans of recordPollQueries against h, in a
// transaction rolled back afterwards, and fails the benchmark when a plan
// scans observations, alerts, studies or watches sequentially.
func explainRecordPoll(b *testing.B, h *history) {
	b.Helper()
	ctx := b.Context()
	for _, q := range recordPollQueries {
		source, err := os.ReadFile("../store/" + q.file)
		if err != nil {
			b.Fatal(err)
		}
		if !strings.Contains(squash(string(source)), squash(q.sql)) {
			b.Fatalf("the %s query is no longer in internal/store/%s as copied here: update recordPollQueries", q.name, q.file)
		}
	}
	tx, err := h.probe.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, q := range recordPollQueries {
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+q.sql, q.args(time.Now())...)
		if err != nil {
			b.Fatalf("explaining the %s query: %v", q.name, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			b.Fatalf("explaining the %s query: %v", q.name, err)
		}
		plan := strings.Join(lines, "\n")
		b.Logf("%s query with %d stored observations:\n%s\n%s", q.name, h.rows, strings.TrimSpace(dedent(q.sql)), plan)
		for _, table := range []string{"observations", "alerts", "studies", "watches"} {
			if strings.Contains(plan, "Seq Scan on "+table) {
				b.Errorf("the %s query scans %s sequentially with %d stored observations:\n%s", q.name, table, h.rows, plan)
			}
		}
	}
}

// squash collapses every run of white space to one space, to compare SQL
// texts whatever their indentation.
func squash(s string) string { return strings.Join(strings.Fields(s), " ") }

// dedent strips the tab indentation of a query written inside Go code.
func dedent(sql string) string {
	lines := strings.Split(sql, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, "\t\t")
	}
	return strings.Join(lines, "\n")
}
