package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

// inboundT0 is the clock of the inbound tests, independent of other files.
var inboundT0 = time.Date(2026, 11, 3, 14, 0, 0, 0, time.UTC)

const inboundStudy = "0123456789abcdef01234567"

func openInbound(t *testing.T) (*store.Store, string) {
	t.Helper()
	dsn := storetest.NewDatabaseURL(t)
	s, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

// watchAt registers a watch whose study was created at the given time, so
// its first poll is due then.
func watchAt(t *testing.T, s *store.Store, id string, at time.Time) {
	t.Helper()
	_, err := s.AddWatch(context.Background(), store.StudyInfo{ID: id, Name: "Inbound", Status: "ACTIVE"},
		store.Watch{ChannelID: "C1"}, at)
	if err != nil {
		t.Fatal(err)
	}
}

func TestPollSoonOnce(t *testing.T) {
	t.Parallel()
	s, _ := openInbound(t)
	ctx := context.Background()
	// The study's first poll is due far in the future, so a webhook visibly moves it.
	future := inboundT0.Add(time.Hour)
	watchAt(t, s, inboundStudy, future)

	out, err := s.PollSoonOnce(ctx, "evt-1", inboundStudy, "PAUSED", inboundT0)
	if err != nil || out != (store.WebhookOutcome{Watched: true}) {
		t.Fatalf("first delivery = %+v, %v; want watched", out, err)
	}
	st, err := s.GetStudy(ctx, inboundStudy)
	if err != nil {
		t.Fatal(err)
	}
	// The webhook's status is not stored (the poll re-reads it).
	if !st.NextPollAt.Equal(inboundT0) || st.Status != "ACTIVE" {
		t.Fatalf("after first delivery next poll %v status %q; want %v ACTIVE", st.NextPollAt, st.Status, inboundT0)
	}

	// A retry of the same event must change nothing, even with another status.
	out, err = s.PollSoonOnce(ctx, "evt-1", inboundStudy, "COMPLETED", inboundT0.Add(-time.Minute))
	if err != nil || out != (store.WebhookOutcome{Duplicate: true}) {
		t.Fatalf("retried delivery = %+v, %v; want duplicate", out, err)
	}
	st, err = s.GetStudy(ctx, inboundStudy)
	if err != nil {
		t.Fatal(err)
	}
	if !st.NextPollAt.Equal(inboundT0) || st.Status != "ACTIVE" {
		t.Fatalf("duplicate changed the study: next poll %v status %q", st.NextPollAt, st.Status)
	}

	// A later time never delays the poll.
	out, err = s.PollSoonOnce(ctx, "evt-2", inboundStudy, "", inboundT0.Add(time.Minute))
	if err != nil || out != (store.WebhookOutcome{Watched: true}) {
		t.Fatalf("progress delivery = %+v, %v; want watched", out, err)
	}
	st, err = s.GetStudy(ctx, inboundStudy)
	if err != nil {
		t.Fatal(err)
	}
	if !st.NextPollAt.Equal(inboundT0) || st.Status != "ACTIVE" {
		t.Fatalf("progress delivery: next poll %v status %q; want %v ACTIVE", st.NextPollAt, st.Status, inboundT0)
	}

	// An unwatched study is not created, but the event is still remembered.
	const unwatched = "fedcba9876543210fedcba98"
	out, err = s.PollSoonOnce(ctx, "evt-3", unwatched, "ACTIVE", inboundT0)
	if err != nil || out != (store.WebhookOutcome{}) {
		t.Fatalf("unwatched delivery = %+v, %v; want neither duplicate nor watched", out, err)
	}
	if _, err := s.GetStudy(ctx, unwatched); err == nil {
		t.Fatal("an unwatched study was created by a webhook")
	}
	out, err = s.PollSoonOnce(ctx, "evt-3", unwatched, "ACTIVE", inboundT0)
	if err != nil || !out.Duplicate {
		t.Fatalf("unwatched retry = %+v, %v; want duplicate", out, err)
	}
}

func TestPollSoonOnceFailureLeavesNoRecord(t *testing.T) {
	t.Parallel()
	broken, dsn := openInbound(t)
	healthy, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(healthy.Close)
	watchAt(t, healthy, inboundStudy, inboundT0.Add(time.Hour))

	broken.Close()
	if _, err := broken.PollSoonOnce(context.Background(), "evt-1", inboundStudy, "", inboundT0); err == nil {
		t.Fatal("PollSoonOnce on a closed pool succeeded")
	}
	// Prolific retries; the retry must be handled, not treated as a duplicate.
	out, err := healthy.PollSoonOnce(context.Background(), "evt-1", inboundStudy, "", inboundT0)
	if err != nil || out != (store.WebhookOutcome{Watched: true}) {
		t.Fatalf("retry after failure = %+v, %v; want watched", out, err)
	}
}

func TestPollSoonOnceConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	s, _ := openInbound(t)
	watchAt(t, s, inboundStudy, inboundT0.Add(time.Hour))

	const deliveries = 8
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		handled  int
		firstErr error
	)
	for range deliveries {
		wg.Go(func() {
			out, err := s.PollSoonOnce(context.Background(), "evt-same", inboundStudy, "", inboundT0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil && !out.Duplicate {
				handled++
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	if handled != 1 {
		t.Fatalf("%d concurrent deliveries of one event were handled; want exactly 1", handled)
	}
}

func TestPruneForgetsOldWebhookEvents(t *testing.T) {
	t.Parallel()
	s, _ := openInbound(t)
	ctx := context.Background()
	watchAt(t, s, inboundStudy, inboundT0)
	for i, at := range []time.Time{inboundT0.Add(-48 * time.Hour), inboundT0.Add(-25 * time.Hour), inboundT0} {
		if _, err := s.PollSoonOnce(ctx, string(rune('a'+i)), inboundStudy, "", at); err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.PruneBatch(ctx, inboundT0.Add(-1000*time.Hour), inboundT0.Add(-24*time.Hour), 100)
	if err != nil || p.WebhookEvents != 2 {
		t.Fatalf("prune = %+v, %v; want 2 webhook events", p, err)
	}
	// The pruned ids are forgotten; the recent one is still a duplicate.
	for id, wantDuplicate := range map[string]bool{"a": false, "c": true} {
		out, err := s.PollSoonOnce(ctx, id, inboundStudy, "", inboundT0)
		if err != nil || out.Duplicate != wantDuplicate {
			t.Errorf("event %s after pruning = %+v, %v; want duplicate=%v", id, out, err, wantDuplicate)
		}
	}
}

func TestStatusWebhookMarksStatusStale(t *testing.T) {
	t.Parallel()
	s, _ := openInbound(t)
	ctx := context.Background()
	watchAt(t, s, inboundStudy, inboundT0)
	// A poll reads the status: it is fresh afterwards.
	storetest.RecordPoll(t, s, store.PollRecord{StudyID: inboundStudy, At: inboundT0, StatusChecked: true},
		func(p store.PollState) store.Evaluation {
			next := p.State
			next.Status = "PAUSED"
			return store.Evaluation{State: next, NextPollAt: inboundT0.Add(time.Hour)}
		})
	out, err := s.PollSoonOnce(ctx, "evt-status", inboundStudy, "ACTIVE", inboundT0.Add(time.Minute))
	if err != nil || !out.Watched {
		t.Fatalf("PollSoonOnce = %+v, %v", out, err)
	}
	claimed, err := s.ClaimDueStudies(ctx, "w", inboundT0.Add(time.Minute), inboundT0.Add(time.Minute), time.Minute, 10)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim after the webhook = %v, %v; want the study due", claimed, err)
	}
	// The webhook's value is not stored; the poll must re-read it, so the
	// rules see PAUSED → ACTIVE and restart the stall clock.
	if claimed[0].Status != "PAUSED" || !claimed[0].StatusCheckedAt.IsZero() {
		t.Errorf("claimed %+v; want status PAUSED kept and marked stale", claimed[0])
	}
}
