// Package storetest gives each test its own freshly migrated Postgres schema,
// so tests that commit can run in parallel without seeing each other's rows.
//
// The server comes from TEST_DATABASE_URL, else DATABASE_URL; `make test`
// finds or starts one and sets it. Without either the test fails rather than
// skips, so a missing database never passes for a green run.
package storetest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// BaseURL returns the server's connection string or fails the test.
func BaseURL(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"TEST_DATABASE_URL", "DATABASE_URL"} {
		if v := os.Getenv(name); v != "" {
			return v
		}
	}
	t.Fatal("no Postgres for tests: set TEST_DATABASE_URL (or DATABASE_URL), or run `make test`, which finds or starts one")
	return ""
}

// SchemaName returns a new random schema name for a test.
func SchemaName(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "tw_test_" + hex.EncodeToString(b[:])
}

// NewSchema creates an empty schema, dropped when the test ends, and returns
// a connection string whose search_path points at it.
func NewSchema(t testing.TB) string {
	t.Helper()
	base, schema := BaseURL(t), SchemaName(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := store.PrepareSchema(ctx, base, schema, true)
	if err != nil {
		t.Fatalf("preparing test schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := store.DropSchema(ctx, base, schema); err != nil {
			t.Errorf("dropping test schema: %v", err)
		}
	})
	return dsn
}

// NewDatabaseURL returns a connection string for a fresh, fully migrated schema.
func NewDatabaseURL(t testing.TB) string {
	t.Helper()
	dsn := NewSchema(t)
	if _, err := store.NewMigrator(dsn).Up(); err != nil {
		t.Fatalf("migrating test schema: %v", err)
	}
	return dsn
}

// New returns a Store on a fresh, fully migrated schema, closed when the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), NewDatabaseURL(t))
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// RecordPoll records one poll of rec.StudyID as the poller would: it claims
// the study (handing back any other study the claim took), records the poll
// with eval, and fails the test on an error or a lost lease. rec.Owner
// defaults to "storetest".
func RecordPoll(t testing.TB, s *store.Store, rec store.PollRecord, eval store.Evaluator) store.PollResult {
	t.Helper()
	ctx := context.Background()
	rec.Owner = cmp.Or(rec.Owner, "storetest")
	// Any study due up to a century after the poll counts: tests decide
	// when they poll, not the schedule.
	claimed, err := s.ClaimDueStudies(ctx, rec.Owner, rec.At.AddDate(100, 0, 0), rec.At, time.Minute, 1000)
	if err != nil {
		t.Fatalf("claiming study %s: %v", rec.StudyID, err)
	}
	found := false
	for _, c := range claimed {
		if c.ID == rec.StudyID {
			found = true
		} else if err := s.ReleaseStudy(ctx, c.ID, rec.Owner); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("study %s could not be claimed at %v", rec.StudyID, rec.At)
	}
	res, err := s.RecordPoll(ctx, rec, eval)
	if err != nil || res.Lost {
		t.Fatalf("recording a poll of study %s: %+v, %v", rec.StudyID, res, err)
	}
	return res
}
