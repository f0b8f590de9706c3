package faults_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

// token is the Prolific API token every fake expects.
const token = "faults-test-token"

// waitLimit bounds every wait in the suite. It is far above what any step
// needs, so hitting it means something is stuck, not slow.
const waitLimit = 60 * time.Second

// waitCtx returns a context that ends after waitLimit or with the test.
func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// studyID makes the n-th study id of a test, 24 lowercase hex characters
// like Prolific's.
func studyID(n int) string { return fmt.Sprintf("%024x", 0xfa0000+n) }

// counts is one URL's allocation as the fake serves it.
func counts(url string, total, allocated, increments int) []rules.URLCounts {
	return []rules.URLCounts{{ExternalURL: url, TotalAllocation: total, Allocated: allocated, CapacityIncrements: increments}}
}

// logSink collects JSON log lines, from an in-process worker or a child
// process's stderr, and wakes waiters on every write.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

// Write appends p and wakes the waiters.
func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return n, err
}

// String returns everything logged so far.
func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// msgNeedle is how slog's JSON handler writes a record's message.
func msgNeedle(msg string) string { return `"msg":` + strconv.Quote(msg) }

// count returns how many records carry msg as their message.
func (l *logSink) count(msg string) int {
	return strings.Count(l.String(), msgNeedle(msg))
}

// wait blocks until at least n records carry msg, or ctx ends.
func (l *logSink) wait(ctx context.Context, msg string, n int) error {
	needle := msgNeedle(msg)
	for {
		l.mu.Lock()
		got := strings.Count(l.buf.String(), needle)
		ch := l.changed
		l.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d log records %q (have %d): %w", n, msg, got, ctx.Err())
		}
	}
}

// field returns attribute key of the first record whose message is msg.
func (l *logSink) field(msg, key string) (string, bool) {
	for line := range strings.SplitSeq(l.String(), "\n") {
		if !strings.Contains(line, msgNeedle(msg)) {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if v, ok := rec[key].(string); ok {
			return v, true
		}
	}
	return "", false
}

// prolificFront serves a prolifictest fake through a wrapper that records
// when every progress request arrived, notices two fetches of one study in
// flight at once (two replicas polling it together), and can hold one
// study's progress requests at a gate until the test lets them through.
type prolificFront struct {
	fake *prolifictest.Server
	srv  *httptest.Server

	mu       sync.Mutex
	arrivals map[string][]time.Time
	inFlight map[string]int
	overlaps []string
	holdID   string
	gate     chan struct{}
	held     chan struct{}
}

// newProlific starts a fake Prolific API on loopback, closed when the test ends.
func newProlific(t *testing.T) *prolificFront {
	t.Helper()
	f := &prolificFront{
		fake:     prolifictest.New(token),
		arrivals: map[string][]time.Time{},
		inFlight: map[string]int{},
		held:     make(chan struct{}, 1),
	}
	f.srv = httptest.NewServer(f)
	t.Cleanup(func() {
		f.release()
		f.fake.Close()
		f.srv.Close()
	})
	return f
}

// URL is the base URL to configure as PROLIFIC_API_URL.
func (f *prolificFront) URL() string { return f.srv.URL }

// ServeHTTP records progress requests, holds them at the gate when asked,
// and hands every request to the fake.
func (f *prolificFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := progressStudy(r.URL.Path)
	if !ok {
		f.fake.ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	f.arrivals[id] = append(f.arrivals[id], time.Now())
	f.inFlight[id]++
	if f.inFlight[id] > 1 {
		f.overlaps = append(f.overlaps, id)
	}
	var gate chan struct{}
	if f.holdID == id {
		gate = f.gate
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight[id]--
		f.mu.Unlock()
	}()
	if gate != nil {
		select {
		case f.held <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	f.fake.ServeHTTP(w, r)
}

// progressStudy returns the study id of a progress request path.
func progressStudy(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/api/v1/studies/")
	if !ok {
		return "", false
	}
	id, sub, _ := strings.Cut(rest, "/")
	return id, id != "" && strings.TrimSuffix(sub, "/") == "access-details-progress"
}

// hold makes the progress requests of study id wait until release.
func (f *prolificFront) hold(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holdID, f.gate = id, make(chan struct{})
}

// release lets held requests through and stops holding.
func (f *prolificFront) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gate != nil {
		close(f.gate)
	}
	f.holdID, f.gate = "", nil
}

// waitHeld waits until a request is waiting at the gate.
func (f *prolificFront) waitHeld(ctx context.Context) error {
	select {
	case <-f.held:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a held progress request: %w", ctx.Err())
	}
}

// arrivalsOf returns when the study's progress requests arrived.
func (f *prolificFront) arrivalsOf(id string) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.arrivals[id])
}

// overlapping lists the studies that were ever fetched twice at once.
func (f *prolificFront) overlapping() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.overlaps)
}

