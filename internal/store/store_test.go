package store_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

const (
	studyA = "60d9aadeb86739de712faee0"
	studyB = "60aca280709ee40ec37d4885"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

func addWatch(t *testing.T, s *store.Store, id, channel string) {
	t.Helper()
	if _, err := s.AddWatch(context.Background(), store.StudyInfo{ID: id, Name: "Study " + id[:4], Status: "ACTIVE"},
		store.Watch{ChannelID: channel}, t0); err != nil {
		t.Fatal(err)
	}
}

// keep is an evaluator that stores urls as the observation and changes nothing else.
func keep(urls []rules.URLCounts) store.Evaluator {
	return func(p store.PollState) store.Evaluation {
		next := p.State
		next.URLs = urls
		return store.Evaluation{State: next}
	}
}

func countRows(t *testing.T, dsn, table string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	dsn := storetest.NewDatabaseURL(t)
	s, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	dsn := storetest.NewSchema(t)
	m := store.NewMigrator(dsn)

	st, err := m.Status()
	if err != nil || st.Version != 0 || st.Current() {
		t.Fatalf("fresh schema status = %+v, %v; want version 0, not current", st, err)
	}
	if st, err = m.Up(); err != nil || !st.Current() {
		t.Fatalf("Up = %+v, %v; want current", st, err)
	}
	if st, err = m.Up(); err != nil || !st.Current() {
		t.Fatalf("second Up = %+v, %v; want a no-op", st, err)
	}
	if st, err = m.Down(); err != nil || st.Version != st.Latest-1 {
		t.Fatalf("Down = %+v, %v; want one version back", st, err)
	}
	if st, err = m.Up(); err != nil || !st.Current() {
		t.Fatalf("Up after Down = %+v, %v", st, err)
	}
}

// A search_path naming a schema that does not exist gets an error that says so.
func TestMigrationsNameAMissingSchema(t *testing.T) {
	t.Parallel()
	dsn, err := store.WithSearchPath(storetest.BaseURL(t), "taskflow_no_such_schema_"+storetest.SchemaName(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.NewMigrator(dsn).Up(); err == nil || !strings.Contains(err.Error(), "names no schema that exists") {
		t.Fatalf("Up with a missing schema = %v, want it named", err)
	}
}

func TestMigrationsRefuseDirtyAndNewerSchemas(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		version int
		dirty   bool
		want    error
	}{
		// A migration that failed halfway must stop the worker.
		{"dirty", 1, true, store.ErrSchemaDirty},
		// A schema from a newer build must not be touched by an older one.
		{"newer", 99, false, store.ErrSchemaTooNew},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dsn := storetest.NewDatabaseURL(t)
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, `UPDATE schema_migrations SET version = $1, dirty = $2`, tt.version, tt.dirty); err != nil {
				t.Fatal(err)
			}
			st, err := store.NewMigrator(dsn).Up()
			if !errors.Is(err, tt.want) {
				t.Fatalf("Up = %v, want %v", err, tt.want)
			}
			if st.Current() {
				t.Errorf("status %+v reported current", st)
			}
			if got := countRows(t, dsn, "studies"); got != 0 {
				t.Errorf("studies changed: %d rows", got)
			}
		})
	}
}

func TestAddWatchIsIdempotentAndUpdatesStallAfter(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	info := store.StudyInfo{ID: studyA, Name: "Pilot", Status: "ACTIVE"}

	created, err := s.AddWatch(ctx, info, store.Watch{ChannelID: "C1", AddedBy: "U1"}, t0)
	if err != nil || !created {
		t.Fatalf("first AddWatch = %v, %v; want created", created, err)
	}
	created, err = s.AddWatch(ctx, info, store.Watch{ChannelID: "C1", AddedBy: "U2", StallAfter: 2 * time.Hour}, t0.Add(time.Minute))
	if err != nil || created {
		t.Fatalf("second AddWatch = %v, %v; want updated, not created", created, err)
	}
	got, err := s.GetStudy(ctx, studyA)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Watches) != 1 || got.Watches[0].StallAfter != 2*time.Hour || got.Watches[0].AddedBy != "U2" {
		t.Errorf("watches = %+v, want one with stall-after 2h added by U2", got.Watches)
	}
	if got.Name != "Pilot" || got.Status != "ACTIVE" || !got.NextPollAt.Equal(t0) {
		t.Errorf("study = %+v", got)
	}
}

