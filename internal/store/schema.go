package store

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// connConfig parses databaseURL as Open does (pgxpool), so that pool
// settings in it (pool_max_conns, …) are understood by every connection the
// store makes rather than sent to the server as unknown parameters.
func connConfig(databaseURL string) (*pgx.ConnConfig, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parsing DATABASE_URL: %w", err)
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
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parsing DATABASE_URL: %w", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return connString + " search_path=" + schema, nil
}
