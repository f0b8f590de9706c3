package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/taskflow-watch/taskflow-watch/migrations"
)

// ErrSchemaDirty means a migration failed halfway and the database needs a
// person before the worker may touch it.
var ErrSchemaDirty = errors.New("database schema is dirty")

// ErrSchemaTooNew means the database was migrated by a newer build than this one.
var ErrSchemaTooNew = errors.New("database schema is newer than this build")

// SchemaStatus describes the database schema against the embedded migrations.
type SchemaStatus struct {
	// Version is the applied version, 0 when nothing is applied.
	Version uint
	// Dirty is true when a migration failed halfway.
	Dirty bool
	// Latest is the newest version embedded in this binary.
	Latest uint
}

// Current reports whether the schema is exactly what this binary expects.
func (s SchemaStatus) Current() bool { return !s.Dirty && s.Version == s.Latest }

// Check returns ErrSchemaDirty or ErrSchemaTooNew with instructions, or nil.
func (s SchemaStatus) Check() error {
	switch {
	case s.Dirty:
		return fmt.Errorf("%w at version %d: a migration failed halfway; inspect the database, repair it, then run `worker migrate force %d` (the last version that fully applied)", ErrSchemaDirty, s.Version, max(int(s.Version)-1, 0))
	case s.Version > s.Latest:
		return fmt.Errorf("%w: database is at version %d, this build knows up to %d; run the newer build or roll back with it", ErrSchemaTooNew, s.Version, s.Latest)
	}
	return nil
}

// Migrator applies the embedded migrations. Its methods each open one
// connection and hold golang-migrate's advisory lock, so several replicas
// starting at once apply each migration once.
type Migrator struct {
	databaseURL string
}

// NewMigrator returns a Migrator for databaseURL.
func NewMigrator(databaseURL string) *Migrator { return &Migrator{databaseURL: databaseURL} }

func (m *Migrator) open() (*migrate.Migrate, func(), error) {
	cc, err := connConfig(m.databaseURL)
	if err != nil {
		return nil, nil, err
	}
	db := stdlib.OpenDB(*cc)
	// golang-migrate keeps its table in the current schema; with a
	// search_path naming no existing schema, it fails with an unreadable
	// scan error about a NULL current_schema.
	var schema sql.NullString
	if err := db.QueryRow(`SELECT current_schema()`).Scan(&schema); err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("connecting for migrations: %w", err)
	}
	if !schema.Valid {
		db.Close()
		return nil, nil, errors.New("the search_path of DATABASE_URL names no schema that exists: create the schema (CREATE SCHEMA …) or fix search_path")
	}
	driver, err := migratepgx.WithInstance(db, &migratepgx.Config{})
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("connecting for migrations: %w", err)
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("reading embedded migrations: %w", err)
	}
	mig, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("preparing migrations: %w", err)
	}
	return mig, func() { mig.Close(); closeDB(db) }, nil
}

func closeDB(db *sql.DB) { _ = db.Close() }

// Status reads the applied version and compares it with the embedded ones.
func (m *Migrator) Status() (SchemaStatus, error) {
	return m.run(false, func(*migrate.Migrate, SchemaStatus) error { return nil })
}

// Up applies every pending migration. It refuses a dirty or newer schema
// before changing anything.
func (m *Migrator) Up() (SchemaStatus, error) {
	return m.run(true, func(mig *migrate.Migrate, _ SchemaStatus) error {
		if err := mig.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
			return fmt.Errorf("applying migrations: %w", err)
		}
		return nil
	})
}

// Down reverts the most recent migration, refusing a dirty or newer schema.
func (m *Migrator) Down() (SchemaStatus, error) {
	return m.run(true, func(mig *migrate.Migrate, st SchemaStatus) error {
		if st.Version == 0 {
			return nil
		}
		if err := mig.Steps(-1); err != nil {
			return fmt.Errorf("reverting migration %d: %w", st.Version, err)
		}
		return nil
	})
}

// Force marks version as applied and clean without running anything, for
// an operator who has repaired a dirty schema by hand.
func (m *Migrator) Force(version int) (SchemaStatus, error) {
	return m.run(false, func(mig *migrate.Migrate, st SchemaStatus) error {
		// A version this build does not have would make the schema look
		// newer than the binary, and every command would then say so.
		if version < 0 || uint(version) > st.Latest {
			return fmt.Errorf("forcing version %d: this build's migrations go from 0 to %d", version, st.Latest)
		}
		if err := mig.Force(version); err != nil {
			return fmt.Errorf("forcing version %d: %w", version, err)
		}
		return nil
	})
}

// run opens a migration session, reads the schema status (refusing a dirty
// or newer schema when check is set), applies op and returns the status
// that follows.
func (m *Migrator) run(check bool, op func(*migrate.Migrate, SchemaStatus) error) (SchemaStatus, error) {
	mig, done, err := m.open()
	if err != nil {
		return SchemaStatus{}, err
	}
	defer done()
	st, err := status(mig)
	if err != nil {
		return st, err
	}
	if check {
		if err := st.Check(); err != nil {
			return st, err
		}
	}
	if err := op(mig, st); err != nil {
		return st, err
	}
	return status(mig)
}

func status(mig *migrate.Migrate) (SchemaStatus, error) {
	latest, err := LatestVersion()
	if err != nil {
		return SchemaStatus{}, err
	}
	v, dirty, err := mig.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return SchemaStatus{Latest: latest}, nil
	}
	if err != nil {
		return SchemaStatus{}, fmt.Errorf("reading schema version: %w", err)
	}
	return SchemaStatus{Version: v, Dirty: dirty, Latest: latest}, nil
}

// LatestVersion is the newest migration embedded in the binary.
func LatestVersion() (uint, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return 0, fmt.Errorf("reading embedded migrations: %w", err)
	}
	var latest uint64
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(num, 10, 32)
		if err != nil {
			continue
		}
		latest = max(latest, v)
	}
	return uint(latest), nil
}

// SchemaStatus reads the applied version through the pool, cheaply enough
// for a readiness probe.
func (s *Store) SchemaStatus(ctx context.Context) (SchemaStatus, error) {
	latest, err := LatestVersion()
	if err != nil {
		return SchemaStatus{}, err
	}
	st := SchemaStatus{Latest: latest}
	var (
		version int64
		dirty   bool
	)
	err = s.pool.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations LIMIT 1`).Scan(&version, &dirty)
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows), errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable:
		return st, nil
	case err != nil:
		return st, fmt.Errorf("reading schema version: %w", err)
	}
	st.Version, st.Dirty = uint(version), dirty
	return st, nil
}
