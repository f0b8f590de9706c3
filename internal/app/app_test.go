package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

const (
	token   = "app-test-token"
	studyID = "60d9aadeb86739de712faee0"
	channel = "C0ALERTS"
)

type bundle struct {
	cfg      config.Config
	prolific *prolifictest.Server
	slack    *slackfake.Server
	store    *store.Store
	app      *app.App
	logs     *testkit.SyncBuffer
}

// setup builds a worker configuration against a fresh schema, a fake
// Prolific API and a fake Slack Web API reached with a bot token.
func setup(t *testing.T, env map[string]string) *bundle {
	t.Helper()
	b := &bundle{prolific: prolifictest.NewServer(t, token), slack: slackfake.New(), logs: &testkit.SyncBuffer{}}
	t.Cleanup(b.slack.Close)
	vars := map[string]string{
		"DATABASE_URL":     storetest.NewDatabaseURL(t),
		"PROLIFIC_TOKEN":   token,
		"PROLIFIC_API_URL": b.prolific.URL(),
		"SLACK_BOT_TOKEN":  b.slack.Token(),
		"SLACK_API_URL":    b.slack.URL(),
		"POLL_SCHEDULE":    "@every 1s",
		"HTTP_ADDR":        "127.0.0.1:0",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.Load(func(k string) string { return vars[k] }, config.Need{Database: true, Prolific: true})
	if err != nil {
		t.Fatal(err)
	}
	b.cfg = cfg
	b.store, err = store.Open(context.Background(), cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.store.Close)
	return b
}

// watch registers the study in the fake and in the store.
func (b *bundle) watch(t *testing.T, st prolifictest.Study) {
	t.Helper()
	if st.Name == "" {
		st.Name = "Study " + st.ID[:6]
	}
	b.prolific.SetStudy(st)
	if _, err := b.store.AddWatch(context.Background(), store.StudyInfo{ID: st.ID, Name: st.Name}, store.Watch{ChannelID: channel}, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// start runs the worker until the test ends.
func (b *bundle) start(t *testing.T) {
	t.Helper()
	logger := slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := app.New(context.Background(), b.cfg, app.Options{Stdout: io.Discard, Logger: logger, ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.app = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker stopped with %v", err)
		}
	})
}

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitPolls waits until the study's progress was fetched n times.
func (b *bundle) waitPolls(t *testing.T, id string, n int) {
	t.Helper()
	if err := b.prolific.Wait(waitCtx(t), func() bool { return b.prolific.Requests(id) >= n }); err != nil {
		t.Fatalf("waiting for %d polls of %s: %v\nlogs:\n%s", n, id, err, b.logs.String())
	}
}

// waitRecorded waits until the stored study satisfies ok, i.e. until the
// poll that makes it true is committed.
func (b *bundle) waitRecorded(t *testing.T, id string, ok func(store.Study) bool) {
	t.Helper()
	ctx := waitCtx(t)
	for {
		st, err := b.store.GetStudy(ctx, id)
		if err == nil && ok(st) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("study %s never reached the expected state: %+v, %v\nlogs:\n%s", id, st, err, b.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// settle waits until every queued notification is delivered.
func (b *bundle) settle(t *testing.T) {
	t.Helper()
	ctx := waitCtx(t)
	for {
		st, err := b.store.OutboxStats(ctx)
		if err == nil && st.Pending == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("outbox did not drain: %+v, %v\nlogs:\n%s", st, err, b.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alerts lists the delivered alerts as "rule/state/url".
func (b *bundle) alerts() []string {
	var out []string
	for _, m := range b.slack.Messages() {
		if m.Metadata == nil {
			continue
		}
		p := m.Metadata.EventPayload
		out = append(out, fmt.Sprintf("%s/%s/%s", p["rule"], p["state"], p["external_url"]))
	}
	return out
}

func count(list []string, want string) int {
	n := 0
	for _, s := range list {
		if s == want {
			n++
		}
	}
	return n
}

func progress(total, allocated, increments int) []rules.URLCounts {
	return []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: total, Allocated: allocated, CapacityIncrements: increments}}
}

func TestOverAllocationFiresOnceAndResolvesOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 12, 0)})
	b.start(t)

	b.waitPolls(t, studyID, 6)
	b.prolific.SetProgress(studyID, progress(10, 10, 0))
	b.waitPolls(t, studyID, 12)
	b.settle(t)

	got := b.alerts()
	if count(got, "over_allocation/firing/https://a.example") != 1 || count(got, "over_allocation/resolved/https://a.example") != 1 ||
		count(got, "over_capacity/firing/https://a.example") != 1 || count(got, "over_capacity/resolved/https://a.example") != 1 || len(got) != 4 {
		t.Fatalf("alerts = %v, want over_allocation and over_capacity each firing once and resolving once", got)
	}
	// The resolution is threaded under the firing message.
	msgs := b.slack.Messages()
	var firingTS string
	for _, m := range msgs {
		p := m.Metadata.EventPayload
		if p["rule"] == "over_allocation" && p["state"] == "firing" {
			firingTS = m.TS
		}
		if p["rule"] == "over_allocation" && p["state"] == "resolved" && m.ThreadTS != firingTS {
			t.Errorf("resolution thread_ts = %q, want %q", m.ThreadTS, firingTS)
		}
	}
}

func TestScreenOutOverAllocationIsWithinCapacity(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	// The documented sample: allocated 12 of 10 with 3 screen-out slots.
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 12, 3)})
	b.start(t)
	b.waitPolls(t, studyID, 4)
	b.settle(t)

	got := b.alerts()
	if len(got) != 1 || got[0] != "over_allocation/firing/https://a.example" {
		t.Fatalf("alerts = %v, want only over_allocation firing", got)
	}
	if text := b.slack.Messages()[0].Text; !strings.Contains(strings.ToLower(text), "within") {
		t.Errorf("message %q does not say the over-allocation is within screen-out capacity", text)
	}
}

