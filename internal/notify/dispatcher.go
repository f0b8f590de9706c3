package notify

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/replica"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// OutboxStore is the part of the store the dispatcher works through.
type OutboxStore interface {
	ClaimOutbox(ctx context.Context, owner string, now time.Time, lease, pace time.Duration, limit int) ([]store.OutboxMessage, error)
	MarkSent(ctx context.Context, id int64, owner, slackChannel, slackTS string, now time.Time) (bool, error)
	MarkRetry(ctx context.Context, id int64, owner string, next time.Time, reason string) error
	MarkFailed(ctx context.Context, id int64, owner string, now time.Time, reason string) error
	DelayChannel(ctx context.Context, channelID string, at time.Time) error
}

// DeliveryOutcome classifies one delivery attempt for metrics.
type DeliveryOutcome string

// Delivery outcomes.
const (
	DeliverySent   DeliveryOutcome = "sent"
	DeliveryRetry  DeliveryOutcome = "retry"
	DeliveryFailed DeliveryOutcome = "failed"
)

// DispatchObserver hears about every delivery attempt, for metrics.
type DispatchObserver interface {
	Delivered(outcome DeliveryOutcome, reason string)
}

// Dispatcher defaults.
const (
	DefaultPace        = time.Second
	DefaultLease       = 2 * time.Minute
	DefaultBatch       = 32
	DefaultMaxAttempts = 12
	DefaultMaxAge      = 24 * time.Hour
	DefaultBaseBackoff = 2 * time.Second
	DefaultMaxBackoff  = 5 * time.Minute
	DefaultInterval    = time.Second
)

// DispatcherConfig configures a Dispatcher. Zero fields take the defaults above.
type DispatcherConfig struct {
	// Pace is the least time between two messages to one channel (Slack allows about one per second).
	Pace time.Duration
	// Lease is how long a claim holds a message against other replicas; it
	// must exceed a send's timeout.
	Lease time.Duration
	// Batch is how many sends are in flight at once, each to a different channel.
	Batch int
	// MaxAttempts and MaxAge bound retries of one message: it is given up
	// once both are exceeded, so that a Slack outage of hours loses nothing
	// and a backlog found after a long downtime still gets its attempts.
	MaxAttempts int
	MaxAge      time.Duration
	// BaseBackoff and MaxBackoff bound the exponential delay between retries.
	BaseBackoff, MaxBackoff time.Duration
	// Interval is how often the outbox is checked when nothing wakes the dispatcher.
	Interval time.Duration
	// Owner names this replica in claims; a random name is made when empty.
	Owner    string
	Now      func() time.Time
	Logger   *slog.Logger
	Observer DispatchObserver
}

// Dispatcher delivers outbox messages: it claims due messages (one per
// channel at a time, paced), sends them, and records the outcome. Retryable
// failures come back later with exponential backoff (never sooner than a
// Retry-After); permanent ones are recorded with their reason and logged once.
type Dispatcher struct {
	cfg    DispatcherConfig
	store  OutboxStore
	sender Sender
	log    *slog.Logger
	kick   chan struct{}

	// claimFailing is set while claims fail, so an outage is logged once
	// rather than every Interval.
	claimFailing atomic.Bool
}

// NewDispatcher returns a Dispatcher sending through sender.
func NewDispatcher(cfg DispatcherConfig, s OutboxStore, sender Sender) *Dispatcher {
	cfg.Pace = cmp.Or(cfg.Pace, DefaultPace)
	cfg.Lease = cmp.Or(cfg.Lease, DefaultLease)
	cfg.Batch = cmp.Or(cfg.Batch, DefaultBatch)
	cfg.MaxAttempts = cmp.Or(cfg.MaxAttempts, DefaultMaxAttempts)
	cfg.MaxAge = cmp.Or(cfg.MaxAge, DefaultMaxAge)
	cfg.BaseBackoff = cmp.Or(cfg.BaseBackoff, DefaultBaseBackoff)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff)
	cfg.Interval = cmp.Or(cfg.Interval, DefaultInterval)
	cfg.Owner = cmp.Or(cfg.Owner, replica.Name())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Dispatcher{cfg: cfg, store: s, sender: sender, log: cfg.Logger, kick: make(chan struct{}, 1)}
}

