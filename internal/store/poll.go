package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// ClaimedStudy is a study leased to one poller until it records the poll.
type ClaimedStudy struct {
	ID     string
	Name   string
	Status string
	// StatusCheckedAt is when the status was last read from Prolific (zero if never).
	StatusCheckedAt time.Time
}

// ClaimDueStudies leases, until now+lease, up to limit watched studies that
// no live lease holds and that are due: first those a webhook asked to poll
// (PollSoon) by now, then those whose next poll time is at or before dueBy.
// Rows another replica is claiming at the same moment are skipped, so each
// due study goes to exactly one poller. Passing the cycle's tick as dueBy
// keeps a study polled during the cycle from being claimed again in the same
// cycle unless a webhook asks for it again; taking requested studies first
// lets a webhook's poll start within a second even in the middle of a long
// cycle, on whichever replica claims next.
func (s *Store) ClaimDueStudies(ctx context.Context, owner string, dueBy, now time.Time, lease time.Duration, limit int) ([]ClaimedStudy, error) {
	rows, err := s.pool.Query(ctx, `
		WITH requested AS (
			SELECT id FROM studies
			WHERE poll_requested AND next_poll_at <= $1
			  AND (lease_until IS NULL OR lease_until < $1)
			  AND EXISTS (SELECT 1 FROM watches w WHERE w.study_id = studies.id)
			ORDER BY next_poll_at, id
			LIMIT $4
			FOR UPDATE SKIP LOCKED
		), due AS (
			SELECT id FROM studies
			WHERE next_poll_at <= $5
			  AND (lease_until IS NULL OR lease_until < $1)
			  AND EXISTS (SELECT 1 FROM watches w WHERE w.study_id = studies.id)
			  AND id <> ALL (ARRAY(SELECT id FROM requested))
			ORDER BY next_poll_at, id
			LIMIT $4 - (SELECT count(*) FROM requested)
			FOR UPDATE SKIP LOCKED
		)
		UPDATE studies s SET lease_owner = $2, lease_until = $3, poll_requested = false, status_recheck = false
		WHERE s.id = ANY (ARRAY(SELECT id FROM requested UNION ALL SELECT id FROM due))
		RETURNING s.id, s.name, s.status, coalesce(s.status_checked_at, '-infinity')`,
		now, owner, now.Add(lease), limit, dueBy)
	if err != nil {
		return nil, fmt.Errorf("claiming due studies: %w", err)
	}
	claimed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ClaimedStudy, error) {
		var (
			c       ClaimedStudy
			checked pgtype.Timestamptz
		)
		err := row.Scan(&c.ID, &c.Name, &c.Status, &checked)
		if checked.Valid && checked.InfinityModifier == pgtype.Finite {
			c.StatusCheckedAt = checked.Time
		}
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("claiming due studies: %w", err)
	}
	return claimed, nil
}

// RecordPollFailure notes, outside any poll transaction, that owner's poll
// of a study could not be recorded, and hands the lease back. It keeps such
// a study from looking healthy in `studies list` while every poll of it
// fails to store. The study is not due again before nextPollAt (the next
// tick), so that a poll that cannot be stored is not fetched over and over
// within one cycle. It reports whether owner still held the lease.
func (s *Store) RecordPollFailure(ctx context.Context, studyID, owner string, at, nextPollAt time.Time, reason string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE studies SET last_polled_at = $3, last_poll_ok = false, last_error = $4,
		       next_poll_at = GREATEST(next_poll_at, $5), lease_owner = NULL, lease_until = NULL
		WHERE id = $1 AND lease_owner = $2`, studyID, owner, at, reason, nextPollAt)
	if err != nil {
		return false, fmt.Errorf("recording failed poll of study %s: %w", studyID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ReleaseStudy gives up owner's lease without recording a poll, so another
// poller may take the study at once (used when a poll is abandoned on shutdown).
func (s *Store) ReleaseStudy(ctx context.Context, studyID, owner string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE studies SET lease_owner = NULL, lease_until = NULL
		WHERE id = $1 AND lease_owner = $2`, studyID, owner)
	if err != nil {
		return fmt.Errorf("releasing study %s: %w", studyID, err)
	}
	return nil
}