func TestCapacityIncrementsGiveOneEventPerRise(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 4, 0)})
	b.start(t)
	b.waitPolls(t, studyID, 2)
	b.prolific.SetProgress(studyID, progress(10, 5, 2))
	b.waitPolls(t, studyID, 5)
	b.prolific.SetProgress(studyID, progress(10, 6, 3))
	b.waitPolls(t, studyID, 8)
	b.settle(t)

	got := b.alerts()
	if count(got, "capacity_increase/event/https://a.example") != 2 || len(got) != 2 {
		t.Fatalf("alerts = %v, want two capacity_increase events", got)
	}
	texts := b.slack.Messages()[0].Text + b.slack.Messages()[1].Text
	for _, want := range []string{"0 → 2", "2 → 3"} {
		if !strings.Contains(texts, want) {
			t.Errorf("messages %q do not mention %q", texts, want)
		}
	}
}

func TestStalledFiresOnceAndResolvesWhenMoving(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.cfg.StallAfter = 3 * time.Second
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 4, 0)})
	b.start(t)

	if _, err := b.slack.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatalf("no stalled alert: %v\n%s", err, b.logs.String())
	}
	polls := b.prolific.Requests(studyID)
	b.waitPolls(t, studyID, polls+3)
	b.prolific.SetProgress(studyID, progress(10, 5, 0))
	if _, err := b.slack.WaitMessages(waitCtx(t), 2); err != nil {
		t.Fatalf("no resolution: %v", err)
	}
	b.waitPolls(t, studyID, b.prolific.Requests(studyID)+2)
	b.settle(t)

	got := b.alerts()
	if len(got) != 2 || got[0] != "stalled/firing/" || got[1] != "stalled/resolved/" {
		t.Fatalf("alerts = %v, want stalled firing then resolved, once each", got)
	}
	if text := b.slack.Messages()[1].Text; !strings.Contains(text, "stall") {
		t.Errorf("resolution %q does not say how long it stalled", text)
	}
}

