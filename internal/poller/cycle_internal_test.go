package poller

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// A triggered cycle that starts after the schedule's pending tick has
// passed dates its polls to a later tick, so it polls each study once
// instead of claiming it again after every poll.
func TestTriggeredCyclePastItsTickPollsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	p := b.poller(t, "w1", time.Now)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	now := time.Now()
	stats := p.runCycle(ctx, now, now.Add(-time.Second))
	if stats.Polled != 2 || b.fake.Requests(studyID(0)) != 1 || b.fake.Requests(studyID(1)) != 1 {
		t.Fatalf("cycle polled %d, requests %d and %d; want each study once", stats.Polled,
			b.fake.Requests(studyID(0)), b.fake.Requests(studyID(1)))
	}
}

// A study a webhook asks for during every one of its polls is polled again
// and again, but only until the next tick: then the cycle ends, so Start
// can run that tick for every other study.
func TestCycleEndsAtTheNextTickDespiteRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	id := studyID(0)
	p, err := New(Config{Schedule: "@every 1s", Concurrency: 2, Owner: "w1"}, b.api, b.store)
	if err != nil {
		t.Fatal(err)
	}
	b.fake.OnRequest(func(r prolifictest.Request) {
		if r.StudyID == id && r.Endpoint == prolifictest.EndpointProgress {
			if _, err := b.store.PollSoon(context.Background(), id, "", time.Now()); err != nil {
				t.Error(err)
			}
			p.Trigger()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	stats := p.runCycle(ctx, now, now.Add(time.Second))
	if ctx.Err() != nil || stats.Err != nil {
		t.Fatalf("cycle ended only with its context: %v, %+v", ctx.Err(), stats)
	}
	if stats.Polled < 2 {
		t.Errorf("study polled %d times; want it polled again on each request until the tick", stats.Polled)
	}
}

// raceStore is a store whose one study is requested again by a webhook
// during its poll, and whose poll is recorded while the kick's claim is
// still running: the worst interleaving for the cycle's loop.
type raceStore struct {
	mu        sync.Mutex
	claims    int
	requested bool
	recorded  atomic.Int32
	recording chan struct{} // closed when the first RecordPoll starts
	recordGo  chan struct{} // lets the first RecordPoll return
}

func (s *raceStore) ClaimDueStudies(context.Context, string, time.Time, time.Time, time.Duration, int) ([]store.ClaimedStudy, error) {
	s.mu.Lock()
	s.claims++
	n := s.claims
	s.mu.Unlock()
	switch n {
	case 1:
		return []store.ClaimedStudy{{ID: "x"}}, nil
	case 2:
		// The kick's claim finds the study still leased; its poll is
		// recorded meanwhile, as a claim's round trip takes a while.
		close(s.recordGo)
		time.Sleep(100 * time.Millisecond)
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.requested {
		s.requested = false
		return []store.ClaimedStudy{{ID: "x"}}, nil
	}
	return nil, nil
}

func (s *raceStore) RecordPoll(context.Context, store.PollRecord, store.Evaluator) (store.PollResult, error) {
	if s.recorded.Add(1) == 1 {
		close(s.recording)
		<-s.recordGo
	}
	return store.PollResult{}, nil
}

func (s *raceStore) RecordPollFailure(context.Context, string, string, time.Time, time.Time, string) (bool, error) {
	return true, nil
}

func (s *raceStore) ReleaseStudy(context.Context, string, string) error { return nil }

type staticProlific struct{}

func (staticProlific) Study(context.Context, string) (prolific.Study, error) {
	return prolific.Study{Status: rules.StatusActive}, nil
}

func (staticProlific) Progress(context.Context, string) (prolific.Progress, error) {
	return prolific.Progress{URLs: []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 1}}}, nil
}

// A webhook that lands during the study's own poll, whose poll is recorded
// while the kick's claim still runs, is still served by this cycle.
func TestKickDuringTheStudysOwnPollIsNotLost(t *testing.T) {
	t.Parallel()
	s := &raceStore{recording: make(chan struct{}), recordGo: make(chan struct{})}
	p, err := New(Config{Schedule: "@every 1h", Concurrency: 2, Owner: "w1"}, staticProlific{}, s)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan CycleStats, 1)
	go func() { done <- p.RunOnce(context.Background(), time.Now()) }()
	<-s.recording
	s.mu.Lock()
	s.requested = true
	s.mu.Unlock()
	p.Trigger()
	stats := <-done
	if s.requested || stats.Polled != 2 {
		t.Fatalf("cycle polled %d, request still pending %v; want the requested study polled again", stats.Polled, s.requested)
	}
}