// PollSoon makes a watched study due at now, for a webhook that says it
// changed. A non-empty status (from a status webhook) marks the stored
// status stale, so the poll reads the real one from Prolific and the rules
// see the change (a study becoming ACTIVE again restarts the stall clock);
// the webhook's own value is never stored, since webhooks may arrive out of
// order. It reports whether the study is watched. The poll itself still
// goes through ClaimDueStudies, so replicas never poll it twice. The
// request is also flagged, so that a poll already in flight, whose fetch
// may predate the change, leaves the study due and its status stale. A
// study whose polls are failing keeps its back-off (and any Retry-After):
// progress webhooks come with every allocation, and must not turn a rate
// limit into a request each.
func (s *Store) PollSoon(ctx context.Context, studyID, status string, now time.Time) (bool, error) {
	return schedulePoll(ctx, s.pool, studyID, status, now)
}

// execer is what pgx pools and transactions have in common for writes.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func schedulePoll(ctx context.Context, db execer, studyID, status string, now time.Time) (bool, error) {
	tag, err := db.Exec(ctx, `
		UPDATE studies SET
		       next_poll_at = CASE WHEN consecutive_failures > 0 THEN next_poll_at ELSE LEAST(next_poll_at, $2) END,
		       poll_requested = consecutive_failures = 0,
		       status_checked_at = CASE WHEN $3 <> '' THEN NULL ELSE status_checked_at END,
		       status_recheck = status_recheck OR $3 <> ''
		WHERE id = $1`, studyID, now, status)
	if err != nil {
		return false, fmt.Errorf("scheduling poll of study %s: %w", studyID, err)
	}
	return tag.RowsAffected() > 0, nil
}

// PollState is what the rules need from the database before evaluating a poll.
type PollState struct {
	// State is the rules state carried from the previous poll.
	State rules.StudyState
	// StallAfter is the shortest stall-after override among the study's
	// watches, 0 when none overrides the worker default.
	StallAfter time.Duration
	// DefaultStallAfter is true when some watch uses the worker default, which
	// then competes with StallAfter for the shortest threshold.
	DefaultStallAfter bool
}

// Evaluation is what the poller decides from the stored state.
type Evaluation struct {
	// State is the rules state to remember.
	State rules.StudyState
	// Transitions are stored and queued for every watching channel.
	Transitions []rules.Transition
	// NextPollAt is when the study becomes due again.
	NextPollAt time.Time
	// Note explains an unusual schedule (a completed study polled rarely, a back-off).
	Note string
}

// Evaluator turns the stored state into the next state, the transitions to
// notify and the next poll time. The store calls it inside the poll's
// transaction, so it must not do I/O.
type Evaluator func(PollState) Evaluation

// PollRecord is one finished poll of a claimed study.
type PollRecord struct {
	StudyID string
	Owner   string
	At      time.Time
	// Name is the study name Prolific returned ("" keeps the stored one).
	Name string
	// OK is true when the poll produced an observation.
	OK bool
	// Error describes a failed poll ("" when OK).
	Error string
	// StatusChecked is true when this poll read the study's status from Prolific.
	StatusChecked bool
	// Destination, when set, addresses each transition's outbox message to
	// this one destination instead of to every watching channel: an
	// incoming webhook reaches one channel whoever watches, and must hear
	// each alert once.
	Destination string
}

// PollResult says what RecordPoll wrote.
type PollResult struct {
	// ObservationWritten is true when progress differed from the previous observation.
	ObservationWritten bool
	// Transitions are the rule transitions stored (and queued for every watching channel).
	Transitions []rules.Transition
	// Queued is the number of outbox messages written.
	Queued int
	// Lost is true when the lease had passed to another poller, or the
	// study was unwatched during the poll, so nothing was written.
	Lost bool
}

