package notify_test

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/notify"
	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

const studyID = "60d9aadeb86739de712faee0"

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

type dispatchBundle struct {
	store *store.Store
	slack *slackfake.Server
	clock *testkit.Clock
}

func setupDispatch(t *testing.T, channels ...string) dispatchBundle {
	t.Helper()
	b := dispatchBundle{store: storetest.New(t), slack: slackfake.New(), clock: testkit.NewClock(t0)}
	t.Cleanup(b.slack.Close)
	for _, ch := range channels {
		if _, err := b.store.AddWatch(context.Background(), store.StudyInfo{ID: studyID, Name: "Pilot"}, store.Watch{ChannelID: ch}, t0); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func (b dispatchBundle) dispatcher(owner string) *notify.Dispatcher {
	return notify.NewDispatcher(notify.DispatcherConfig{Owner: owner, Now: b.clock.Now, BaseBackoff: time.Second, MaxAttempts: 4, MaxAge: 30 * time.Minute,
		Logger: slog.New(slog.DiscardHandler)},
		b.store, notify.NewBotSender(b.slack.Token(), b.slack.URL(), nil))
}

// queue records a poll whose transitions go to every watching channel.
func (b dispatchBundle) queue(t *testing.T, at time.Time, transitions ...rules.Transition) {
	t.Helper()
	storetest.RecordPoll(t, b.store, store.PollRecord{StudyID: studyID, At: at},
		func(p store.PollState) store.Evaluation {
			return store.Evaluation{State: p.State, Transitions: transitions, NextPollAt: at}
		})
}

var (
	overFiring = rules.Transition{Rule: rules.OverAllocation, ExternalURL: "https://a.example", State: rules.Firing, At: t0, Since: t0,
		Counts: &rules.URLCounts{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 12}}
	overResolved = rules.Transition{Rule: rules.OverAllocation, ExternalURL: "https://a.example", State: rules.Resolved, At: t0.Add(time.Hour), Since: t0,
		Counts: &rules.URLCounts{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 10}}
)

func TestDispatcherDeliversWithMetadataAndThreadsResolution(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	d := b.dispatcher("w1")
	ctx := context.Background()

	b.queue(t, t0, overFiring)
	if n := d.RunOnce(ctx); n != 1 {
		t.Fatalf("sent %d, want 1", n)
	}
	msgs := b.slack.Messages()
	if len(msgs) != 1 || msgs[0].Channel != "C1" || msgs[0].Metadata == nil {
		t.Fatalf("messages = %+v", msgs)
	}
	want := map[string]any{"study_id": studyID, "rule": "over_allocation", "external_url": "https://a.example", "state": "firing"}
	if md := msgs[0].Metadata; md.EventType != "taskflow_alert" || len(md.EventPayload) != len(want) {
		t.Fatalf("metadata = %+v, want %v", md, want)
	}
	for k, v := range want {
		if msgs[0].Metadata.EventPayload[k] != v {
			t.Errorf("metadata %s = %v, want %v", k, msgs[0].Metadata.EventPayload[k], v)
		}
	}

	b.clock.Set(t0.Add(time.Hour))
	b.queue(t, t0.Add(time.Hour), overResolved)
	if n := d.RunOnce(ctx); n != 1 {
		t.Fatalf("sent %d resolutions, want 1", n)
	}
	msgs = b.slack.Messages()
	if len(msgs) != 2 || msgs[1].ThreadTS != msgs[0].TS || !msgs[1].Broadcast || msgs[1].Metadata.EventPayload["state"] != "resolved" {
		t.Fatalf("resolution = %+v, want a reply in the firing message's thread, also shown in the channel", msgs[1])
	}
	if ups := b.slack.Updates(); len(ups) != 1 || ups[0].TS != msgs[0].TS {
		t.Fatalf("updates = %+v, want the firing message updated", ups)
	}
	// Nothing is left to send.
	b.clock.Set(t0.Add(2 * time.Hour))
	if n := d.RunOnce(ctx); n != 0 || len(b.slack.Requests()) != 3 {
		t.Errorf("idle run sent %d (requests %d)", n, len(b.slack.Requests()))
	}
}

func TestDispatcherFallsBackWhenFiringMessageIsGone(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	d := b.dispatcher("w1")
	ctx := context.Background()
	b.queue(t, t0, overFiring)
	d.RunOnce(ctx)
	b.slack.Delete(b.slack.Messages()[0].TS)

	b.clock.Set(t0.Add(time.Hour))
	b.queue(t, t0.Add(time.Hour), overResolved)
	if n := d.RunOnce(ctx); n != 1 {
		t.Fatalf("sent %d, want the resolution posted on its own", n)
	}
	msgs := b.slack.Messages()
	if last := msgs[len(msgs)-1]; last.ThreadTS != "" || last.Metadata.EventPayload["state"] != "resolved" {
		t.Errorf("fallback = %+v, want an unthreaded resolution", last)
	}
}

func TestDispatcherWaitsForRetryAfter(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	d := b.dispatcher("w1")
	ctx := context.Background()
	b.queue(t, t0, overFiring)
	b.slack.FailNext("C1", slackfake.Fault{Status: 429, RetryAfter: "30"}, 1)

	if n := d.RunOnce(ctx); n != 0 {
		t.Fatalf("sent %d on a 429", n)
	}
	// Just before Retry-After has passed, nothing is attempted.
	b.clock.Set(t0.Add(29 * time.Second))
	if n := d.RunOnce(ctx); n != 0 || len(b.slack.Requests()) != 1 {
		t.Fatalf("attempted %d requests before Retry-After", len(b.slack.Requests()))
	}
	b.clock.Set(t0.Add(30 * time.Second))
	if n := d.RunOnce(ctx); n != 1 {
		t.Fatalf("sent %d after Retry-After, want 1", n)
	}
	if got := len(b.slack.Messages()); got != 1 {
		t.Errorf("delivered %d messages, want exactly 1", got)
	}
}

func TestDispatcherRetriesServerErrorsThenGivesUp(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	d := b.dispatcher("w1")
	ctx := context.Background()
	b.queue(t, t0, overFiring)
	b.slack.FailNext("C1", slackfake.Fault{Status: 500}, -1)

	// MaxAttempts is 4 and MaxAge 30 minutes: advancing 10 minutes at a
	// time, well past every backoff, the 4th attempt (at 30 minutes) is the last.
	for i := range 10 {
		b.clock.Set(t0.Add(time.Duration(i) * 10 * time.Minute))
		d.RunOnce(ctx)
	}
	if got := len(b.slack.Requests()); got != 4 {
		t.Errorf("attempts = %d, want 4", got)
	}
	st, err := b.store.OutboxStats(ctx)
	if err != nil || st.Pending != 0 {
		t.Errorf("pending after giving up = %+v, %v", st, err)
	}
}

func TestDispatcherKeepsRetryingWithinMaxAge(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	d := b.dispatcher("w1")
	ctx := context.Background()
	b.queue(t, t0, overFiring)
	b.slack.FailNext("C1", slackfake.Fault{Status: 500}, -1)

	// Ten minutes of a failing Slack: more attempts than MaxAttempts, but
	// the message is younger than MaxAge, so it is still waiting.
	for i := range 11 {
		b.clock.Set(t0.Add(time.Duration(i) * time.Minute))
		d.RunOnce(ctx)
	}
	if got := len(b.slack.Requests()); got <= 4 {
		t.Errorf("attempts = %d, want more than MaxAttempts (4) within MaxAge", got)
	}
	st, err := b.store.OutboxStats(ctx)
	if err != nil || st.Pending != 1 {
		t.Errorf("outbox = %+v, %v; want the message still pending", st, err)
	}
}

// reasons records the reason label of every delivery attempt.
type reasons struct {
	mu  sync.Mutex
	got []string
}

func (r *reasons) Delivered(_ notify.DeliveryOutcome, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, reason)
}

func TestDispatcherMetricReasonsAreBounded(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	obs := &reasons{}
	// Nothing listens on port 1: every attempt is a refused connection,
	// whose error text carries addresses that must not become labels.
	d := notify.NewDispatcher(notify.DispatcherConfig{Owner: "w1", Now: b.clock.Now, Observer: obs, Logger: slog.New(slog.DiscardHandler)},
		b.store, notify.NewBotSender("xoxb-test", "http://127.0.0.1:1/api/", nil))
	b.queue(t, t0, overFiring)
	d.RunOnce(context.Background())
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.got) != 1 || obs.got[0] != "network" {
		t.Errorf("reasons = %q, want [network]", obs.got)
	}
}