// A study watched again (from another channel, or with a new stall=) is
// requested: a running cycle, which claims only what was due by its tick
// and what was requested, takes it at once.
func TestWatchingAgainRequestsAPoll(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	info := store.StudyInfo{ID: studyA}
	if _, err := s.AddWatch(ctx, info, store.Watch{ChannelID: "C1"}, t0); err != nil {
		t.Fatal(err)
	}
	storetest.RecordPoll(t, s, store.PollRecord{StudyID: studyA, At: t0, OK: true}, func(p store.PollState) store.Evaluation {
		return store.Evaluation{State: p.State, NextPollAt: t0.Add(time.Hour)}
	})
	at := t0.Add(time.Minute)
	if _, err := s.AddWatch(ctx, info, store.Watch{ChannelID: "C2"}, at); err != nil {
		t.Fatal(err)
	}
	// The cycle's tick was t0: by its tick alone the study is not due.
	claimed, err := s.ClaimDueStudies(ctx, "w1", t0, at, time.Minute, 8)
	if err != nil || len(claimed) != 1 || claimed[0].ID != studyA {
		t.Fatalf("claim after a second watch = %v, %v; want the study", claimed, err)
	}
}

func TestAddWatchRefusesAChannelThatIsNoChannelID(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	for _, ch := range []string{"", "../../etc<x>", "C1 C2", strings.Repeat("C", 81)} {
		_, err := s.AddWatch(context.Background(), store.StudyInfo{ID: studyA}, store.Watch{ChannelID: ch}, t0)
		if !errors.Is(err, store.ErrInvalidChannel) {
			t.Errorf("AddWatch in channel %q = %v, want ErrInvalidChannel", ch, err)
		}
	}
	if studies, err := s.Studies(context.Background(), ""); err != nil || len(studies) != 0 {
		t.Fatalf("studies = %v, %v; want none stored", studies, err)
	}
}

func TestRemoveWatch(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	addWatch(t, s, studyA, "C2")

	if err := s.RemoveWatch(ctx, studyA, "C9"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("removing an absent watch = %v, want ErrNotFound", err)
	}
	if err := s.RemoveWatch(ctx, studyA, "C1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetStudy(ctx, studyA); err != nil {
		t.Fatalf("study with a remaining watch is gone: %v", err)
	}
	if err := s.RemoveWatch(ctx, studyA, "C2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetStudy(ctx, studyA); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("study without watches = %v, want ErrNotFound", err)
	}
}

func TestStudiesFiltersByChannel(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	addWatch(t, s, studyB, "C2")
	addWatch(t, s, studyB, "C1")

	all, err := s.Studies(ctx, "")
	if err != nil || len(all) != 2 {
		t.Fatalf("Studies(all) = %d, %v; want 2", len(all), err)
	}
	c2, err := s.Studies(ctx, "C2")
	if err != nil || len(c2) != 1 || c2[0].ID != studyB || len(c2[0].Watches) != 1 || c2[0].Watches[0].ChannelID != "C2" {
		t.Fatalf("Studies(C2) = %+v, %v; want study B with C2's watch only", c2, err)
	}
}

