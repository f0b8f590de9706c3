// Package storetest gives each test its own freshly migrated Postgres schema,
// so tests that commit can run in parallel without seeing each other's rows.
//
// The server comes from TEST_DATABASE_URL, else DATABASE_URL; `make test`
// finds or starts one and sets it. Without either the test fails rather than
// skips, so a missing database never passes for a green run.
package storetest

import (
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
