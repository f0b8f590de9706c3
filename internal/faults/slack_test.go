package faults_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/notify"
	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

// TestSlackFaultsLoseNothingAndSendNothingTwice watches one study from five
// channels, each failing differently, and moves it through firing,
// resolved and firing again. Every working channel hears every transition
// exactly once and in order (the resolution in the firing message's
// thread), each after exactly the retries its faults call for; the channel
// Slack does not know is tried once per message and never again.
func TestSlackFaultsLoseNothingAndSendNothingTwice(t *testing.T) {
	t.Parallel()
	const (
		rateLimited = "C0RATELIMITED"
		serverError = "C0SERVERERROR"
		dropped     = "C0DROPPED"
		missing     = "C0MISSING"
		healthy     = "C0HEALTHY"
	)
	working := []string{rateLimited, serverError, dropped, healthy}
	id := studyID(1)
	r := newRig(t)
	r.watch(t, prolifictest.Study{ID: id, URLs: counts("https://s.example", 10, 4, 3)}, 0, append(working, missing)...)
	// The first message meets these faults; the resolution meets more below.
	r.slack.FailNext(rateLimited, slackfake.Fault{Status: 429, RetryAfter: "1"}, 1)
	r.slack.FailNext(serverError, slackfake.Fault{Status: 500}, 2)
	r.slack.FailNext(dropped, slackfake.Fault{CloseConn: true}, 1)
	r.slack.FailNext(missing, slackfake.Fault{SlackError: "channel_not_found"}, 0)
	w := startWorker(t, r.config(t, nil), app.Options{})
	r.prolific.waitRequests(t, id, 1, w)

	steps := []struct {
		counts []rules.URLCounts
		state  string
		// faults are queued just before the step's transition.
		faults func()
	}{
		// Over the allocation, within the screen-out capacity.
		{counts: counts("https://s.example", 10, 12, 3), state: "firing"},
		// Back within the allocation: a threaded reply, itself rate limited and dropped once.
		{counts: counts("https://s.example", 10, 10, 3), state: "resolved", faults: func() {
			r.slack.FailNext(rateLimited, slackfake.Fault{Status: 429, RetryAfter: "1"}, 1)
			r.slack.FailNext(dropped, slackfake.Fault{CloseConn: true}, 1)
		}},
		// Over again: a new alert.
		{counts: counts("https://s.example", 10, 13, 3), state: "firing"},
	}
	for i, step := range steps {
		if step.faults != nil {
			step.faults()
		}
		r.prolific.fake.SetProgress(id, step.counts)
		if _, err := r.slack.WaitMessages(waitCtx(t), len(working)*(i+1)); err != nil {
			t.Fatalf("step %d (%s) not delivered to every working channel: %v\nalerts: %+v\nlogs:\n%s", i+1, step.state, err, alertsOf(r.slack), w)
		}
	}
	r.settle(t, w)
	// The worker still polls and answers.
	r.prolific.waitRequests(t, id, r.prolific.fake.Requests(id)+1, w)
	assertAlive(t, w.app.Addr())

	byChannel := map[string][]alert{}
	for _, a := range alertsOf(r.slack) {
		byChannel[a.Channel] = append(byChannel[a.Channel], a)
	}
	for _, ch := range working {
		got := byChannel[ch]
		if len(got) != len(steps) {
			t.Errorf("%s received %d messages, want %d: %+v", ch, len(got), len(steps), got)
			continue
		}
		for i, step := range steps {
			if want := id + " over_allocation " + step.state + " https://s.example"; got[i].key() != want {
				t.Errorf("%s message %d = %q, want %q", ch, i+1, got[i].key(), want)
			}
		}
		if got[1].ThreadTS != got[0].TS {
			t.Errorf("%s: resolution thread_ts = %q, want the firing message %q", ch, got[1].ThreadTS, got[0].TS)
		}
	}
	if got := byChannel[missing]; len(got) != 0 {
		t.Errorf("the missing channel received %+v", got)
	}
	// Attempts: one per message, plus one per fault the message met.
	wantPosts := map[string]int{rateLimited: 3 + 2, serverError: 3 + 2, dropped: 3 + 2, healthy: 3, missing: 3}
	for ch, want := range wantPosts {
		if got := chatPosts(r.slack, ch); got != want {
			t.Errorf("%s: %d chat.postMessage attempts, want %d", ch, got, want)
		}
	}
	for _, o := range r.outbox(t) {
		switch {
		case o.Claimed:
			t.Errorf("outbox %d still claimed: %+v", o.ID, o)
		case o.Channel == missing && (!o.Failed || o.Attempts != 1 || o.LastError != "channel_not_found"):
			t.Errorf("outbox %d to the missing channel = %+v, want failed after one attempt with channel_not_found", o.ID, o)
		case o.Channel != missing && (!o.Sent || o.Failed):
			t.Errorf("outbox %d = %+v, want sent", o.ID, o)
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", w)
	}
}

// TestPersistentSlackErrorGivesUp drives a dispatcher with its default
// settings on an injected clock, jumping to each retry as it falls due,
// against a channel that always answers 500. It keeps retrying for
// notify.DefaultMaxAge (a Slack outage of hours loses nothing) and gives up
// at the first attempt after it; a healthy channel is served at once
// meanwhile, and the broken channel still gets later messages once Slack
// recovers.
func TestPersistentSlackErrorGivesUp(t *testing.T) {
	t.Parallel()
	const broken, fine = "C0BROKEN", "C0FINE"
	id := studyID(1)
	r := newRig(t)
	ctx := context.Background()
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	for _, ch := range []string{broken, fine} {
		if _, err := r.store.AddWatch(ctx, store.StudyInfo{ID: id, Name: "Pilot"}, store.Watch{ChannelID: ch}, t0); err != nil {
			t.Fatal(err)
		}
	}
	clock := testkit.NewClock(t0)
	logs := newLogSink()
	d := notify.NewDispatcher(notify.DispatcherConfig{Owner: "faults", Now: clock.Now, Logger: slog.New(slog.NewJSONHandler(logs, nil))},
		r.store, notify.NewBotSender(r.slack.Token(), r.slack.URL(), nil))
	r.slack.FailNext(broken, slackfake.Fault{Status: 500}, 0)

	firing := rules.Transition{Rule: rules.OverAllocation, ExternalURL: "https://a.example", State: rules.Firing, At: t0, Since: t0,
		Counts: &rules.URLCounts{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 12}}
	queue(t, r.store, id, t0, firing)

	var waited time.Duration
	for range 1000 {
		d.RunOnce(ctx)
		row := r.outbox(t)[0]
		if row.Channel != broken {
			t.Fatalf("first outbox row is for %s", row.Channel)
		}
		if row.Failed {
			break
		}
		var next time.Time
		if err := r.db.QueryRow(ctx, `SELECT next_attempt_at FROM outbox WHERE id = $1`, row.ID).Scan(&next); err != nil {
			t.Fatal(err)
		}
		if wait := next.Sub(clock.Now()); wait > 0 {
			waited += wait
			clock.Set(next)
		}
	}
	// It gives up at the first attempt once the message is MaxAge old: at
	// most one backoff ceiling (MaxBackoff) later.
	ceiling := notify.DefaultMaxAge + notify.DefaultMaxBackoff
	row := r.outbox(t)[0]
	attempts := chatPosts(r.slack, broken)
	if attempts < notify.DefaultMaxAttempts || !row.Failed || !strings.Contains(row.LastError, "gave up after") {
		t.Fatalf("%d attempts, row %+v; want at least %d attempts and the message given up", attempts, row, notify.DefaultMaxAttempts)
	}
	if waited < notify.DefaultMaxAge || waited > ceiling {
		t.Errorf("gave up after %v of simulated time, want between %v and %v", waited, notify.DefaultMaxAge, ceiling)
	}
	t.Logf("gave up after %d attempts and %v of simulated time", attempts, waited)
	if got := alertsOf(r.slack); len(got) != 1 || got[0].Channel != fine {
		t.Errorf("alerts = %+v, want the firing once in %s", got, fine)
	}
	if n := logs.count("notification failed permanently"); n != 1 {
		t.Errorf("giving up was logged %d times, want once", n)
	}

	// Slack recovers: the broken channel is not blocked by the message it gave up on.
	r.slack.ClearFaults()
	later := clock.Now().Add(time.Hour)
	clock.Set(later)
	resolved := firing
	resolved.State, resolved.At = rules.Resolved, later
	queue(t, r.store, id, later, resolved)
	d.RunOnce(ctx)
	var states []string
	for _, a := range alertsOf(r.slack) {
		states = append(states, a.Channel+" "+a.State)
	}
	if want := []string{fine + " firing", broken + " resolved", fine + " resolved"}; !sameSet(states, want) {
		t.Errorf("messages = %v, want %v", states, want)
	}
}

// queue records a poll of study id at `at` whose transitions go to every
// watching channel, as the poller would.
func queue(t *testing.T, s *store.Store, id string, at time.Time, transitions ...rules.Transition) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.ClaimDueStudies(ctx, "poller", at, at, time.Minute, 10); err != nil {
		t.Fatal(err)
	}
	res, err := s.RecordPoll(ctx, store.PollRecord{StudyID: id, Owner: "poller", At: at},
		func(p store.PollState) store.Evaluation {
			return store.Evaluation{State: p.State, Transitions: transitions, NextPollAt: at}
		})
	if err != nil || res.Lost {
		t.Fatalf("queueing transitions: %+v, %v", res, err)
	}
}

// sameSet reports whether got and want hold the same strings, in any order.
func sameSet(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	seen := map[string]int{}
	for _, s := range got {
		seen[s]++
	}
	for _, s := range want {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}
