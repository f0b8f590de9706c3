// Package poller runs the polling cycle: on every tick of the POLL_SCHEDULE
// cron spec it claims the studies that are due, fetches their progress from
// Prolific with bounded concurrency, and records each poll (observation,
// rule transitions, outbox messages) through the store in one transaction.
package poller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/replica"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// Prolific is the part of the Prolific API the poller reads.
type Prolific interface {
	Study(ctx context.Context, studyID string) (prolific.Study, error)
	Progress(ctx context.Context, studyID string) (prolific.Progress, error)
}

// Store is the part of the store the poller writes through.
type Store interface {
	ClaimDueStudies(ctx context.Context, owner string, dueBy, now time.Time, lease time.Duration, limit int) ([]store.ClaimedStudy, error)
	RecordPoll(ctx context.Context, rec store.PollRecord, eval store.Evaluator) (store.PollResult, error)
	RecordPollFailure(ctx context.Context, studyID, owner string, at, nextPollAt time.Time, reason string) (bool, error)
	ReleaseStudy(ctx context.Context, studyID, owner string) error
}

// Observer hears about every poll and cycle, for metrics and logs.
type Observer interface {
	PollDone(outcome Outcome, latency time.Duration, res store.PollResult)
	CycleDone(stats CycleStats)
}

// Outcome classifies a poll for metrics and logs.
type Outcome string

// Poll outcomes.
const (
	OutcomeOK          Outcome = "ok"
	OutcomeRateLimited Outcome = "rate_limited"
	OutcomeServerError Outcome = "server_error"
	OutcomeAuthError   Outcome = "auth_error"
	OutcomeNotFound    Outcome = "not_found"
	OutcomeMalformed   Outcome = "malformed"
	OutcomeNetwork     Outcome = "network_error"
	OutcomeOther       Outcome = "error"
	// OutcomeStoreError: the fetch worked but the database did not take the poll.
	OutcomeStoreError Outcome = "store_error"
)

// Defaults for Config fields left zero.
const (
	DefaultSchedule          = "@every 5m"
	DefaultConcurrency       = 8
	DefaultStatusRefresh     = 15 * time.Minute
	DefaultCompletedInterval = time.Hour
	DefaultMaxBackoff        = 30 * time.Minute
	DefaultShutdownGrace     = 20 * time.Second
	// DefaultLease covers a claimed batch waiting for a free slot plus two
	// requests at the Prolific client's default timeout, with room to spare.
	DefaultLease = 5 * time.Minute
)

// Config configures a Poller. Zero fields take the defaults above.
type Config struct {
	// Schedule is a robfig/cron spec: five fields or a descriptor like "@every 1m".
	Schedule string
	// Concurrency is the number of polls in flight at once.
	Concurrency int
	// Settings are the worker-wide rule thresholds (STALL_AFTER, POLL_FAILURES_BEFORE_ALERT).
	Settings rules.Settings
	// StatusRefresh is how old a study's status may get before a poll reads it again.
	StatusRefresh time.Duration
	// CompletedInterval is how often a COMPLETED study is still polled.
	CompletedInterval time.Duration
	// MaxBackoff caps the delay after repeated failures.
	MaxBackoff time.Duration
	// Lease is how long a claim holds a study against other replicas.
	Lease time.Duration
	// ShutdownGrace bounds how long in-flight polls may finish after shutdown starts.
	ShutdownGrace time.Duration
	// Owner names this replica in leases; a random name is made when empty.
	Owner string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives poll and cycle logs; slog.Default when nil.
	Logger *slog.Logger
	// Observer hears about polls and cycles; nil ignores them.
	Observer Observer
	// Queued is called after a poll queued outbox messages, to wake the dispatcher.
	Queued func()
	// Destination, when set, sends every transition to that one outbox
	// destination instead of to each watching channel (incoming-webhook mode).
	Destination string
}

