// Package faults is the fault-injection suite: it runs the whole worker,
// in process or as the real cmd/worker binary, against fake Prolific and
// Slack APIs and a real Postgres, breaks one dependency at a time and checks
// what reached Slack (by message metadata) and that the worker stays alive.
//
// The suite proves that:
//
//   - a Prolific study whose API misbehaves (5xx, 429 with or without
//     Retry-After, a hanging reply, malformed or implausible bodies, 401)
//     raises only poll_failing, after POLL_FAILURES_BEFORE_ALERT failed polls
//     or at once for 401, never a false allocation or stall alert, while the
//     other studies keep polling and alerting normally;
//   - Slack faults (429 with Retry-After, 5xx, dropped connections, a
//     channel that does not exist) lose nothing, send nothing twice and
//     retry nothing forever;
//   - Postgres stopping and starting again is survived by the same running
//     worker, which reports itself unready meanwhile and delivers what
//     happens afterwards;
//   - a worker killed between committing a transition and sending it
//     delivers the message exactly once after a restart;
//   - three replicas on one database poll each study once per tick and
//     deliver every transition exactly once;
//   - SIGTERM during a poll cycle exits cleanly within the shutdown bound
//     and leaves nothing half-written that another replica could not take
//     over at once.
//
// The package has no code of its own: everything is in its tests, which
// need TEST_DATABASE_URL (or DATABASE_URL) like the store's, and the
// PostgreSQL server binaries (initdb, pg_ctl) for the Postgres restart test.
package faults
