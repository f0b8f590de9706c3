// Package migrations embeds the database schema as numbered golang-migrate
// files, so the worker binary carries the exact schema it was built for.
package migrations

import "embed"

// FS holds the NNNN_name.up.sql and NNNN_name.down.sql files.
//
//go:embed *.sql
var FS embed.FS
