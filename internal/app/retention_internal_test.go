package app

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

// prune repeats batches until a batch comes back short, so a backlog larger
// than one batch goes entirely, and it keeps the observation the rules need.
func TestPruneRepeatsBatchesAndKeepsTheLatest(t *testing.T) {
	t.Parallel()
	const id = "60d9aadeb86739de712faee0"
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	s := storetest.New(t)
	ctx := context.Background()
	if _, err := s.AddWatch(ctx, store.StudyInfo{ID: id}, store.Watch{ChannelID: "C1"}, now.AddDate(0, 0, -120)); err != nil {
		t.Fatal(err)
	}
	// Five observations older than the 90-day retention, one recent.
	for i, at := range []time.Time{
		now.AddDate(0, 0, -100), now.AddDate(0, 0, -99), now.AddDate(0, 0, -98), now.AddDate(0, 0, -97), now.AddDate(0, 0, -96),
		now.Add(-time.Hour),
	} {
		urls := []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 10, Allocated: i}}
		storetest.RecordPoll(t, s, store.PollRecord{StudyID: id, At: at, OK: true}, func(p store.PollState) store.Evaluation {
			return store.Evaluation{State: rules.StudyState{URLs: urls, Status: p.State.Status}, NextPollAt: at}
		})
	}
	logs := &testkit.SyncBuffer{}
	a := &App{cfg: config.Config{Retention: 90 * 24 * time.Hour}, store: s, now: func() time.Time { return now },
		log: slog.New(slog.NewTextHandler(logs, nil))}

	a.prune(ctx, 2)

	history, err := s.History(ctx, id, now.AddDate(-1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(history) != 1 || history[0].URLs[0].Allocated != 5 {
		t.Fatalf("history after pruning = %+v, want only the recent observation", history)
	}
	if !strings.Contains(logs.String(), "observations=5") {
		t.Errorf("log does not report 5 pruned observations:\n%s", logs)
	}
}