func TestFailingAPIGivesOnePollFailingAndNoStalled(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]string{"POLL_FAILURES_BEFORE_ALERT": "2"})
	b.cfg.StallAfter = time.Second
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 4, 0)})
	// The first progress fetch is answered: one ACTIVE observation with
	// room, which starts the stall clock. Every later one fails with a 500.
	b.prolific.Fail(studyID, prolifictest.Fault{Status: http.StatusOK}, 1)
	b.prolific.Fail(studyID, prolifictest.Fault{Status: http.StatusInternalServerError}, -1)
	b.start(t)

	// Three failed polls (one second, then two, backing off) span well
	// over the stall threshold; the second fires poll_failing, the third
	// repeats nothing. Failed polls are not observations, so stalled
	// stays quiet however long they last.
	b.waitPolls(t, studyID, 4)
	b.waitRecorded(t, studyID, func(st store.Study) bool { return st.ConsecutiveFailures == 3 })
	b.settle(t)
	if got := b.alerts(); len(got) != 1 || got[0] != "poll_failing/firing/" {
		t.Fatalf("alerts = %v, want one poll_failing and no stalled", got)
	}
	st, err := b.store.GetStudy(context.Background(), studyID)
	if err != nil || st.LastPollOK || !strings.Contains(st.LastError, "500") || st.Status != "ACTIVE" {
		t.Errorf("study = %+v, %v; want the last error recorded and the status kept", st, err)
	}

	// The next good poll ends poll_failing. It is also the first
	// observation since the study went quiet: allocation has not moved for
	// longer than the threshold, so stalled fires now.
	b.prolific.ClearFaults(studyID)
	b.waitRecorded(t, studyID, func(st store.Study) bool { return st.LastPollOK && st.ConsecutiveFailures == 0 })
	b.settle(t)
	got := b.alerts()
	if len(got) != 3 || count(got, "poll_failing/firing/") != 1 || count(got, "poll_failing/resolved/") != 1 || count(got, "stalled/firing/") != 1 {
		t.Fatalf("alerts = %v, want poll_failing firing then resolving, and stalled firing once polls work again", got)
	}
}

