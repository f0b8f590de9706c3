package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

func TestPruneKeepsWhatTheRulesNeed(t *testing.T) {
	t.Parallel()
	s, dsn := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	addWatch(t, s, studyB, "C1")

	poll := func(id string, at time.Time, allocated int, tr ...rules.Transition) {
		t.Helper()
		storetest.RecordPoll(t, s, store.PollRecord{StudyID: id, At: at, OK: true},
			func(p store.PollState) store.Evaluation {
				next := p.State
				next.URLs = []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: allocated}}
				return store.Evaluation{State: next, Transitions: tr, NextPollAt: at}
			})
	}
	// Study A: 5 old observations and 1 recent one. Study B: 3 old ones only.
	for i := range 5 {
		poll(studyA, t0.Add(time.Duration(i)*time.Hour), i)
	}
	poll(studyA, t0.Add(100*24*time.Hour), 9)
	firing := rules.Transition{Rule: rules.Stalled, State: rules.Firing, At: t0, Since: t0}
	for i := range 3 {
		var tr []rules.Transition
		if i == 0 {
			tr = []rules.Transition{firing}
		}
		poll(studyB, t0.Add(time.Duration(i)*time.Hour), i, tr...)
	}
	// Mark B's firing message delivered long ago: the alert is still open, so it stays.
	msgs, err := s.ClaimOutbox(ctx, "d", t0, time.Minute, time.Second, 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("claim = %v, %v", msgs, err)
	}
	if ok, err := s.MarkSent(ctx, msgs[0].ID, "d", "C1", "1.1", t0); err != nil || !ok {
		t.Fatalf("MarkSent = %v, %v", ok, err)
	}
	cutoff := t0.Add(90 * 24 * time.Hour)
	var total store.Pruned
	for {
		p, err := s.PruneBatch(ctx, cutoff, cutoff, 2)
		if err != nil {
			t.Fatal(err)
		}
		total.Observations += p.Observations
		total.Outbox += p.Outbox
		if p.Total() == 0 {
			break
		}
	}
	// A keeps its latest, B keeps its latest: 9 - 2 = 7 pruned.
	if total.Observations != 7 || countRows(t, dsn, "observations") != 2 {
		t.Errorf("pruned %d observations, %d left; want 7 pruned, 2 left", total.Observations, countRows(t, dsn, "observations"))
	}
	if total.Outbox != 0 || countRows(t, dsn, "outbox") != 1 {
		t.Errorf("outbox pruned %d, left %d; the open alert's message must stay", total.Outbox, countRows(t, dsn, "outbox"))
	}
	// The rules still see each study's previous observation.
	for id, want := range map[string]int{studyA: 9, studyB: 2} {
		hist, err := s.History(ctx, id, cutoff.Add(1000*time.Hour))
		if err != nil || len(hist) != 1 || hist[0].AllocatedTotal != want {
			t.Errorf("study %s latest = %+v, %v; want allocated %d", id, hist, err, want)
		}
	}
}
