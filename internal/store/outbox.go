package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// OutboxMessage is one queued notification claimed for delivery.
type OutboxMessage struct {
	ID        int64
	StudyID   string
	ChannelID string
	Payload   OutboxPayload
	// Attempts counts delivery attempts, this one included.
	Attempts  int
	CreatedAt time.Time
	// Firing is, for a resolution, the message that announced the alert in
	// this channel (nil when it was never delivered), so the resolution can
	// reply in its thread and update it.
	Firing *SentMessage
}

// SentMessage is a delivered outbox message as Slack identified it.
type SentMessage struct {
	SlackChannel string
	SlackTS      string
	Payload      OutboxPayload
}

// ClaimOutbox leases, until now+lease, the oldest undelivered message of up
// to limit channels whose pacing allows a message at now, and paces those
// channels to one message per pace. Only a channel's oldest undelivered
// message is ever claimed, so a channel hears its alerts in order even
// across retries, and one slow channel never holds up another.
func (s *Store) ClaimOutbox(ctx context.Context, owner string, now time.Time, lease, pace time.Duration, limit int) ([]OutboxMessage, error) {
	var claimed []OutboxMessage
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			WITH heads AS (
				SELECT DISTINCT ON (channel_id) id, channel_id, next_attempt_at, claimed_until
				FROM outbox
				WHERE sent_at IS NULL AND failed_at IS NULL
				ORDER BY channel_id, id
			), ready AS (
				SELECT h.id FROM heads h
				LEFT JOIN slack_channels c ON c.channel_id = h.channel_id
				WHERE h.next_attempt_at <= $1
				  AND (h.claimed_until IS NULL OR h.claimed_until < $1)
				  AND (c.next_send_at IS NULL OR c.next_send_at <= $1)
				ORDER BY h.id
				LIMIT $4
			), locked AS (
				-- The conditions are repeated on the locked row itself, so a row a
				-- concurrent replica claimed and committed meanwhile is re-checked
				-- and skipped rather than claimed twice.
				SELECT o.id FROM outbox o
				WHERE o.id IN (SELECT id FROM ready)
				  AND o.sent_at IS NULL AND o.failed_at IS NULL
				  AND (o.claimed_until IS NULL OR o.claimed_until < $1)
				FOR UPDATE SKIP LOCKED
			)
			UPDATE outbox o SET claim_owner = $2, claimed_until = $3, attempts = o.attempts + 1
			FROM locked WHERE o.id = locked.id
			RETURNING o.id, o.study_id, o.channel_id, o.payload, o.attempts, o.created_at, o.alert_id, o.state`,
			now, owner, now.Add(lease), limit)
		if err != nil {
			return fmt.Errorf("claiming outbox: %w", err)
		}
		type claimedRow struct {
			msg     OutboxMessage
			alertID *int64
			state   string
		}
		list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimedRow, error) {
			var c claimedRow
			err := row.Scan(&c.msg.ID, &c.msg.StudyID, &c.msg.ChannelID, &c.msg.Payload, &c.msg.Attempts,
				&c.msg.CreatedAt, &c.alertID, &c.state)
			return c, err
		})
		if err != nil {
			return fmt.Errorf("claiming outbox: %w", err)
		}
		for _, c := range list {
			if c.state == "resolved" && c.alertID != nil {
				if c.msg.Firing, err = firingMessage(ctx, tx, *c.alertID, c.msg.ChannelID); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `
				INSERT INTO slack_channels (channel_id, next_send_at) VALUES ($1, $2)
				ON CONFLICT (channel_id) DO UPDATE SET next_send_at = GREATEST(slack_channels.next_send_at, EXCLUDED.next_send_at)`,
				c.msg.ChannelID, now.Add(pace)); err != nil {
				return fmt.Errorf("pacing channel: %w", err)
			}
			claimed = append(claimed, c.msg)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return claimed, nil
}

func firingMessage(ctx context.Context, tx pgx.Tx, alertID int64, channelID string) (*SentMessage, error) {
	var m SentMessage
	err := tx.QueryRow(ctx, `
		SELECT slack_channel, slack_ts, payload FROM outbox
		WHERE alert_id = $1 AND channel_id = $2 AND state = 'firing' AND sent_at IS NOT NULL
		  AND slack_ts IS NOT NULL AND slack_ts <> ''
		ORDER BY id DESC LIMIT 1`, alertID, channelID).Scan(&m.SlackChannel, &m.SlackTS, &m.Payload)
	if err != nil {
		if err = notFound(err); err == ErrNotFound {
			return nil, nil
		}
		return nil, fmt.Errorf("loading firing message: %w", err)
	}
	return &m, nil
}

// MarkSent records a delivery and where Slack put the message. It reports
// false when owner no longer held the claim (the message may then have been
// delivered twice, which the caller logs).
func (s *Store) MarkSent(ctx context.Context, id int64, owner, slackChannel, slackTS string, now time.Time) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE outbox SET sent_at = $3, slack_channel = $4, slack_ts = $5, claim_owner = NULL, claimed_until = NULL, last_error = ''
		WHERE id = $1 AND claim_owner = $2 AND sent_at IS NULL`, id, owner, now, slackChannel, slackTS)
	if err != nil {
		return false, fmt.Errorf("marking outbox message %d sent: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// MarkRetry releases a claimed message for another attempt at next.
func (s *Store) MarkRetry(ctx context.Context, id int64, owner string, next time.Time, reason string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE outbox SET next_attempt_at = $3, last_error = $4, claim_owner = NULL, claimed_until = NULL
		WHERE id = $1 AND claim_owner = $2 AND sent_at IS NULL`, id, owner, next, reason)
	if err != nil {
		return fmt.Errorf("scheduling retry of outbox message %d: %w", id, err)
	}
	return nil
}

// MarkFailed gives up on a message for good, keeping the reason.
func (s *Store) MarkFailed(ctx context.Context, id int64, owner string, now time.Time, reason string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE outbox SET failed_at = $3, last_error = $4, claim_owner = NULL, claimed_until = NULL
		WHERE id = $1 AND claim_owner = $2 AND sent_at IS NULL`, id, owner, now, reason)
	if err != nil {
		return fmt.Errorf("marking outbox message %d failed: %w", id, err)
	}
	return nil
}

// DelayChannel holds every message to a channel until at, for a Slack
// rate limit (429 with Retry-After).
func (s *Store) DelayChannel(ctx context.Context, channelID string, at time.Time) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO slack_channels (channel_id, next_send_at) VALUES ($1, $2)
		ON CONFLICT (channel_id) DO UPDATE SET next_send_at = GREATEST(slack_channels.next_send_at, EXCLUDED.next_send_at)`,
		channelID, at)
	if err != nil {
		return fmt.Errorf("delaying channel %s: %w", channelID, err)
	}
	return nil
}

// OutboxStats describes the undelivered messages, for metrics.
type OutboxStats struct {
	Pending int
	// Oldest is the creation time of the oldest pending message (zero when none).
	Oldest time.Time
}

// OutboxStats counts pending messages (through the pending-rows index).
func (s *Store) OutboxStats(ctx context.Context) (OutboxStats, error) {
	var (
		st     OutboxStats
		oldest *time.Time
	)
	err := s.pool.QueryRow(ctx, `
		SELECT count(*), min(created_at) FROM outbox
		WHERE sent_at IS NULL AND failed_at IS NULL`).Scan(&st.Pending, &oldest)
	if err != nil {
		return st, fmt.Errorf("counting outbox: %w", err)
	}
	if oldest != nil {
		st.Oldest = *oldest
	}
	return st, nil
}