// Trigger wakes the dispatcher, for a poll that just queued messages. It never blocks.
func (d *Dispatcher) Trigger() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Start delivers until ctx is done, checking the outbox every Interval and
// whenever triggered. Up to Batch channels are served at once, each send on
// its own: a slot freed by a finished send is refilled at once, so a channel
// whose send hangs until its timeout holds up only itself. A send in flight
// when ctx ends is allowed to finish, so that a delivered message is also
// recorded as delivered; Start returns after it.
func (d *Dispatcher) Start(ctx context.Context) error {
	var inFlight sync.WaitGroup
	defer inFlight.Wait()
	// done receives one token per finished send; it never blocks, since at
	// most Batch sends are in flight.
	done := make(chan struct{}, d.cfg.Batch)
	free := d.cfg.Batch
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		claimed := 0
		if free > 0 {
			for _, m := range d.claim(ctx, free) {
				claimed++
				free--
				inFlight.Go(func() {
					// A claimed message is finished even during shutdown: the
					// send is bounded by the sender's timeout.
					d.deliver(context.WithoutCancel(ctx), m)
					done <- struct{}{}
				})
			}
		}
		// After a claim, or while sends are in flight, a channel's next
		// message is due one Pace after its last claim: look again then
		// rather than at the next Interval.
		wait := d.cfg.Interval
		if claimed > 0 || free < d.cfg.Batch {
			wait = d.cfg.Pace
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-d.kick:
		case <-done:
			free++
		}
		for drained := false; !drained; {
			select {
			case <-done:
				free++
			default:
				drained = true
			}
		}
	}
}

// RunOnce delivers what is due now, waiting for every send, and returns how
// many messages were sent. Each claimed message belongs to a different
// channel, so they go out in parallel; a channel's next message waits for
// its pacing. Start serves the outbox continuously instead; RunOnce is one
// synchronous pass, for tests and tools.
func (d *Dispatcher) RunOnce(ctx context.Context) int {
	var sent atomic.Int64
	for ctx.Err() == nil {
		msgs := d.claim(ctx, d.cfg.Batch)
		if len(msgs) == 0 {
			break
		}
		var wg sync.WaitGroup
		for _, m := range msgs {
			wg.Go(func() {
				if d.deliver(context.WithoutCancel(ctx), m) {
					sent.Add(1)
				}
			})
		}
		wg.Wait()
	}
	return int(sent.Load())
}

// claim leases the due head messages of up to limit channels. A failing
// claim returns none and is logged once until claims work again.
func (d *Dispatcher) claim(ctx context.Context, limit int) []store.OutboxMessage {
	msgs, err := d.store.ClaimOutbox(ctx, d.cfg.Owner, d.cfg.Now(), d.cfg.Lease, d.cfg.Pace, limit)
	if err != nil {
		if ctx.Err() == nil && !d.claimFailing.Load() {
			d.log.Warn("claiming outbox failed; retrying every interval until the database answers", slog.Any("error", err))
		}
		d.claimFailing.Store(true)
		return nil
	}
	if d.claimFailing.Swap(false) {
		d.log.Info("claiming outbox works again")
	}
	return msgs
}