func TestSlackRateLimitDeliversOnceAfterRetryAfter(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 11, 5)})
	// Retry-After is well beyond the first retry's backoff (2 s with jitter,
	// so 1–2 s, plus up to a second until the dispatcher looks again), so
	// only a dispatcher that honours the header waits that long.
	b.slack.FailNext(channel, slackfake.Fault{Status: 429, RetryAfter: "5"}, 1)
	b.start(t)

	reqs, err := b.slack.WaitRequests(waitCtx(t), 1)
	if err != nil || reqs[0].Status != 429 {
		t.Fatalf("first request = %+v, %v; want the 429", reqs, err)
	}
	reqs, err = b.slack.WaitRequests(waitCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	// The retry came no sooner than Retry-After after the 429, both as the
	// fake saw them (the database keeps microseconds, hence the margin).
	if waited := reqs[1].At.Sub(reqs[0].At); waited < 5*time.Second-time.Millisecond {
		t.Errorf("retried %v after a 429 with Retry-After: 5", waited)
	}
	if reqs[1].Status != http.StatusOK || reqs[1].Error != "" {
		t.Errorf("retry = %+v, want it accepted", reqs[1])
	}
	b.settle(t)
	if got := b.alerts(); len(got) != 1 {
		t.Errorf("alerts = %v, want exactly one delivery", got)
	}
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	t.Parallel()
	started := time.Now()
	// Polls happen only at start-up and on webhooks, so the test knows
	// exactly how many there were.
	b := setup(t, map[string]string{"POLL_SCHEDULE": "@every 1h", "PROLIFIC_WEBHOOK_SECRET": webhookSecret})
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 12, 0)})
	// Slack fails until the test has seen the outbox hold the alerts.
	b.slack.FailNext(channel, slackfake.Fault{Status: http.StatusInternalServerError}, 0)
	b.start(t)
	base := "http://" + b.app.Addr()

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}

	// Poll 1 (start-up) fires over_allocation and over_capacity; both wait
	// in the outbox while Slack answers 500.
	if _, err := b.slack.WaitRequests(waitCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	held := b.scrape(t, func(metricFamilies) bool { return true })
	if got := held.value(t, "taskflow_outbox_pending"); got != 2 {
		t.Errorf("taskflow_outbox_pending = %v while Slack fails, want 2", got)
	}
	if got := held.value(t, "taskflow_outbox_oldest_pending_age_seconds"); got <= 0 || got > time.Since(started).Seconds() {
		t.Errorf("taskflow_outbox_oldest_pending_age_seconds = %v while Slack fails, want above 0 and within the test's %v",
			got, time.Since(started))
	}
	b.slack.ClearFaults()
	b.settle(t)

	// Poll 2 (a webhook) sees the URL back within its allocation: both
	// resolve. Poll 3 (another webhook) sees no change: no observation.
	b.prolific.SetProgress(studyID, progress(10, 10, 0))
	for i, evt := range []string{"evt-1", "evt-2"} {
		body, _ := json.Marshal(map[string]string{"event_type": prolific.EventStudyProgressChange, "resource_id": studyID})
		if status, err := b.prolific.SendWebhook(context.Background(), base+"/webhooks/prolific", []byte(webhookSecret), evt, body); err != nil || status != http.StatusOK {
			t.Fatalf("webhook %s = %d, %v", evt, status, err)
		}
		b.waitPolls(t, studyID, i+2)
		b.waitScheduled(t, studyID)
	}
	b.settle(t)
	polls := b.prolific.Requests(studyID)
	failedSends := 0
	for _, r := range b.slack.Requests() {
		if r.Status == http.StatusInternalServerError {
			failedSends++
		}
	}
	if polls != 3 || failedSends == 0 {
		t.Fatalf("%d polls and %d failed sends; the script expects 3 polls and at least one failed send", polls, failedSends)
	}

	// Metrics are updated just after the work they count is committed, so
	// wait for the last poll and the last delivery to be counted.
	m := b.scrape(t, func(m metricFamilies) bool {
		return m.histogramCount("taskflow_poll_duration_seconds") == uint64(polls) &&
			m.sum("taskflow_notifications_total", "outcome", "sent") == 4
	})
	checks := []struct {
		name string
		got  float64
		want float64
	}{
		// Every poll succeeded, and there is no other outcome.
		{`taskflow_polls_total{outcome="ok"}`, m.sum("taskflow_polls_total", "outcome", "ok"), float64(polls)},
		{`taskflow_polls_total`, m.sum("taskflow_polls_total"), float64(polls)},
		{`taskflow_poll_duration_seconds_count`, float64(m.histogramCount("taskflow_poll_duration_seconds")), float64(polls)},
		// Polls 1 and 2 changed progress; poll 3 did not.
		{`taskflow_observations_written_total`, m.sum("taskflow_observations_written_total"), 2},
		// Each rule fired on poll 1 and resolved on poll 2, and nothing else.
		{`taskflow_alert_transitions_total{rule="over_allocation",transition="firing"}`,
			m.sum("taskflow_alert_transitions_total", "rule", "over_allocation", "transition", "firing"), 1},
		{`taskflow_alert_transitions_total{rule="over_allocation",transition="resolved"}`,
			m.sum("taskflow_alert_transitions_total", "rule", "over_allocation", "transition", "resolved"), 1},
		{`taskflow_alert_transitions_total{rule="over_capacity",transition="firing"}`,
			m.sum("taskflow_alert_transitions_total", "rule", "over_capacity", "transition", "firing"), 1},
		{`taskflow_alert_transitions_total{rule="over_capacity",transition="resolved"}`,
			m.sum("taskflow_alert_transitions_total", "rule", "over_capacity", "transition", "resolved"), 1},
		{`taskflow_alert_transitions_total`, m.sum("taskflow_alert_transitions_total"), 4},
		// Two firings and two resolutions were sent; every 500 was a retry.
		{`taskflow_notifications_total{outcome="sent",reason=""}`, m.sum("taskflow_notifications_total", "outcome", "sent", "reason", ""), 4},
		{`taskflow_notifications_total{outcome="retry",reason="http 500"}`,
			m.sum("taskflow_notifications_total", "outcome", "retry", "reason", "http 500"), float64(failedSends)},
		{`taskflow_notifications_total{outcome="failed"}`, m.sum("taskflow_notifications_total", "outcome", "failed"), 0},
		// Everything is delivered.
		{`taskflow_outbox_pending`, m.value(t, "taskflow_outbox_pending"), 0},
		{`taskflow_outbox_oldest_pending_age_seconds`, m.value(t, "taskflow_outbox_oldest_pending_age_seconds"), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if n := m.histogramCount("taskflow_cycle_duration_seconds"); n == 0 {
		t.Errorf("taskflow_cycle_duration_seconds_count = 0 after %d polls", polls)
	}
	last := m.value(t, "taskflow_last_cycle_completed_timestamp_seconds")
	if from, to := float64(started.UnixNano())/1e9, float64(time.Now().UnixNano())/1e9; last < from || last > to {
		t.Errorf("taskflow_last_cycle_completed_timestamp_seconds = %.3f, want within the test, %.3f to %.3f", last, from, to)
	}
}

// metricFamilies is one parsed /metrics scrape.
type metricFamilies map[string]*dto.MetricFamily

// scrape reads /metrics until ready accepts it.
func (b *bundle) scrape(t *testing.T, ready func(metricFamilies) bool) metricFamilies {
	t.Helper()
	ctx := waitCtx(t)
	for {
		resp, err := http.Get("http://" + b.app.Addr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("parsing /metrics: %v", err)
		}
		if ready(fams) {
			return fams
		}
		select {
		case <-ctx.Done():
			t.Fatalf("/metrics never reached the expected values; last scrape:\n%v", fams)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sum adds up the counter, gauge or untyped values of the series of name
// whose labels include the given name/value pairs (0 when none match).
func (m metricFamilies) sum(name string, labels ...string) float64 {
	total := 0.0
	for _, s := range m.series(name, labels...) {
		switch {
		case s.Counter != nil:
			total += s.Counter.GetValue()
		case s.Gauge != nil:
			total += s.Gauge.GetValue()
		case s.Untyped != nil:
			total += s.Untyped.GetValue()
		}
	}
	return total
}

// value is the single series of a metric without labels; it fails the
// test when the metric is missing.
func (m metricFamilies) value(t *testing.T, name string) float64 {
	t.Helper()
	if len(m.series(name)) != 1 {
		t.Fatalf("/metrics has %d series of %s, want 1", len(m.series(name)), name)
	}
	return m.sum(name)
}

// histogramCount is the observation count of an unlabelled histogram.
func (m metricFamilies) histogramCount(name string) uint64 {
	var n uint64
	for _, s := range m.series(name) {
		n += s.GetHistogram().GetSampleCount()
	}
	return n
}

func (m metricFamilies) series(name string, labels ...string) []*dto.Metric {
	fam, ok := m[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
	for _, s := range fam.Metric {
		have := map[string]string{}
		for _, l := range s.Label {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				match = false
			}
		}
		if match {
			out = append(out, s)
		}
	}
	return out
}

func TestReadinessFailsWhenTheSchemaIsBehind(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.start(t)
	ready := func() int {
		resp, err := http.Get("http://" + b.app.Addr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz = %d before the rollback, want 200", code)
	}
	if _, err := store.NewMigrator(b.cfg.DatabaseURL).Down(); err != nil {
		t.Fatal(err)
	}
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with the schema rolled back, want 503", code)
	}
	if _, err := store.NewMigrator(b.cfg.DatabaseURL).Up(); err != nil {
		t.Fatal(err)
	}
	if code := ready(); code != http.StatusOK {
		t.Errorf("/readyz = %d after migrating again, want 200", code)
	}
}

func TestIncomingWebhookModePostsEachAlertOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.cfg.SlackBotToken, b.cfg.SlackWebhookURL = "", b.slack.WebhookURL()
	b.prolific.SetStudy(prolifictest.Study{ID: studyID, Name: "Webhook study", URLs: progress(10, 12, 3)})
	// Three channels watch, but an incoming webhook reaches one channel.
	for _, ch := range []string{"C1", "C2", "C3"} {
		if _, err := b.store.AddWatch(context.Background(), store.StudyInfo{ID: studyID}, store.Watch{ChannelID: ch}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	b.start(t)
	b.waitPolls(t, studyID, 3)
	b.settle(t)
	posts := b.slack.WebhookPosts()
	if len(posts) != 1 || !strings.Contains(posts[0].Text, "Over allocation") {
		t.Fatalf("webhook posts = %+v, want the over-allocation once", posts)
	}
}

func TestSlashCommandsOnlyFromAllowedTeams(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]string{"SLACK_SIGNING_SECRET": signingSecret, "SLACK_ALLOWED_TEAMS": " T0ALLOWED , T0SECOND ",
		"POLL_SCHEDULE": "@every 1h"})
	b.prolific.SetStudy(prolifictest.Study{ID: studyID, Name: "Team study", URLs: progress(10, 4, 0)})
	b.start(t)

	steps := []struct {
		name    string
		team    string
		want    string
		studies int
	}{
		// A correctly signed command from a team not on the list is refused and changes nothing.
		{"other team", "T0STRANGER", "not allowed", 0},
		// A listed team (written with spaces around it) is served.
		{"listed team", "T0SECOND", "Team study", 1},
	}
	for _, step := range steps {
		code, reply := b.slashAs(t, step.team, "watch "+studyID, signingSecret)
		if code != http.StatusOK || !strings.Contains(reply, step.want) {
			t.Fatalf("%s: watch = %d %s; want 200 saying %q", step.name, code, reply, step.want)
		}
		studies, err := b.store.Studies(context.Background(), "")
		if err != nil || len(studies) != step.studies {
			t.Fatalf("%s: %d studies stored (%v), want %d", step.name, len(studies), err, step.studies)
		}
		if step.studies == 0 && b.prolific.TotalRequests() != 0 {
			t.Fatalf("%s: Prolific asked %d times for a refused command", step.name, b.prolific.TotalRequests())
		}
	}
}