// Poller polls due studies on a schedule. Create it with New.
type Poller struct {
	cfg      Config
	schedule cron.Schedule
	prolific Prolific
	store    Store
	log      *slog.Logger
	kick     chan struct{}

	// hard is cancelled ShutdownGrace after shutdown starts; in-flight polls use it.
	hard       context.Context
	cancelHard context.CancelFunc
	stopOnce   sync.Once

	// unreleased holds studies this poller still leases although no poll
	// of them is in flight: their poll could not be recorded and the lease
	// not handed back, because the database was unreachable. Without
	// releasing them, each would wait out its whole Lease after the
	// database returns.
	unreleasedMu sync.Mutex
	unreleased   map[string]struct{}
}

// New validates cfg and returns a Poller.
func New(cfg Config, p Prolific, s Store) (*Poller, error) {
	cfg.Schedule = cmp.Or(cfg.Schedule, DefaultSchedule)
	schedule, err := cron.ParseStandard(cfg.Schedule)
	if err != nil {
		return nil, fmt.Errorf("parsing poll schedule %q: %w", cfg.Schedule, err)
	}
	// A spec that never fires (February 30th) has no next tick: Start
	// would poll in a tight loop.
	if schedule.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("poll schedule %q never fires", cfg.Schedule)
	}
	cfg.Concurrency = cmp.Or(cfg.Concurrency, DefaultConcurrency)
	if cfg.Concurrency < 1 {
		return nil, fmt.Errorf("poll concurrency must be at least 1, got %d", cfg.Concurrency)
	}
	cfg.Settings = cfg.Settings.WithDefaults()
	cfg.StatusRefresh = cmp.Or(cfg.StatusRefresh, DefaultStatusRefresh)
	cfg.CompletedInterval = cmp.Or(cfg.CompletedInterval, DefaultCompletedInterval)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff)
	cfg.Lease = cmp.Or(cfg.Lease, DefaultLease)
	cfg.ShutdownGrace = cmp.Or(cfg.ShutdownGrace, DefaultShutdownGrace)
	cfg.Owner = cmp.Or(cfg.Owner, replica.Name())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Queued == nil {
		cfg.Queued = func() {}
	}
	hard, cancel := context.WithCancel(context.Background())
	return &Poller{
		cfg:        cfg,
		schedule:   schedule,
		prolific:   p,
		store:      s,
		log:        cfg.Logger,
		kick:       make(chan struct{}, 1),
		hard:       hard,
		cancelHard: cancel,
		unreleased: make(map[string]struct{}),
	}, nil
}

// Trigger asks for a cycle as soon as the current one (if any) ends, for a
// new watch or a webhook. It never blocks; triggers coalesce.
func (p *Poller) Trigger() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Start runs a cycle at once and then on every tick of the schedule, until
// ctx is done. Cycles never overlap: ticks that pass while a cycle runs are
// skipped. When ctx ends, no new study is claimed and in-flight polls get
// ShutdownGrace to finish before they are cancelled; Start returns after them.
func (p *Poller) Start(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		time.AfterFunc(p.cfg.ShutdownGrace, p.cancelHard)
	})
	defer stop()
	defer p.cancelHard()

	p.RunOnce(ctx, p.cfg.Now())
	next := p.schedule.Next(p.cfg.Now())
	timer := time.NewTimer(next.Sub(p.cfg.Now()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			p.RunOnce(ctx, next)
			// Ticks that passed during a slow cycle are skipped.
			next = p.schedule.Next(p.cfg.Now())
			timer.Reset(next.Sub(p.cfg.Now()))
		case <-p.kick:
			// A triggered cycle leaves the schedule alone, so frequent
			// webhooks or watches never postpone everyone else's polls,
			// and its polls are due again at the schedule's next tick.
			p.runCycle(ctx, p.cfg.Now(), next)
		}
	}
}

// CycleStats summarises one cycle.
type CycleStats struct {
	Tick     time.Time
	Finished time.Time
	Polled   int
	Failed   int
	Err      error
}