func TestRecordPollWritesObservationsOnlyOnChange(t *testing.T) {
	t.Parallel()
	s, dsn := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	urls := []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 4}}
	moved := []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 5}}

	poll := func(i int, urls []rules.URLCounts) store.PollResult {
		t.Helper()
		at := t0.Add(time.Duration(i) * time.Minute)
		return storetest.RecordPoll(t, s, store.PollRecord{StudyID: studyA, At: at, OK: true}, keep(urls))
	}
	for i := range 10 {
		res := poll(i, urls)
		if res.ObservationWritten != (i == 0) {
			t.Fatalf("poll %d: ObservationWritten = %v", i, res.ObservationWritten)
		}
	}
	if got := countRows(t, dsn, "observations"); got != 1 {
		t.Fatalf("10 identical polls wrote %d observations, want 1", got)
	}
	if res := poll(10, moved); !res.ObservationWritten {
		t.Fatal("a change was not written")
	}
	hist, err := s.History(ctx, studyA, t0.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// History starts with the observation in force at the window's start.
	if len(hist) != 2 || hist[0].AllocatedTotal != 4 || hist[1].AllocatedTotal != 5 {
		t.Fatalf("History = %+v, want allocated 4 then 5", hist)
	}
	st, err := s.GetStudy(ctx, studyA)
	if err != nil {
		t.Fatal(err)
	}
	if !st.LastPolledAt.Equal(t0.Add(10*time.Minute)) || !st.LastPollOK {
		t.Errorf("last poll = %v ok=%v, want every poll recorded", st.LastPolledAt, st.LastPollOK)
	}
}

func TestRecordPollStoresTransitionsAndOutboxAtomically(t *testing.T) {
	t.Parallel()
	s, dsn := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	addWatch(t, s, studyA, "C2")
	fire := rules.Transition{Rule: rules.PollFailing, State: rules.Firing, At: t0, Since: t0}

	claim := func(at time.Time) {
		t.Helper()
		if c, err := s.ClaimDueStudies(ctx, "w1", at, at, time.Minute, 10); err != nil || len(c) != 1 {
			t.Fatalf("claim = %v, %v", c, err)
		}
	}
	claim(t0)
	res, err := s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w1", At: t0, Error: "boom"},
		func(p store.PollState) store.Evaluation {
			next := p.State
			next.ConsecutiveFailures++
			return store.Evaluation{State: next, Transitions: []rules.Transition{fire}}
		})
	if err != nil || res.Queued != 2 {
		t.Fatalf("RecordPoll = %+v, %v; want 2 queued", res, err)
	}
	st, err := s.GetStudy(ctx, studyA)
	if err != nil || len(st.OpenAlerts) != 1 || st.OpenAlerts[0].Rule != rules.PollFailing || st.ConsecutiveFailures != 1 || st.LastError != "boom" {
		t.Fatalf("study = %+v, %v; want one open poll_failing after one failure", st, err)
	}

	// The next poll succeeds with new progress, and its transitions are a
	// capacity_increase event, whose outbox rows are written first, then a
	// second firing of the open alert, which violates the schema's
	// uniqueness. The later failure must undo the earlier writes: nothing of
	// that poll may be stored.
	claim(t0.Add(time.Minute))
	before, err := s.GetStudy(ctx, studyA)
	if err != nil {
		t.Fatal(err)
	}
	counts := rules.URLCounts{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: 6, CapacityIncrements: 2}
	event := rules.Transition{Rule: rules.CapacityIncrease, State: rules.Event, ExternalURL: counts.ExternalURL,
		At: t0.Add(time.Minute), Since: t0.Add(time.Minute), Counts: &counts, PreviousCapacityIncrements: 1}
	_, err = s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w1", At: t0.Add(time.Minute), Name: "Renamed", OK: true, StatusChecked: true},
		func(p store.PollState) store.Evaluation {
			next := p.State
			next.URLs = []rules.URLCounts{counts}
			next.Status = "PAUSED"
			next.ConsecutiveFailures = 0
			next.StallSince = t0.Add(time.Minute)
			return store.Evaluation{State: next, Transitions: []rules.Transition{event, fire},
				NextPollAt: t0.Add(time.Hour), Note: "should not be stored"}
		})
	if err == nil {
		t.Fatal("a duplicate open alert was accepted")
	}
	for table, want := range map[string]int{"outbox": 2, "observations": 0, "alerts": 1} {
		if got := countRows(t, dsn, table); got != want {
			t.Errorf("%s rows = %d after a failed poll transaction, want %d", table, got, want)
		}
	}
	after, err := s.GetStudy(ctx, studyA)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Errorf("study after the failed poll transaction = %+v\nwant it unchanged: %+v", after, before)
	}
}

