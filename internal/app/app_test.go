package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
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
	b := setup(t, map[string]string{"POLL_FAILURES_BEFORE_ALERT": "3"})
	b.cfg.StallAfter = time.Second
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 4, 0)})
	b.prolific.Fail(studyID, prolifictest.Fault{Endpoint: prolifictest.EndpointAll, Status: 500}, -1)
	b.start(t)

	if _, err := b.slack.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatalf("no poll_failing alert: %v\n%s", err, b.logs.String())
	}
	// More failed polls (with back-off) give nothing more.
	b.prolific.Wait(waitCtx(t), func() bool { return b.prolific.StudyRequests(studyID) >= 5 })
	b.settle(t)
	if got := b.alerts(); len(got) != 1 || got[0] != "poll_failing/firing/" {
		t.Fatalf("alerts = %v, want one poll_failing and no stalled", got)
	}
	st, err := b.store.GetStudy(context.Background(), studyID)
	if err != nil || st.LastPollOK || !strings.Contains(st.LastError, "500") {
		t.Errorf("study = %+v, %v; want the last error recorded", st, err)
	}
}

func TestSlackRateLimitDeliversOnceAfterRetryAfter(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 11, 5)})
	b.slack.FailNext(channel, slackfake.Fault{Status: 429, RetryAfter: "2"}, 1)
	b.start(t)

	reqs, err := b.slack.WaitRequests(waitCtx(t), 1)
	if err != nil || reqs[0].Status != 429 {
		t.Fatalf("first request = %+v, %v; want the 429", reqs, err)
	}
	limited := time.Now()
	if _, err := b.slack.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	// The retry came no sooner than Retry-After after the 429 was seen.
	if waited := time.Since(limited); waited < time.Second {
		t.Errorf("retried %v after a 429 with Retry-After: 2", waited)
	}
	b.settle(t)
	if got := b.alerts(); len(got) != 1 {
		t.Errorf("alerts = %v, want exactly one delivery", got)
	}
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 12, 0)})
	b.start(t)
	b.waitPolls(t, studyID, 3)
	b.settle(t)
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
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`taskflow_polls_total{outcome="ok"}`,
		`taskflow_observations_written_total 1`,
		`taskflow_alert_transitions_total{rule="over_allocation",transition="firing"} 1`,
		`taskflow_alert_transitions_total{rule="over_capacity",transition="firing"} 1`,
		`taskflow_notifications_total{outcome="sent",reason=""} 2`,
		`taskflow_outbox_pending 0`,
		`taskflow_outbox_oldest_pending_age_seconds 0`,
		`taskflow_last_cycle_completed_timestamp_seconds`,
		`taskflow_poll_duration_seconds_count`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
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