// RunOnce polls every study due at tick, claiming them in batches of
// Concurrency so that a claimed study waits at most one batch for a slot,
// well inside its lease. Polled studies are due again at the schedule's
// next tick after tick. It returns when all claimed polls are recorded.
func (p *Poller) RunOnce(ctx context.Context, tick time.Time) CycleStats {
	return p.runCycle(ctx, tick, p.schedule.Next(tick))
}

// runCycle is RunOnce with the time polled studies are due again. Until its
// last poll is recorded, or the next tick comes, it claims again whenever a
// poll ends or a Trigger arrives (a webhook, a new watch), so such a study
// is polled within a second even while the cycle's last slow polls run,
// and even when the webhook landed during the study's own poll (RecordPoll
// then leaves it requested).
func (p *Poller) runCycle(ctx context.Context, tick, next time.Time) CycleStats {
	stats := CycleStats{Tick: tick}
	// A triggered cycle that starts once the schedule's pending tick has
	// passed must not date its polls at or before its own tick: they would
	// be due again at once, and every poll that ends would claim them anew.
	if !next.After(tick) {
		next = p.schedule.Next(tick)
	}
	// Cycles never overlap, so no poll of this poller is in flight here.
	p.releaseLeftovers()
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		sem      = make(chan struct{}, p.cfg.Concurrency)
		inFlight atomic.Int64
		// finished wakes the loop below when a poll ends; it needs no more
		// than one pending signal, since the loop re-reads inFlight.
		finished = make(chan struct{}, 1)
		// claiming stops once the next tick has come: Start runs that
		// tick, and a study re-requested during each of its polls cannot
		// hold the cycle open and every other study off its schedule.
		claiming = true
	)
	for ctx.Err() == nil {
		if !claiming {
			// Only the polls in flight remain; a trigger is left for Start.
			if inFlight.Load() == 0 {
				break
			}
			select {
			case <-finished:
			case <-ctx.Done():
			}
			continue
		}
		// Read before claiming: a poll that ends after this read, leaving
		// a webhook's request on its study, also leaves a token in
		// finished, so the loop claims once more instead of ending.
		idle := inFlight.Load() == 0
		claimed, err := p.store.ClaimDueStudies(ctx, p.cfg.Owner, tick, p.cfg.Now(), p.cfg.Lease, p.cfg.Concurrency)
		if err != nil {
			if ctx.Err() == nil {
				stats.Err = err
				p.log.Warn("claiming due studies failed", slog.Any("error", err))
			}
			break
		}
		for _, study := range claimed {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				p.release(study.ID)
				continue
			}
			inFlight.Add(1)
			wg.Go(func() {
				defer func() {
					<-sem
					inFlight.Add(-1)
					select {
					case finished <- struct{}{}:
					default:
					}
				}()
				ok := p.pollOne(study, next)
				mu.Lock()
				stats.Polled++
				if !ok {
					stats.Failed++
				}
				mu.Unlock()
			})
		}
		// A full batch means more may be due: claim on at once. Otherwise
		// the cycle's own work is all claimed, and only a poll ending or
		// a trigger can make more due before the last poll is recorded.
		if len(claimed) == p.cfg.Concurrency {
			continue
		}
		if idle && len(claimed) == 0 {
			break
		}
		if !p.cfg.Now().Before(next) {
			claiming = false
			continue
		}
		select {
		case <-p.kick:
		case <-finished:
		case <-ctx.Done():
		}
	}
	wg.Wait()
	stats.Finished = p.cfg.Now()
	if p.cfg.Observer != nil {
		p.cfg.Observer.CycleDone(stats)
	}
	return stats
}