func TestDispatcherPermanentErrorStopsOneChannelOnly(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1", "C2")
	d := b.dispatcher("w1")
	ctx := context.Background()
	b.slack.FailNext("C1", slackfake.Fault{SlackError: "channel_not_found"}, -1)
	b.queue(t, t0, overFiring)

	for i := range 5 {
		b.clock.Set(t0.Add(time.Duration(i) * time.Minute))
		d.RunOnce(ctx)
	}
	var c1, c2 int
	for _, r := range b.slack.Requests() {
		switch r.Channel {
		case "C1":
			c1++
		case "C2":
			c2++
		}
	}
	// channel_not_found is tried once and never again; C2 gets its message.
	if c1 != 1 || c2 != 1 || len(b.slack.Messages()) != 1 || b.slack.Messages()[0].Channel != "C2" {
		t.Errorf("attempts C1=%d C2=%d, messages %+v", c1, c2, b.slack.Messages())
	}
}

func TestDispatcherPacesOneChannel(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1")
	d := b.dispatcher("w1")
	ctx := context.Background()
	b.queue(t, t0, overFiring, rules.Transition{Rule: rules.Stalled, State: rules.Firing, At: t0, Since: t0.Add(-7 * time.Hour)})

	if n := d.RunOnce(ctx); n != 1 {
		t.Fatalf("first run sent %d to one channel, want 1 (paced)", n)
	}
	b.clock.Set(t0.Add(999 * time.Millisecond))
	if n := d.RunOnce(ctx); n != 0 {
		t.Fatalf("sent %d within the pace", n)
	}
	b.clock.Set(t0.Add(time.Second))
	if n := d.RunOnce(ctx); n != 1 {
		t.Fatalf("sent %d after the pace, want 1", n)
	}
	// Messages keep their order within a channel.
	msgs := b.slack.Messages()
	if msgs[0].Metadata.EventPayload["rule"] != "stalled" && msgs[0].Metadata.EventPayload["rule"] != "over_allocation" {
		t.Fatalf("unexpected first message %+v", msgs[0])
	}
}

