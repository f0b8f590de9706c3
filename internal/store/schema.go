package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ParseDatabaseURL parses a connection string, a postgres:// URL or
// keyword=value pairs with pgxpool's pool settings (pool_max_conns, …), the
// way every connection of the store does. Its error never repeats the
// string, which holds the password: pgx masks only an unquoted one
// (password='a b' would show "b").
func ParseDatabaseURL(databaseURL string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		problem := "not a postgres:// URL or keyword=value connection string"
		// pgconn writes "cannot parse `<connection string>`: <problem>".
		if msg := err.Error(); strings.HasPrefix(msg, "cannot parse `") {
			if i := strings.LastIndex(msg, "`: "); i >= 0 {
				problem = msg[i+len("`: "):]
			}
		}
		return nil, fmt.Errorf("parsing DATABASE_URL (value not shown): %s", problem)
	}
	return cfg, nil
}

// connConfig parses databaseURL as Open does, so that pool settings in it
// are understood by every connection the store makes rather than sent to
// the server as unknown parameters.
func connConfig(databaseURL string) (*pgx.ConnConfig, error) {
	cfg, err := ParseDatabaseURL(databaseURL)
	if err != nil {
		return nil, err
	}
	return cfg.ConnConfig, nil
}

// connect opens one connection outside the pool.
func connect(ctx context.Context, databaseURL string) (*pgx.Conn, error) {
	cfg, err := connConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// ErrSchemaInUse is returned by LockSchema when another process holds the schema.
var ErrSchemaInUse = errors.New("schema is in use by another process")

// LockSchema takes a session advisory lock named after schema on a
// connection of its own, so that two processes that each recreate a schema
// (two demos on one database) cannot drop it under each other. The lock
// lasts until release is called or the process dies. It returns
// ErrSchemaInUse when another session holds it.
func LockSchema(ctx context.Context, databaseURL, schema string) (release func(), err error) {
	conn, err := connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connecting to lock schema %s: %w", schema, err)
	}
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('taskflow-watch schema ' || $1))`, schema).Scan(&locked); err != nil {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("locking schema %s: %w", schema, err)
	}
	if !locked {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("locking schema %s: %w", schema, ErrSchemaInUse)
	}
	// Closing the session releases the lock.
	return func() { _ = conn.Close(context.Background()) }, nil
}

// PrepareSchema creates the named schema (dropping it first when fresh is
// set) and returns databaseURL with its search_path pointing there, so a
// demo or a test gets tables of its own inside a shared database.
func PrepareSchema(ctx context.Context, databaseURL, schema string, fresh bool) (string, error) {
	conn, err := connect(ctx, databaseURL)
	if err != nil {
		return "", fmt.Errorf("connecting to prepare schema %s: %w", schema, err)
	}
	defer conn.Close(ctx)
	ident := pgx.Identifier{schema}.Sanitize()
	if fresh {
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
			return "", fmt.Errorf("dropping schema %s: %w", schema, err)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+ident); err != nil {
		return "", fmt.Errorf("creating schema %s: %w", schema, err)
	}
	return WithSearchPath(databaseURL, schema)
}

// DropSchema removes a schema made by PrepareSchema with everything in it.
func DropSchema(ctx context.Context, databaseURL, schema string) error {
	conn, err := connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("connecting to drop schema %s: %w", schema, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("dropping schema %s: %w", schema, err)
	}
	return nil
}

// WithSearchPath returns a connection string, in URL or keyword/value
// form, whose search_path is schema.
func WithSearchPath(connString, schema string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		if _, err := ParseDatabaseURL(connString); err != nil {
			return "", err
		}
		u, err := url.Parse(connString)
		if err != nil {
			// url.Error repeats the URL, password included.
			return "", errors.New("parsing DATABASE_URL (value not shown): not a valid URL")
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return connString + " search_path=" + schema, nil
}
