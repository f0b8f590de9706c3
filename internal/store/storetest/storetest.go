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
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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

// NewSchema creates an empty schema, dropped when the test ends, and returns
// a connection string whose search_path points at it.
func NewSchema(t testing.TB) string {
	t.Helper()
	base := BaseURL(t)
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	schema := "tw_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connecting to test Postgres: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("creating schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("connecting to drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
	})
	return WithSearchPath(t, base, schema)
}

// WithSearchPath returns connString with its search_path set to schema, in
// either URL or keyword/value form.
func WithSearchPath(t testing.TB, connString, schema string) string {
	t.Helper()
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			t.Fatalf("parsing test database URL: %v", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return connString + " search_path=" + schema
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