// deliver sends one message and records the outcome. It reports whether it was sent.
func (d *Dispatcher) deliver(ctx context.Context, m store.OutboxMessage) bool {
	alert := Alert{StudyID: m.Payload.StudyID, StudyName: m.Payload.StudyName, Transition: m.Payload.Transition}
	log := d.log.With(slog.Int64("outbox_id", m.ID), slog.String("study_id", alert.StudyID),
		slog.String("channel_id", m.ChannelID), slog.String("rule", string(alert.Transition.Rule)),
		slog.String("state", string(alert.Transition.State)))

	posted, err := d.send(ctx, m, alert, log)
	now := d.cfg.Now()
	if err == nil {
		ok, err := d.store.MarkSent(ctx, m.ID, d.cfg.Owner, posted.Channel, posted.TS, now)
		switch {
		case err != nil:
			// The claim expires and the message is sent again: a duplicate is
			// better than a lost alert.
			log.Error("recording delivery failed", slog.Any("error", err))
		case !ok:
			log.Warn("claim expired before the delivery was recorded; another replica may send it again")
		default:
			log.Info("notification delivered", slog.Int("attempt", m.Attempts))
		}
		d.observe(DeliverySent, "")
		return true
	}

	verdict := Classify(err)
	switch {
	case !verdict.Retryable:
		log.Warn("notification failed permanently", slog.String("reason", verdict.Reason))
		d.markFailed(ctx, m, now, verdict.Reason, log)
		d.observe(DeliveryFailed, verdict.Reason)
	case m.Attempts >= d.cfg.MaxAttempts && now.Sub(m.CreatedAt) >= d.cfg.MaxAge:
		reason := fmt.Sprintf("gave up after %d attempts over %s: %s", m.Attempts, textviz.Duration(now.Sub(m.CreatedAt)), verdict.Reason)
		log.Warn("notification failed permanently", slog.String("reason", reason))
		d.markFailed(ctx, m, now, reason, log)
		d.observe(DeliveryFailed, "attempts_exhausted")
	default:
		wait := max(d.backoff(m.Attempts), verdict.RetryAfter)
		if verdict.RetryAfter > 0 {
			if err := d.store.DelayChannel(ctx, m.ChannelID, now.Add(verdict.RetryAfter)); err != nil {
				log.Error("delaying channel failed", slog.Any("error", err))
			}
		}
		log.Info("notification will be retried", slog.String("reason", verdict.Reason),
			slog.Int("attempt", m.Attempts), slog.String("wait", wait.Round(time.Millisecond).String()))
		if err := d.store.MarkRetry(ctx, m.ID, d.cfg.Owner, now.Add(wait), verdict.Reason); err != nil {
			log.Error("scheduling retry failed", slog.Any("error", err))
		}
		d.observe(DeliveryRetry, verdict.Reason)
	}
	return false
}

func (d *Dispatcher) markFailed(ctx context.Context, m store.OutboxMessage, now time.Time, reason string, log *slog.Logger) {
	if err := d.store.MarkFailed(ctx, m.ID, d.cfg.Owner, now, reason); err != nil {
		log.Error("recording failure failed", slog.Any("error", err))
	}
}

// send posts the message. A resolution of an alert whose firing message is
// known replies in its thread and updates it to show the resolution; if the
// original is gone, the resolution is posted on its own.
func (d *Dispatcher) send(ctx context.Context, m store.OutboxMessage, alert Alert, log *slog.Logger) (Posted, error) {
	firing := m.Firing
	if alert.Transition.State != rules.Resolved || firing == nil || !d.sender.Threads() {
		return d.sender.Post(ctx, m.ChannelID, alert, "")
	}
	posted, err := d.sender.Post(ctx, firing.SlackChannel, alert, firing.SlackTS)
	if IsMessageGone(err) {
		log.Info("firing message is gone; posting the resolution on its own")
		return d.sender.Post(ctx, m.ChannelID, alert, "")
	}
	if err != nil {
		return posted, err
	}
	original := Alert{StudyID: firing.Payload.StudyID, StudyName: firing.Payload.StudyName, Transition: firing.Payload.Transition}
	if err := d.sender.Update(ctx, firing.SlackChannel, firing.SlackTS, original, alert); err != nil {
		// The resolution itself is delivered; a stale original is cosmetic.
		log.Warn("updating the firing message failed", slog.String("reason", Classify(err).Reason))
	}
	return posted, nil
}

// backoff is the exponential delay before attempt n+1, with jitter so that
// replicas retrying after one outage do not hit Slack in lockstep.
func (d *Dispatcher) backoff(attempts int) time.Duration {
	wait := d.cfg.BaseBackoff
	for i := 1; i < attempts && wait < d.cfg.MaxBackoff; i++ {
		wait *= 2
	}
	wait = min(wait, d.cfg.MaxBackoff)
	return wait/2 + rand.N(wait/2+1)
}

// observe reports a delivery attempt. The reason becomes a metric label,
// so free-form detail (addresses and ports of a network error, an
// unrecognised error's text) is cut to its kind to keep the series bounded;
// the full reason stays in the outbox row and the log.
func (d *Dispatcher) observe(outcome DeliveryOutcome, reason string) {
	if d.cfg.Observer == nil {
		return
	}
	if kind, _, found := strings.Cut(reason, ": "); found {
		reason = kind
	}
	d.cfg.Observer.Delivered(outcome, reason)
}
