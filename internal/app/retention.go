package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// Retention timing. Pruning runs shortly after start and then hourly, in
// batches small enough to keep each delete transaction short.
const (
	retentionEvery       = time.Hour
	retentionBatch       = 5000
	webhookDedupeWindow  = 7 * 24 * time.Hour
	retentionFirstDelay  = time.Minute
	retentionBatchPauses = 100 * time.Millisecond
)

// pruneLoop deletes history older than RETENTION until ctx is done.
func (a *App) pruneLoop(ctx context.Context) error {
	timer := time.NewTimer(retentionFirstDelay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		a.prune(ctx, retentionBatch)
		timer.Reset(retentionEvery)
	}
}

// prune deletes, batch rows of each kind at a time, everything older than
// RETENTION that the rules no longer need, and logs what went.
func (a *App) prune(ctx context.Context, batch int) {
	now := a.now()
	var total store.Pruned
	for ctx.Err() == nil {
		p, err := a.store.PruneBatch(ctx, now.Add(-a.cfg.Retention), now.Add(-webhookDedupeWindow), batch)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("pruning history failed", slog.Any("error", err))
			}
			return
		}
		total.Observations += p.Observations
		total.Outbox += p.Outbox
		total.Alerts += p.Alerts
		total.WebhookEvents += p.WebhookEvents
		if max(p.Observations, p.Outbox, p.Alerts, p.WebhookEvents) < int64(batch) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(retentionBatchPauses):
		}
	}
	if total.Total() > 0 {
		a.log.Info("pruned history", slog.Int64("observations", total.Observations), slog.Int64("outbox", total.Outbox),
			slog.Int64("alerts", total.Alerts), slog.Int64("webhook_events", total.WebhookEvents))
	}
}
