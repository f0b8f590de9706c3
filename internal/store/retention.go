package store

import (
	"context"
	"fmt"
	"time"
)

// Pruned counts the rows one PruneBatch removed.
type Pruned struct {
	Observations  int64
	Outbox        int64
	Alerts        int64
	WebhookEvents int64
}

// Total is the number of rows removed.
func (p Pruned) Total() int64 { return p.Observations + p.Outbox + p.Alerts + p.WebhookEvents }

// PruneBatch deletes up to limit rows of each kind that are older than
// before and that nothing still needs:
//   - observations, except each study's latest (the rules' previous observation);
//   - delivered or failed outbox messages, except those of alerts still open
//     (a resolution replies in its firing message's thread);
//   - resolved alerts with no outbox message left;
//   - webhook event ids older than webhookBefore (the dedupe window).
//
// Callers repeat it until it removes fewer than limit of every kind, so a
// large backlog is pruned in short transactions that never block polling.
func (s *Store) PruneBatch(ctx context.Context, before, webhookBefore time.Time, limit int) (Pruned, error) {
	var p Pruned
	tag, err := s.pool.Exec(ctx, `
		DELETE FROM observations WHERE id IN (
			SELECT o.id FROM observations o
			WHERE o.observed_at < $1
			  AND EXISTS (SELECT 1 FROM observations n
			              WHERE n.study_id = o.study_id AND (n.observed_at, n.id) > (o.observed_at, o.id))
			LIMIT $2)`, before, limit)
	if err != nil {
		return p, fmt.Errorf("pruning observations: %w", err)
	}
	p.Observations = tag.RowsAffected()
	tag, err = s.pool.Exec(ctx, `
		DELETE FROM outbox WHERE id IN (
			SELECT o.id FROM outbox o
			LEFT JOIN alerts a ON a.id = o.alert_id
			WHERE o.created_at < $1 AND (o.sent_at IS NOT NULL OR o.failed_at IS NOT NULL)
			  AND (a.id IS NULL OR a.resolved_at IS NOT NULL)
			LIMIT $2)`, before, limit)
	if err != nil {
		return p, fmt.Errorf("pruning outbox: %w", err)
	}
	p.Outbox = tag.RowsAffected()
	tag, err = s.pool.Exec(ctx, `
		DELETE FROM alerts WHERE id IN (
			SELECT a.id FROM alerts a
			WHERE a.resolved_at < $1
			  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = a.id)
			LIMIT $2)`, before, limit)
	if err != nil {
		return p, fmt.Errorf("pruning alerts: %w", err)
	}
	p.Alerts = tag.RowsAffected()
	tag, err = s.pool.Exec(ctx, `
		DELETE FROM webhook_events WHERE event_id IN (
			SELECT event_id FROM webhook_events WHERE received_at < $1 LIMIT $2)`, webhookBefore, limit)
	if err != nil {
		return p, fmt.Errorf("pruning webhook events: %w", err)
	}
	p.WebhookEvents = tag.RowsAffected()
	return p, nil
}