func TestReplicasNeverSendTwice(t *testing.T) {
	t.Parallel()
	channels := []string{"C1", "C2", "C3", "C4", "C5", "C6"}
	b := setupDispatch(t, channels...)
	ctx := context.Background()
	b.queue(t, t0, overFiring)
	b.clock.Set(t0.Add(time.Hour))
	b.queue(t, t0.Add(time.Hour), overResolved)

	replicas := []*notify.Dispatcher{b.dispatcher("w1"), b.dispatcher("w2"), b.dispatcher("w3")}
	for step := range 5 {
		b.clock.Set(t0.Add(time.Hour + time.Duration(step)*time.Second))
		var wg sync.WaitGroup
		for _, d := range replicas {
			wg.Go(func() { d.RunOnce(ctx) })
		}
		wg.Wait()
	}
	if got := len(b.slack.Messages()); got != 2*len(channels) {
		t.Fatalf("delivered %d messages, want %d (each transition once per channel)", got, 2*len(channels))
	}
	seen := map[string]bool{}
	for _, m := range b.slack.Messages() {
		key := m.Channel + "/" + m.Metadata.EventPayload["state"].(string)
		if seen[key] {
			t.Errorf("duplicate %s", key)
		}
		seen[key] = true
	}
}

func TestDispatcherHungChannelHoldsUpOnlyItself(t *testing.T) {
	t.Parallel()
	b := setupDispatch(t, "C1", "C2")
	// C1's every request hangs until the fake closes; the sender's timeout
	// is far beyond the test, so only C1's own slot is held.
	b.slack.FailNext("C1", slackfake.Fault{Hang: true}, 0)
	d := notify.NewDispatcher(notify.DispatcherConfig{Owner: "w1", Pace: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)},
		b.store, notify.NewBotSender(b.slack.Token(), b.slack.URL(), &http.Client{Timeout: 10 * time.Minute}))
	at := time.Now().Add(-time.Second)
	stalled := rules.Transition{Rule: rules.Stalled, State: rules.Firing, At: at, Since: at.Add(-7 * time.Hour)}
	b.queue(t, at, stalled)
	capacity := rules.Transition{Rule: rules.CapacityIncrease, ExternalURL: "https://a.example", State: rules.Event, At: at, Since: at,
		Counts: &rules.URLCounts{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 5, CapacityIncrements: 2}}
	b.queue(t, at, capacity)

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- d.Start(ctx) }()

	// Both of C2's messages go out, paced, while C1's first send still hangs.
	wait, cancelWait := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelWait()
	msgs, err := b.slack.WaitMessages(wait, 2)
	if err != nil {
		t.Fatalf("C2's messages did not go out while C1 hung: %v (%d delivered)", err, len(b.slack.Messages()))
	}
	for _, m := range msgs {
		if m.Channel != "C2" {
			t.Errorf("message delivered to %s, want only C2: %+v", m.Channel, m)
		}
	}
	if got := []any{msgs[0].Metadata.EventPayload["rule"], msgs[1].Metadata.EventPayload["rule"]}; got[0] != "stalled" || got[1] != "capacity_increase" {
		t.Errorf("C2 heard %v, want its messages in order", got)
	}

	// Shutdown waits for the hung send; closing the fake ends it.
	cancel()
	b.slack.Close()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