// recordFailure notes on the study that its poll could not be stored and
// releases it until nextTick; when even that fails (the database is away),
// the release is retried by the next cycle.
func (p *Poller) recordFailure(studyID string, at, nextTick time.Time, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.store.RecordPollFailure(ctx, studyID, p.cfg.Owner, at, nextTick, "storing the poll failed: "+cause.Error()); err != nil {
		p.unreleasedMu.Lock()
		p.unreleased[studyID] = struct{}{}
		p.unreleasedMu.Unlock()
	}
}

// release hands an unpolled study back so another replica may take it at
// once. When the database cannot be told, the next cycle tries again.
func (p *Poller) release(studyID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.store.ReleaseStudy(ctx, studyID, p.cfg.Owner); err != nil {
		p.log.Warn("releasing study failed", slog.String("study_id", studyID), slog.Any("error", err))
		p.unreleasedMu.Lock()
		p.unreleased[studyID] = struct{}{}
		p.unreleasedMu.Unlock()
	}
}

// releaseLeftovers retries the releases that failed earlier. It must run
// while no poll of this poller is in flight, so that it never hands back a
// study being polled.
func (p *Poller) releaseLeftovers() {
	p.unreleasedMu.Lock()
	ids := make([]string, 0, len(p.unreleased))
	for id := range p.unreleased {
		ids = append(ids, id)
	}
	p.unreleasedMu.Unlock()
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.store.ReleaseStudy(ctx, id, p.cfg.Owner)
		cancel()
		if err != nil {
			// The database is still away; the claim that follows fails too.
			return
		}
		p.unreleasedMu.Lock()
		delete(p.unreleased, id)
		p.unreleasedMu.Unlock()
	}
}

// fetched is what one poll learned from Prolific.
type fetched struct {
	study         prolific.Study
	statusChecked bool
	progress      prolific.Progress
	err           error
}

// fetch reads the study's status when it is stale, then its progress.
func (p *Poller) fetch(ctx context.Context, c store.ClaimedStudy) fetched {
	var f fetched
	if c.StatusCheckedAt.IsZero() || p.cfg.Now().Sub(c.StatusCheckedAt) >= p.cfg.StatusRefresh {
		f.study, f.err = p.prolific.Study(ctx, c.ID)
		if f.err != nil {
			return f
		}
		f.statusChecked = true
	}
	f.progress, f.err = p.prolific.Progress(ctx, c.ID)
	return f
}

// pollOne fetches and records one claimed study. It reports whether the poll succeeded.
func (p *Poller) pollOne(c store.ClaimedStudy, nextTick time.Time) bool {
	started := p.cfg.Now()
	f := p.fetch(p.hard, c)
	if p.hard.Err() != nil {
		// Shutdown cut the fetch short: it says nothing about the study.
		p.release(c.ID)
		return false
	}
	at := p.cfg.Now()
	poll := rules.Poll{Status: f.study.Status}
	rec := store.PollRecord{StudyID: c.ID, Owner: p.cfg.Owner, At: at, Name: f.study.Name, StatusChecked: f.statusChecked,
		Destination: p.cfg.Destination}
	outcome := OutcomeOK
	if f.err != nil {
		outcome = classify(f.err)
		poll.Failure = prolific.Classify(f.err)
		poll.Error = f.err.Error()
		if poll.Failure == rules.FailureAuth {
			poll.Error = "Prolific refused the worker's API token; whoever runs taskflow-watch should check PROLIFIC_TOKEN (" + poll.Error + ")"
		}
		rec.Error = poll.Error
	} else {
		poll.URLs = f.progress.URLs
		rec.OK = true
	}
	res, err := p.store.RecordPoll(p.hard, rec, func(prev store.PollState) store.Evaluation {
		settings := p.cfg.Settings
		// The shortest threshold among the watches applies, the worker
		// default counting for watches without an override.
		if prev.StallAfter > 0 && (!prev.DefaultStallAfter || prev.StallAfter < settings.StallAfter) {
			settings.StallAfter = prev.StallAfter
		}
		next, transitions := rules.Evaluate(prev.State, poll, settings, at)
		nextPoll, note := p.nextPoll(next, f.err, nextTick, at)
		return store.Evaluation{State: next, Transitions: transitions, NextPollAt: nextPoll, Note: note}
	})
	latency := p.cfg.Now().Sub(started)
	log := p.log.With(slog.String("study_id", c.ID))
	switch {
	case err != nil:
		// Noting the failure on the study shows it in `studies list`, and
		// handing the lease back lets the next tick poll the study again
		// instead of waiting out the lease. If the poll was committed after
		// all, the lease is already gone and this changes nothing.
		log.Error("recording poll failed", slog.Any("error", err))
		p.recordFailure(c.ID, at, nextTick, err)
		if p.cfg.Observer != nil {
			p.cfg.Observer.PollDone(OutcomeStoreError, latency, store.PollResult{})
		}
		return false
	case res.Lost:
		log.Warn("poll not recorded: the study was unwatched meanwhile, or its lease passed to another replica")
		return false
	}
	log.Debug("polled study", slog.String("outcome", string(outcome)), slog.String("latency", latency.Round(time.Millisecond).String()),
		slog.Bool("observation_written", res.ObservationWritten), slog.Any("poll_error", errOrNil(f.err)))
	for _, tr := range res.Transitions {
		log.Info("alert transition", slog.String("rule", string(tr.Rule)), slog.String("state", string(tr.State)),
			slog.String("external_url", tr.ExternalURL))
	}
	if res.Queued > 0 {
		p.cfg.Queued()
	}
	if p.cfg.Observer != nil {
		p.cfg.Observer.PollDone(outcome, latency, res)
	}
	return f.err == nil
}

