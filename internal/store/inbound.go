package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// WebhookOutcome says what PollSoonOnce did with one webhook delivery.
type WebhookOutcome struct {
	// Duplicate is true when the event id had already been handled, in
	// which case nothing was changed.
	Duplicate bool
	// Watched is true when the study is watched and was made due.
	Watched bool
}

// PollSoonOnce is PollSoon for a webhook delivery that carries an event id:
// it records the id and makes the study due in one transaction. A retried
// delivery of a handled event changes nothing, and a delivery whose
// transaction fails leaves no record, so Prolific's retry is not mistaken
// for a duplicate. Concurrent deliveries of one event are serialised by the
// primary key: the second waits for the first and then sees a duplicate.
func (s *Store) PollSoonOnce(ctx context.Context, eventID, studyID, status string, now time.Time) (WebhookOutcome, error) {
	var out WebhookOutcome
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			INSERT INTO webhook_events (event_id, received_at) VALUES ($1, $2)
			ON CONFLICT (event_id) DO NOTHING`, eventID, now)
		if err != nil {
			return fmt.Errorf("recording webhook event: %w", err)
		}
		if tag.RowsAffected() == 0 {
			out.Duplicate = true
			return nil
		}
		out.Watched, err = schedulePoll(ctx, tx, studyID, status, now)
		return err
	})
	if err != nil {
		return WebhookOutcome{}, fmt.Errorf("handling webhook event for study %s: %w", studyID, err)
	}
	return out, nil
}