// RecordPoll stores one poll in a single transaction: it locks the study,
// loads the previous state, runs eval, writes the observation when progress
// changed, opens and resolves alerts, queues one outbox message per
// transition and watching channel, and updates the study's poll outcome and
// schedule. Either all of it happens or none of it.
func (s *Store) RecordPoll(ctx context.Context, rec PollRecord, eval Evaluator) (PollResult, error) {
	var res PollResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var (
			prev        PollState
			leaseOwner  *string
			stallSince  *time.Time
			name        string
			stallAfterS int64
		)
		// One round trip reads everything the rules need; each part is an
		// index lookup, so the cost does not grow with the study's history.
		err := tx.QueryRow(ctx, `
			SELECT s.name, s.status, s.consecutive_failures, s.stall_since, s.lease_owner,
			       coalesce((SELECT min(stall_after_seconds) FROM watches w WHERE w.study_id = s.id), 0),
			       coalesce((SELECT bool_or(stall_after_seconds IS NULL) FROM watches w WHERE w.study_id = s.id), true),
			       (SELECT o.progress FROM observations o WHERE o.study_id = s.id
			        ORDER BY o.observed_at DESC, o.id DESC LIMIT 1),
			       (SELECT jsonb_agg(jsonb_build_object('rule', a.rule, 'external_url', a.external_url, 'since', a.fired_at)
			               ORDER BY a.rule, a.external_url)
			        FROM alerts a WHERE a.study_id = s.id AND a.resolved_at IS NULL)
			FROM studies s WHERE s.id = $1 FOR UPDATE OF s`, rec.StudyID).
			Scan(&name, &prev.State.Status, &prev.State.ConsecutiveFailures, &stallSince, &leaseOwner, &stallAfterS,
				&prev.DefaultStallAfter, &prev.State.URLs, &prev.State.Open)
		if errors.Is(err, pgx.ErrNoRows) {
			// The last watch was removed while the study was being polled.
			res.Lost = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("loading study state: %w", err)
		}
		if leaseOwner == nil || *leaseOwner != rec.Owner {
			res.Lost = true
			return nil
		}
		if stallSince != nil {
			prev.State.StallSince = *stallSince
		}
		prev.StallAfter = time.Duration(stallAfterS) * time.Second

		ev := eval(prev)
		next, transitions := ev.State, ev.Transitions
		name = cmp.Or(rec.Name, name)
		queued, err := writeTransitions(ctx, tx, rec.StudyID, name, rec.Destination, transitions)
		if err != nil {
			return err
		}

		// The remaining writes go in one pipelined round trip.
		writes := &pgx.Batch{}
		if rec.OK && !slices.Equal(prev.State.URLs, next.URLs) {
			if err := queueObservation(writes, rec.StudyID, rec.At, next.URLs); err != nil {
				return err
			}
			res.ObservationWritten = true
		}
		if len(transitions) == 0 && !res.ObservationWritten {
			// Only bookkeeping changed: losing it in a database crash costs
			// nothing, because the next poll recomputes the same state.
			writes.Queue(`SET LOCAL synchronous_commit = off`)
		}
		var nextStallSince *time.Time
		if !next.StallSince.IsZero() {
			nextStallSince = &next.StallSince
		}
		// A webhook that arrived during this poll keeps the study due and
		// requested, so the next claim takes it even mid-cycle, and, for a
		// status change, its status stale (see PollSoon).
		writes.Queue(`
			UPDATE studies SET name = $2, status = $3, consecutive_failures = $4, stall_since = $5,
			       last_polled_at = $6, last_poll_ok = $7, last_error = $8, poll_note = $9,
			       next_poll_at = CASE WHEN poll_requested THEN LEAST($10::timestamptz, $6::timestamptz) ELSE $10::timestamptz END,
			       lease_owner = NULL, lease_until = NULL,
			       status_checked_at = CASE WHEN status_recheck THEN NULL WHEN $11 THEN $6::timestamptz ELSE status_checked_at END,
			       status_recheck = false
			WHERE id = $1`,
			rec.StudyID, name, next.Status, next.ConsecutiveFailures, nextStallSince,
			rec.At, rec.OK, rec.Error, ev.Note, ev.NextPollAt, rec.StatusChecked)
		if err := tx.SendBatch(ctx, writes).Close(); err != nil {
			return fmt.Errorf("writing poll: %w", err)
		}
		res.Transitions, res.Queued = transitions, queued
		return nil
	})
	if err != nil {
		return PollResult{}, fmt.Errorf("recording poll of study %s: %w", rec.StudyID, err)
	}
	return res, nil
}