func errOrNil(err error) any {
	if err == nil {
		return nil
	}
	return err.Error()
}

// nextPoll decides when the study is due again and why, if unusually late.
// A healthy study is due at the next tick. A failing one backs off
// exponentially in whole schedule periods (capped at MaxBackoff) and never
// before a Retry-After; a completed one is polled only every CompletedInterval.
func (p *Poller) nextPoll(next rules.StudyState, fetchErr error, nextTick, now time.Time) (time.Time, string) {
	if fetchErr != nil {
		period := max(nextTick.Sub(now), time.Second)
		backoff := period
		for i := 1; i < next.ConsecutiveFailures && backoff < p.cfg.MaxBackoff; i++ {
			backoff *= 2
		}
		backoff = min(backoff, max(p.cfg.MaxBackoff, period))
		// Retry-After is honoured up to MaxBackoff: a server asking for a
		// day (or a year) must not silently end the watch.
		if ra := min(prolific.RetryAfter(fetchErr), p.cfg.MaxBackoff); ra > backoff {
			backoff = ra
		}
		at := later(nextTick, now.Add(backoff))
		if at.After(nextTick) {
			polls := "polls"
			if next.ConsecutiveFailures == 1 {
				polls = "poll"
			}
			return at, fmt.Sprintf("backing off after %d failed %s until %s", next.ConsecutiveFailures, polls, at.UTC().Format(time.RFC3339))
		}
		return at, ""
	}
	if next.Status == prolific.StatusCompleted {
		return later(nextTick, now.Add(p.cfg.CompletedInterval)),
			"study is COMPLETED: polled every " + textviz.Duration(p.cfg.CompletedInterval)
	}
	return nextTick, ""
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// classify names the outcome of a failed fetch.
func classify(err error) Outcome {
	switch {
	case errors.Is(err, prolific.ErrRateLimited):
		return OutcomeRateLimited
	case errors.Is(err, prolific.ErrServer):
		return OutcomeServerError
	case errors.Is(err, prolific.ErrUnauthorized):
		return OutcomeAuthError
	case errors.Is(err, prolific.ErrNotFound):
		return OutcomeNotFound
	case errors.Is(err, prolific.ErrMalformed):
		return OutcomeMalformed
	case errors.Is(err, prolific.ErrTransport):
		return OutcomeNetwork
	}
	return OutcomeOther
}
