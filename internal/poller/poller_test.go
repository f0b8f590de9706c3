package poller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

const token = "poller-test-token"

type bundle struct {
	store *store.Store
	fake  *prolifictest.Server
	api   *prolific.Client
}

func setup(t *testing.T, studies int) bundle {
	t.Helper()
	b := bundle{store: storetest.New(t), fake: prolifictest.NewServer(t, token)}
	var err error
	b.api, err = prolific.New(prolific.Config{BaseURL: b.fake.URL(), Token: token, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := range studies {
		id := studyID(i)
		b.fake.SetStudy(prolifictest.Study{ID: id, Name: "Study " + id, URLs: []rules.URLCounts{
			{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 1},
		}})
		if _, err := b.store.AddWatch(context.Background(), store.StudyInfo{ID: id}, store.Watch{ChannelID: "C1"}, t0); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func studyID(i int) string { return fmt.Sprintf("%024x", 0xabc000+i) }

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

func (b bundle) poller(t *testing.T, owner string, now func() time.Time) *Poller {
	t.Helper()
	p, err := New(Config{Schedule: "@every 1m", Concurrency: 4, Owner: owner, Now: now}, b.api, b.store)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTwoPollersSplitOneTick(t *testing.T) {
	t.Parallel()
	const n = 30
	b := setup(t, n)
	now := func() time.Time { return t0.Add(time.Second) }
	p1, p2 := b.poller(t, "w1", now), b.poller(t, "w2", now)

	var wg sync.WaitGroup
	var s1, s2 CycleStats
	wg.Go(func() { s1 = p1.RunOnce(context.Background(), t0) })
	wg.Go(func() { s2 = p2.RunOnce(context.Background(), t0) })
	wg.Wait()

	if s1.Polled+s2.Polled != n || s1.Err != nil || s2.Err != nil {
		t.Fatalf("polled %d + %d (errors %v, %v), want %d in all", s1.Polled, s2.Polled, s1.Err, s2.Err, n)
	}
	for i := range n {
		if got := b.fake.Requests(studyID(i)); got != 1 {
			t.Errorf("study %d fetched %d times in one tick, want 1", i, got)
		}
	}
	// The same tick again finds nothing due: every study is due at the next tick.
	if s := p1.RunOnce(context.Background(), t0); s.Polled != 0 {
		t.Errorf("second run of the same tick polled %d", s.Polled)
	}
	if s := p2.RunOnce(context.Background(), t0.Add(time.Minute)); s.Polled != n {
		t.Errorf("next tick polled %d, want %d", s.Polled, n)
	}
}

func TestFailingStudyBacksOffWithoutHoldingOthers(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	bad := studyID(0)
	b.fake.Fail(bad, prolifictest.Fault{Status: 429, RetryAfter: "600"}, -1)
	clock := t0
	p := b.poller(t, "w1", func() time.Time { return clock })

	if s := p.RunOnce(context.Background(), t0); s.Polled != 3 || s.Failed != 1 {
		t.Fatalf("first tick = %+v, want 3 polled, 1 failed", s)
	}
	got, err := b.store.GetStudy(context.Background(), bad)
	if err != nil {
		t.Fatal(err)
	}
	// Retry-After: 600 keeps the study away for ten minutes, past the next ticks.
	if want := t0.Add(10 * time.Minute); got.NextPollAt.Before(want) || got.PollNote == "" {
		t.Errorf("rate-limited study next poll %v (note %q), want ≥ %v with a note", got.NextPollAt, got.PollNote, want)
	}
	clock = t0.Add(time.Minute)
	if s := p.RunOnce(context.Background(), clock); s.Polled != 2 || s.Failed != 0 {
		t.Errorf("next tick = %+v, want the 2 healthy studies only", s)
	}
}

func TestCompletedStudyIsPolledRarely(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	b.fake.SetStatus(studyID(0), prolific.StatusCompleted)
	p := b.poller(t, "w1", func() time.Time { return t0 })
	p.RunOnce(context.Background(), t0)
	got, err := b.store.GetStudy(context.Background(), studyID(0))
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != prolific.StatusCompleted || got.NextPollAt.Before(t0.Add(DefaultCompletedInterval)) || got.PollNote == "" {
		t.Errorf("completed study = status %q next %v note %q; want polled after %s with a note",
			got.Status, got.NextPollAt, got.PollNote, DefaultCompletedInterval)
	}
}

func TestStatusIsReadOnlyWhenStale(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	id := studyID(0)
	clock := t0
	p := b.poller(t, "w1", func() time.Time { return clock })
	for i := range 5 {
		clock = t0.Add(time.Duration(i) * time.Minute)
		p.RunOnce(context.Background(), clock)
	}
	// Five polls within the 15-minute status refresh read the status once.
	if got := b.fake.StudyRequests(id); got != 1 {
		t.Errorf("status read %d times in 5 polls, want 1", got)
	}
	if got := b.fake.Requests(id); got != 5 {
		t.Errorf("progress read %d times, want 5", got)
	}
	clock = t0.Add(DefaultStatusRefresh + 5*time.Minute)
	p.RunOnce(context.Background(), clock)
	if got := b.fake.StudyRequests(id); got != 2 {
		t.Errorf("status read %d times after it went stale, want 2", got)
	}
}

func TestShutdownLetsInFlightPollsFinishAndReleasesTheRest(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	hung := studyID(0)
	b.fake.Fail(hung, prolifictest.Fault{Hang: true}, -1)
	p, err := New(Config{Schedule: "@every 1h", Concurrency: 2, Owner: "w1", ShutdownGrace: 200 * time.Millisecond}, b.api, b.store)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()
	if err := b.fake.Wait(context.Background(), func() bool { return b.fake.Requests(hung) >= 1 }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Start = %v", err)
	}
	// The hung poll was cut off by the grace period and handed back at once.
	claimed, err := b.store.ClaimDueStudies(context.Background(), "w2", time.Now(), time.Now(), time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 1 || claimed[0].ID != hung {
		t.Errorf("after shutdown, claimable = %v, want the hung study released", claimed)
	}
}

func TestNewRejectsBadSchedule(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{
		"every minute", // Not a cron spec.
		"0 0 30 2 *",   // February 30th: parses, never fires, so Start would have no next tick.
	} {
		if _, err := New(Config{Schedule: spec}, nil, nil); err == nil {
			t.Errorf("schedule %q was accepted", spec)
		}
	}
}

func TestRetryAfterIsCappedAtMaxBackoff(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	id := studyID(0)
	// A year-long Retry-After must not end the watch silently.
	b.fake.Fail(id, prolifictest.Fault{Status: 429, RetryAfter: "31536000"}, 1)
	p := b.poller(t, "w1", func() time.Time { return t0 })
	p.RunOnce(context.Background(), t0)
	got, err := b.store.GetStudy(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if limit := t0.Add(DefaultMaxBackoff); got.NextPollAt.After(limit) {
		t.Errorf("next poll at %v, want no later than %v", got.NextPollAt, limit)
	}
}

// failingRecords is the real store except that recording a poll fails.
type failingRecords struct{ *store.Store }

func (failingRecords) RecordPoll(context.Context, store.PollRecord, store.Evaluator) (store.PollResult, error) {
	return store.PollResult{}, errors.New("index row size exceeds maximum")
}

func TestPollThatCannotBeStoredIsShownAndReleased(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	id := studyID(0)
	p, err := New(Config{Schedule: "@every 1m", Owner: "w1", Now: func() time.Time { return t0 }}, b.api, failingRecords{b.store})
	if err != nil {
		t.Fatal(err)
	}
	if s := p.RunOnce(context.Background(), t0); s.Failed != 1 {
		t.Fatalf("cycle = %+v, want the poll counted as failed", s)
	}
	got, err := b.store.GetStudy(context.Background(), id)
	if err != nil || got.LastPollOK || !strings.Contains(got.LastError, "storing the poll failed") {
		t.Fatalf("study = %+v, %v; want the storage failure shown", got, err)
	}
	// It is not fetched again for the same tick (each retry would cost
	// Prolific requests and could not be stored either)...
	if s := p.RunOnce(context.Background(), t0); s.Polled != 0 {
		t.Errorf("a second cycle for the same tick polled %d, want 0", s.Polled)
	}
	// ...but the lease is handed back: the next tick polls the study again.
	if s := p.RunOnce(context.Background(), t0.Add(time.Minute)); s.Polled != 1 {
		t.Errorf("next cycle polled %d, want the released study", s.Polled)
	}
}

func TestShortestStallThresholdAppliesWithTheDefault(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	id := studyID(0)
	ctx := context.Background()
	// C1 (from setup) uses the 6h default; C2 asks for two days.
	if _, err := b.store.AddWatch(ctx, store.StudyInfo{ID: id}, store.Watch{ChannelID: "C2", StallAfter: 48 * time.Hour}, t0); err != nil {
		t.Fatal(err)
	}
	clock := t0
	p := b.poller(t, "w1", func() time.Time { return clock })
	p.RunOnce(ctx, t0)
	clock = t0.Add(7 * time.Hour)
	p.RunOnce(ctx, clock)
	got, err := b.store.GetStudy(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// Stalled fires after the default 6h, and is dated from when allocation
	// last moved (the first observation), not from the poll that fired it.
	if len(got.OpenAlerts) != 1 || got.OpenAlerts[0].Rule != rules.Stalled || !got.OpenAlerts[0].Since.Equal(t0) {
		t.Fatalf("open alerts = %+v; want stalled since %v", got.OpenAlerts, t0)
	}
}

// A webhook or a new watch in the middle of a cycle is polled at once, not
// after the cycle's slowest poll: the cycle claims again when triggered.
func TestTriggerDuringACyclePollsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	fast, slow := studyID(0), studyID(1)
	// The slow study's first progress request is held until the test ends.
	holding, release := make(chan struct{}), make(chan struct{})
	var held atomic.Bool
	b.fake.OnRequest(func(r prolifictest.Request) {
		if r.StudyID == slow && r.Endpoint == prolifictest.EndpointProgress && held.CompareAndSwap(false, true) {
			close(holding)
			<-release
		}
	})
	api, err := prolific.New(prolific.Config{BaseURL: b.fake.URL(), Token: token, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Schedule: "@every 1h", Concurrency: 2, Owner: "w1"}, api, b.store)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()
	defer func() {
		close(release)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start = %v", err)
		}
	}()

	wait, cancelWait := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelWait()
	select {
	case <-holding:
	case <-wait.Done():
		t.Fatal("the slow study was never polled")
	}
	if err := b.fake.Wait(wait, func() bool { return b.fake.Requests(fast) >= 1 }); err != nil {
		t.Fatal(err)
	}
	// A progress webhook for the study this cycle already polled.
	if ok, err := b.store.PollSoon(ctx, fast, "", time.Now()); err != nil || !ok {
		t.Fatalf("PollSoon = %v, %v", ok, err)
	}
	p.Trigger()
	if err := b.fake.Wait(wait, func() bool { return b.fake.Requests(fast) >= 2 }); err != nil {
		t.Fatalf("the requested study was not polled again while the cycle ran: %v", err)
	}
	// A study watched for the first time while the cycle runs.
	added := studyID(2)
	b.fake.SetStudy(prolifictest.Study{ID: added, URLs: []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 10}}})
	if _, err := b.store.AddWatch(ctx, store.StudyInfo{ID: added}, store.Watch{ChannelID: "C1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	p.Trigger()
	if err := b.fake.Wait(wait, func() bool { return b.fake.Requests(added) >= 1 }); err != nil {
		t.Fatalf("the new study was not polled while the cycle ran: %v", err)
	}
	if got := b.fake.Requests(slow); got != 1 {
		t.Errorf("slow study requested %d times, want its one held request", got)
	}
}