func TestRecordPollAfterLostLeaseWritesNothing(t *testing.T) {
	t.Parallel()
	s, dsn := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	if _, err := s.ClaimDueStudies(ctx, "w1", t0, t0, time.Minute, 10); err != nil {
		t.Fatal(err)
	}
	// The lease expires and another worker claims the study.
	if c, err := s.ClaimDueStudies(ctx, "w2", t0.Add(2*time.Minute), t0.Add(2*time.Minute), time.Minute, 10); err != nil || len(c) != 1 {
		t.Fatalf("claim after expiry = %v, %v", c, err)
	}
	res, err := s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w1", At: t0, OK: true},
		keep([]rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 1}}))
	if err != nil || !res.Lost {
		t.Fatalf("RecordPoll by the old owner = %+v, %v; want Lost", res, err)
	}
	if got := countRows(t, dsn, "observations"); got != 0 {
		t.Errorf("observations = %d, want 0", got)
	}
}

func TestRecordPollOfAStudyUnwatchedMeanwhileWritesNothing(t *testing.T) {
	t.Parallel()
	s, dsn := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	if _, err := s.ClaimDueStudies(ctx, "w1", t0, t0, time.Minute, 10); err != nil {
		t.Fatal(err)
	}
	// The only channel unwatches while the poll is in flight.
	if err := s.RemoveWatch(ctx, studyA, "C1"); err != nil {
		t.Fatal(err)
	}
	res, err := s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w1", At: t0, OK: true},
		keep([]rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 1}}))
	if err != nil || !res.Lost {
		t.Fatalf("RecordPoll of a removed study = %+v, %v; want Lost and no error", res, err)
	}
	if got := countRows(t, dsn, "observations"); got != 0 {
		t.Errorf("observations = %d, want 0", got)
	}
}

func TestWebhookDuringAPollKeepsTheStudyDue(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	if c, err := s.ClaimDueStudies(ctx, "w1", t0, t0, time.Minute, 10); err != nil || len(c) != 1 {
		t.Fatalf("claim = %v, %v", c, err)
	}
	// A status webhook lands after the poll fetched the status and
	// progress, before it is recorded.
	if watched, err := s.PollSoon(ctx, studyA, "PAUSED", t0.Add(200*time.Millisecond)); err != nil || !watched {
		t.Fatalf("PollSoon = %v, %v", watched, err)
	}
	at := t0.Add(time.Second)
	_, err := s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w1", At: at, OK: true, StatusChecked: true},
		func(p store.PollState) store.Evaluation {
			next := p.State
			next.URLs = []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 1}}
			return store.Evaluation{State: next, NextPollAt: t0.Add(5 * time.Minute)}
		})
	if err != nil {
		t.Fatal(err)
	}
	// The recorded poll predates the change: the study is due at once, and
	// its status is read again.
	c, err := s.ClaimDueStudies(ctx, "w2", at, at, time.Minute, 10)
	if err != nil || len(c) != 1 || !c[0].StatusCheckedAt.IsZero() {
		t.Fatalf("claim after the poll = %+v, %v; want the study due with its status stale", c, err)
	}
	// The claim took the request: the poll after it follows the schedule.
	next := t0.Add(10 * time.Minute)
	if _, err := s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w2", At: at.Add(time.Second), OK: true, StatusChecked: true},
		func(p store.PollState) store.Evaluation { return store.Evaluation{State: p.State, NextPollAt: next} }); err != nil {
		t.Fatal(err)
	}
	st, err := s.GetStudy(ctx, studyA)
	if err != nil || !st.NextPollAt.Equal(next) {
		t.Fatalf("study = %+v, %v; want it due at the next tick %v", st, err, next)
	}
	if c, err := s.ClaimDueStudies(ctx, "w3", next, next, time.Minute, 10); err != nil || len(c) != 1 || c[0].StatusCheckedAt.IsZero() {
		t.Fatalf("claim at the next tick = %+v, %v; want the status marked as read", c, err)
	}
}