// waitRequests waits until study id's progress was requested at least n times.
func (f *prolificFront) waitRequests(t *testing.T, id string, n int, logs fmt.Stringer) {
	t.Helper()
	if err := f.fake.Wait(waitCtx(t), func() bool { return f.fake.Requests(id) >= n }); err != nil {
		t.Fatalf("waiting for %d progress requests of %s (have %d): %v\nlogs:\n%s", n, id, f.fake.Requests(id), err, logs)
	}
}

// rig is one test's database, fakes and direct SQL access.
type rig struct {
	dsn      string
	prolific *prolificFront
	slack    *slackfake.Server
	store    *store.Store
	db       *pgxpool.Pool
}

// newRig gives a test a fresh migrated schema and its own fakes.
func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigOn(t, storetest.NewDatabaseURL(t))
}

// newRigOn builds the fakes and connections for the database at dsn.
func newRigOn(t *testing.T, dsn string) *rig {
	t.Helper()
	r := &rig{dsn: dsn, prolific: newProlific(t), slack: slackfake.New()}
	t.Cleanup(r.slack.Close)
	var err error
	if r.store, err = store.Open(context.Background(), dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.store.Close)
	if r.db, err = pgxpool.New(context.Background(), dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.db.Close)
	return r
}

// watch serves the study from the fake and watches it from every channel;
// stallAfter > 0 overrides STALL_AFTER for it.
func (r *rig) watch(t *testing.T, st prolifictest.Study, stallAfter time.Duration, channels ...string) {
	t.Helper()
	if st.Name == "" {
		st.Name = "Study " + st.ID[len(st.ID)-4:]
	}
	r.prolific.fake.SetStudy(st)
	for _, ch := range channels {
		_, err := r.store.AddWatch(context.Background(), store.StudyInfo{ID: st.ID, Name: st.Name},
			store.Watch{ChannelID: ch, StallAfter: stallAfter}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
	}
}

// env is the worker's environment: the fakes, a bot token, polling every
// second and a free loopback port, with vars on top.
func (r *rig) env(vars map[string]string) map[string]string {
	env := map[string]string{
		"DATABASE_URL":     r.dsn,
		"PROLIFIC_TOKEN":   token,
		"PROLIFIC_API_URL": r.prolific.URL(),
		"SLACK_BOT_TOKEN":  r.slack.Token(),
		"SLACK_API_URL":    r.slack.URL(),
		"POLL_SCHEDULE":    "@every 1s",
		"HTTP_ADDR":        "127.0.0.1:0",
	}
	for k, v := range vars {
		env[k] = v
	}
	return env
}

// config loads the worker configuration from env(vars).
func (r *rig) config(t *testing.T, vars map[string]string) config.Config {
	t.Helper()
	env := r.env(vars)
	cfg, err := config.Load(func(k string) string { return env[k] }, config.Need{Database: true, Prolific: true})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// worker is an App running in this process.
type worker struct {
	app    *app.App
	logs   *logSink
	cancel context.CancelFunc
	exited chan struct{}
	err    error
}

// startWorker runs an App until the test ends (or stop).
func startWorker(t *testing.T, cfg config.Config, opts app.Options) *worker {
	t.Helper()
	w := &worker{logs: newLogSink(), exited: make(chan struct{})}
	opts.Stdout = io.Discard
	opts.Logger = slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.ShutdownGrace == 0 {
		opts.ShutdownGrace = time.Second
	}
	a, err := app.New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	w.app = a
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() {
		w.err = a.Run(ctx)
		close(w.exited)
	}()
	t.Cleanup(func() {
		if err := w.stop(); err != nil {
			t.Errorf("worker stopped with %v", err)
		}
	})
	return w
}

// stop shuts the worker down and returns Run's error. It is idempotent.
func (w *worker) stop() error {
	w.cancel()
	<-w.exited
	return w.err
}

// running reports whether Run has not returned.
func (w *worker) running() bool {
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

// String returns the worker's logs, for failure messages.
func (w *worker) String() string { return w.logs.String() }

// httpStatus returns the status of GET http://addr/path.
func httpStatus(ctx context.Context, addr, path string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// assertAlive checks that the worker at addr answers /healthz with 200.
func assertAlive(t *testing.T, addr string) {
	t.Helper()
	if code, err := httpStatus(waitCtx(t), addr, "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("GET /healthz = %d, %v; want 200", code, err)
	}
}

// waitStatus re-asks GET path every 20 ms until it answers want: readiness
// follows the database, which signals nothing when it comes or goes.
func waitStatus(t *testing.T, addr, path string, want int, logs fmt.Stringer) {
	t.Helper()
	eventually(t, fmt.Sprintf("GET %s answering %d", path, want), logs, func(ctx context.Context) (bool, error) {
		code, err := httpStatus(ctx, addr, path)
		return err == nil && code == want, nil
	})
}

// eventually re-checks cond every 20 ms until it holds, for state that only
// Postgres or an HTTP probe can tell; it fails the test after waitLimit.
func eventually(t *testing.T, what string, logs fmt.Stringer, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ctx := waitCtx(t)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ok, err := cond(ctx)
		if ok {
			return
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error: %v)\nlogs:\n%s", what, ctx.Err(), lastErr, logs)
		case <-tick.C:
		}
	}
}

// settle waits until no outbox message is left to deliver.
func (r *rig) settle(t *testing.T, logs fmt.Stringer) {
	t.Helper()
	eventually(t, "the outbox to drain", logs, func(ctx context.Context) (bool, error) {
		st, err := r.store.OutboxStats(ctx)
		return err == nil && st.Pending == 0, err
	})
}

// alert is one Slack message as its metadata identifies it.
type alert struct {
	Channel, StudyID, Rule, URL, State string
	TS, ThreadTS                       string
}

// key names the transition a message announces, without its channel.
func (a alert) key() string { return a.StudyID + " " + a.Rule + " " + a.State + " " + a.URL }

// alertsOf lists the alert messages Slack accepted, in order.
func alertsOf(s *slackfake.Server) []alert {
	var out []alert
	for _, m := range s.Messages() {
		if m.Metadata == nil || m.Metadata.EventType != "taskflow_alert" {
			continue
		}
		p := m.Metadata.EventPayload
		str := func(k string) string { v, _ := p[k].(string); return v }
		out = append(out, alert{Channel: m.Channel, StudyID: str("study_id"), Rule: str("rule"),
			URL: str("external_url"), State: str("state"), TS: m.TS, ThreadTS: m.ThreadTS})
	}
	return out
}

// outboxRow is one outbox message as the test reads it back.
type outboxRow struct {
	ID                                 int64
	StudyID, Channel, Rule, URL, State string
	Sent, Failed, Claimed              bool
	Attempts, Failures                 int
	LastError                          string
}

// key names the transition the row carries, like alert.key.
func (o outboxRow) key() string { return o.StudyID + " " + o.Rule + " " + o.State + " " + o.URL }

// outbox reads every outbox message in id order.
func (r *rig) outbox(t *testing.T) []outboxRow {
	t.Helper()
	rows, err := r.outboxRows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// outboxRows reads every outbox message in id order.
func (r *rig) outboxRows(ctx context.Context) ([]outboxRow, error) {
	rows, err := r.db.Query(ctx, `
		SELECT id, study_id, channel_id, payload->'transition'->>'rule', payload->'transition'->>'external_url', state,
		       sent_at IS NOT NULL, failed_at IS NOT NULL, claim_owner IS NOT NULL OR claimed_until IS NOT NULL,
		       attempts, coalesce((payload->'transition'->>'failures')::int, 0), last_error
		FROM outbox ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("reading the outbox: %w", err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var o outboxRow
		if err := rows.Scan(&o.ID, &o.StudyID, &o.Channel, &o.Rule, &o.URL, &o.State,
			&o.Sent, &o.Failed, &o.Claimed, &o.Attempts, &o.Failures, &o.LastError); err != nil {
			return nil, fmt.Errorf("reading the outbox: %w", err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the outbox: %w", err)
	}
	return out, nil
}

// queryInt runs a query returning one integer.
func (r *rig) queryInt(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := r.db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// chatPosts counts the chat.postMessage attempts that reached Slack for
// channel, failed ones included.
func chatPosts(s *slackfake.Server, channel string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == "chat.postMessage" && r.Channel == channel {
			n++
		}
	}
	return n
}