func queueObservation(b *pgx.Batch, studyID string, at time.Time, urls []rules.URLCounts) error {
	progress, err := json.Marshal(urls)
	if err != nil {
		return fmt.Errorf("encoding observation: %w", err)
	}
	total := 0
	for _, u := range urls {
		total += u.Allocated
	}
	b.Queue(`
		INSERT INTO observations (study_id, observed_at, progress, allocated_total)
		VALUES ($1, $2, $3, $4)`, studyID, at, progress, total)
	return nil
}

// OutboxPayload is the JSON stored with every outbox message: the transition
// with the study it belongs to, as the notifier renders it.
type OutboxPayload struct {
	StudyID    string           `json:"study_id"`
	StudyName  string           `json:"study_name"`
	Transition rules.Transition `json:"transition"`
}

// writeTransitions opens or resolves the alerts the transitions name and
// queues one outbox message per transition and watching channel, or per
// transition to destination when one is given.
func writeTransitions(ctx context.Context, tx pgx.Tx, studyID, studyName, destination string, transitions []rules.Transition) (int, error) {
	queued := 0
	for _, tr := range transitions {
		var alertID *int64
		switch tr.State {
		case rules.Firing:
			var id int64
			err := tx.QueryRow(ctx, `
				INSERT INTO alerts (study_id, rule, external_url, fired_at)
				VALUES ($1, $2, $3, $4) RETURNING id`,
				studyID, tr.Rule, tr.ExternalURL, tr.Since).Scan(&id)
			if err != nil {
				return 0, fmt.Errorf("opening %s alert: %w", tr.Rule, err)
			}
			alertID = &id
		case rules.Resolved:
			var id int64
			err := tx.QueryRow(ctx, `
				UPDATE alerts SET resolved_at = $4
				WHERE study_id = $1 AND rule = $2 AND md5(external_url) = md5($3) AND external_url = $3
				  AND resolved_at IS NULL
				RETURNING id`,
				studyID, tr.Rule, tr.ExternalURL, tr.At).Scan(&id)
			if err != nil {
				return 0, fmt.Errorf("resolving %s alert: %w", tr.Rule, notFound(err))
			}
			alertID = &id
		}
		payload, err := json.Marshal(OutboxPayload{StudyID: studyID, StudyName: studyName, Transition: tr})
		if err != nil {
			return 0, fmt.Errorf("encoding outbox payload: %w", err)
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO outbox (study_id, alert_id, channel_id, state, payload, created_at, next_attempt_at)
			SELECT $1, $2::bigint, channel_id, $3::text, $4::jsonb, $5::timestamptz, $5::timestamptz
			FROM watches WHERE study_id = $1 AND $6::text = ''
			UNION ALL
			SELECT $1, $2::bigint, $6::text, $3::text, $4::jsonb, $5::timestamptz, $5::timestamptz WHERE $6::text <> ''`,
			studyID, alertID, tr.State, payload, tr.At, destination)
		if err != nil {
			return 0, fmt.Errorf("queueing %s notification: %w", tr.Rule, err)
		}
		queued += int(tag.RowsAffected())
	}
	return queued, nil
}

// Observation is one stored progress observation.
type Observation struct {
	ObservedAt     time.Time
	URLs           []rules.URLCounts
	AllocatedTotal int
}

// History returns the study's observations since the given time, oldest
// first, plus the last one before it (so a chart starts at the right level).
func (s *Store) History(ctx context.Context, studyID string, since time.Time) ([]Observation, error) {
	rows, err := s.pool.Query(ctx, `
		(SELECT observed_at, progress, allocated_total FROM observations
		 WHERE study_id = $1 AND observed_at < $2
		 ORDER BY observed_at DESC, id DESC LIMIT 1)
		UNION ALL
		(SELECT observed_at, progress, allocated_total FROM observations
		 WHERE study_id = $1 AND observed_at >= $2)
		ORDER BY observed_at`, studyID, since)
	if err != nil {
		return nil, fmt.Errorf("loading history of study %s: %w", studyID, err)
	}
	obs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Observation, error) {
		var o Observation
		err := row.Scan(&o.ObservedAt, &o.URLs, &o.AllocatedTotal)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("loading history of study %s: %w", studyID, err)
	}
	return obs, nil
}