func TestWebhookKeepsTheBackOffOfAFailingStudy(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	if c, err := s.ClaimDueStudies(ctx, "w1", t0, t0, time.Minute, 10); err != nil || len(c) != 1 {
		t.Fatalf("claim = %v, %v", c, err)
	}
	// A 429 asked for half an hour.
	backoff := t0.Add(30 * time.Minute)
	if _, err := s.RecordPoll(ctx, store.PollRecord{StudyID: studyA, Owner: "w1", At: t0, Error: "rate limited"},
		func(p store.PollState) store.Evaluation {
			next := p.State
			next.ConsecutiveFailures++
			return store.Evaluation{State: next, NextPollAt: backoff}
		}); err != nil {
		t.Fatal(err)
	}
	if watched, err := s.PollSoon(ctx, studyA, "", t0.Add(time.Minute)); err != nil || !watched {
		t.Fatalf("PollSoon = %v, %v", watched, err)
	}
	st, err := s.GetStudy(ctx, studyA)
	if err != nil || !st.NextPollAt.Equal(backoff) {
		t.Fatalf("study = %+v, %v; want the back-off until %v kept", st, err, backoff)
	}
}

func TestClaimSplitsStudiesBetweenReplicas(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	var ids []string
	for i := range 40 {
		id := []byte("60d9aadeb86739de712fa000")
		id[21], id[22], id[23] = "0123456789abcdef"[i/16], "0123456789abcdef"[i%16], 'a'
		ids = append(ids, string(id))
		addWatch(t, s, string(id), "C1")
	}
	var (
		mu     sync.Mutex
		seen   = map[string]int{}
		by     = map[string]string{}
		wg     sync.WaitGroup
		owners = []string{"w1", "w2", "w3"}
	)
	for _, owner := range owners {
		wg.Go(func() {
			for {
				claimed, err := s.ClaimDueStudies(ctx, owner, t0, t0, time.Minute, 3)
				if err != nil {
					t.Error(err)
					return
				}
				if len(claimed) == 0 {
					return
				}
				mu.Lock()
				for _, c := range claimed {
					seen[c.ID]++
					by[c.ID] = owner
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != len(ids) {
		t.Fatalf("claimed %d distinct studies, want %d", len(seen), len(ids))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("study %s claimed %d times", id, n)
		}
	}
	// Leased studies are not due again until the lease passes or the poll is recorded.
	if again, err := s.ClaimDueStudies(ctx, "w4", t0.Add(30*time.Second), t0.Add(30*time.Second), time.Minute, 100); err != nil || len(again) != 0 {
		t.Fatalf("claim during leases = %d, %v; want none", len(again), err)
	}
	// A release by another owner changes nothing; the owner's release frees the study at once.
	if err := s.ReleaseStudy(ctx, ids[0], "w9"); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.ClaimDueStudies(ctx, "w4", t0, t0, time.Minute, 100); len(again) != 0 {
		t.Fatal("a release by a non-owner freed the lease")
	}
	if err := s.ReleaseStudy(ctx, ids[0], by[ids[0]]); err != nil {
		t.Fatal(err)
	}
	again, err := s.ClaimDueStudies(ctx, "w4", t0, t0, time.Minute, 100)
	if err != nil || len(again) != 1 || again[0].ID != ids[0] {
		t.Fatalf("claim after the owner's release = %v, %v; want exactly the released study", again, err)
	}
}

func TestAlertsOnVeryLongURLs(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	// Survey URLs with long query strings exceed what a btree entry may hold.
	long := "https://survey.example/" + strings.Repeat("q", 3000)
	for i, state := range []rules.TransitionState{rules.Firing, rules.Resolved, rules.Firing} {
		at := t0.Add(time.Duration(i) * time.Minute)
		storetest.RecordPoll(t, s, store.PollRecord{StudyID: studyA, At: at, OK: true},
			func(p store.PollState) store.Evaluation {
				return store.Evaluation{State: p.State, Transitions: []rules.Transition{
					{Rule: rules.OverAllocation, ExternalURL: long, State: state, At: at, Since: at}}}
			})
	}
	st, err := s.GetStudy(ctx, studyA)
	if err != nil || len(st.OpenAlerts) != 1 || st.OpenAlerts[0].ExternalURL != long {
		t.Fatalf("open alerts = %+v, %v; want the long URL's alert open again", st.OpenAlerts, err)
	}
}

func TestDestinationQueuesOneMessagePerTransition(t *testing.T) {
	t.Parallel()
	s, dsn := openStore(t)
	ctx := context.Background()
	for _, ch := range []string{"C1", "C2", "C3"} {
		addWatch(t, s, studyA, ch)
	}
	res := storetest.RecordPoll(t, s, store.PollRecord{StudyID: studyA, At: t0, Destination: "incoming-webhook"},
		func(p store.PollState) store.Evaluation {
			return store.Evaluation{State: p.State, Transitions: []rules.Transition{{Rule: rules.PollFailing, State: rules.Firing, At: t0, Since: t0}}}
		})
	if res.Queued != 1 || countRows(t, dsn, "outbox") != 1 {
		t.Fatalf("RecordPoll = %+v; want one message for three watching channels", res)
	}
	msgs, err := s.ClaimOutbox(ctx, "d", t0, time.Minute, time.Second, 10)
	if err != nil || len(msgs) != 1 || msgs[0].ChannelID != "incoming-webhook" {
		t.Fatalf("claimed %+v, %v", msgs, err)
	}
}

func TestRecordPollFailureShowsAndReleases(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := context.Background()
	addWatch(t, s, studyA, "C1")
	if _, err := s.ClaimDueStudies(ctx, "w1", t0, t0, time.Minute, 10); err != nil {
		t.Fatal(err)
	}
	nextTick := t0.Add(5 * time.Minute)
	if ok, err := s.RecordPollFailure(ctx, studyA, "w2", t0, nextTick, "boom"); err != nil || ok {
		t.Fatalf("failure recorded by a non-owner = %v, %v", ok, err)
	}
	if ok, err := s.RecordPollFailure(ctx, studyA, "w1", t0, nextTick, "storing the poll failed: boom"); err != nil || !ok {
		t.Fatalf("RecordPollFailure = %v, %v", ok, err)
	}
	st, err := s.GetStudy(ctx, studyA)
	if err != nil || st.LastPollOK || st.LastError != "storing the poll failed: boom" {
		t.Fatalf("study = %+v, %v; want the failure shown", st, err)
	}
	// Not due again in the same cycle: a poll that cannot be stored must
	// not be fetched over and over until the tick ends.
	if c, err := s.ClaimDueStudies(ctx, "w3", t0, t0, time.Minute, 10); err != nil || len(c) != 0 {
		t.Fatalf("claim in the same cycle = %v, %v; want nothing due before the next tick", c, err)
	}
	if c, err := s.ClaimDueStudies(ctx, "w3", nextTick, nextTick, time.Minute, 10); err != nil || len(c) != 1 {
		t.Fatalf("claim at the next tick = %v, %v; want the study released", c, err)
	}
}
