// Package prolifichook receives Prolific's webhooks (POST
// /webhooks/prolific). A delivery only makes the study due for a poll: the
// poll itself, through the usual claim in Postgres, fetches and evaluates
// the data. So the handler answers fast, never calls Prolific, and a forged
// or replayed delivery can at worst cause an early poll.
package prolifichook

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/httpx"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultMaxBodyBytes bounds a delivery; Prolific's are a few hundred bytes.
	DefaultMaxBodyBytes int64 = 64 << 10
	// DefaultMaxSkew is how far a delivery's timestamp may be from now.
	DefaultMaxSkew = 5 * time.Minute
	// DefaultStoreTimeout bounds the database work of one delivery, so a
	// hung database turns into a 503 that Prolific retries.
	DefaultStoreTimeout = 5 * time.Second
)

// Store is the part of the database the handler uses.
type Store interface {
	// PollSoon makes a watched study due now (recording status when not
	// "") and reports whether it is watched.
	PollSoon(ctx context.Context, studyID, status string, now time.Time) (bool, error)
	// PollSoonOnce does the same and records eventID in one transaction,
	// reporting a duplicate without changing anything.
	PollSoonOnce(ctx context.Context, eventID, studyID, status string, now time.Time) (store.WebhookOutcome, error)
}

// Poller starts a poll of due studies without waiting for it.
type Poller interface {
	Trigger()
}

// Config configures a Handler. Secret and Store are required.
type Config struct {
	// Secret verifies deliveries (PROLIFIC_WEBHOOK_SECRET).
	Secret []byte
	Store  Store
	// Poller is triggered after a study was made due; nil leaves the poll
	// to the next cron tick.
	Poller Poller
	// MaxBodyBytes bounds a delivery; larger ones get 413.
	MaxBodyBytes int64
	// MaxSkew is the replay window of the signature timestamp.
	MaxSkew time.Duration
	// StoreTimeout bounds the database work of one delivery.
	StoreTimeout time.Duration
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
	// Logger receives one line per delivery; nil discards.
	Logger *slog.Logger
}

// Handler serves POST /webhooks/prolific. It is safe for concurrent use.
type Handler struct {
	secret       []byte
	store        Store
	poller       Poller
	maxBody      int64
	maxSkew      time.Duration
	storeTimeout time.Duration
	now          func() time.Time
	log          *slog.Logger
}

// New validates cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if len(cfg.Secret) == 0 {
		return nil, errors.New("prolifichook: Secret is required (PROLIFIC_WEBHOOK_SECRET)")
	}
	if cfg.Store == nil {
		return nil, errors.New("prolifichook: Store is required")
	}
	if cfg.MaxBodyBytes < 0 || cfg.MaxSkew < 0 || cfg.StoreTimeout < 0 {
		return nil, errors.New("prolifichook: limits must not be negative")
	}
	h := &Handler{
		secret:       slices.Clone(cfg.Secret),
		store:        cfg.Store,
		poller:       cfg.Poller,
		maxBody:      cmp.Or(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		maxSkew:      cmp.Or(cfg.MaxSkew, DefaultMaxSkew),
		storeTimeout: cmp.Or(cfg.StoreTimeout, DefaultStoreTimeout),
		now:          cfg.Now,
		log:          cfg.Logger,
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	return h, nil
}

// ServeHTTP verifies a delivery before reading it (401 otherwise), then makes
// the study it names due for a poll. Replies: 200 when handled or
// deliberately ignored (duplicate, unwatched study, unknown event type), 400
// for a malformed body, 413 for an oversized one, 503 when the database
// failed, so that Prolific retries and the retry is not taken for a duplicate.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok, tooLarge := httpx.ReadPost(w, r, h.maxBody)
	if tooLarge {
		h.log.Warn("prolific webhook refused: body too large", slog.Int64("limit_bytes", h.maxBody))
	}
	if !ok {
		return
	}
	now := h.now()
	err := prolific.VerifyWebhook(h.secret, r.Header.Get(prolific.HeaderWebhookTimestamp),
		r.Header.Get(prolific.HeaderWebhookSignature), body, now, h.maxSkew)
	if err != nil {
		h.log.Warn("prolific webhook refused", slog.String("reason", err.Error()))
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	event, err := prolific.ParseWebhookEvent(body)
	if err != nil {
		h.log.Warn("prolific webhook malformed", slog.String("error", err.Error()))
		http.Error(w, "malformed event", http.StatusBadRequest)
		return
	}
	eventID := r.Header.Get(prolific.HeaderWebhookEventID)
	if len(eventID) > maxEventIDBytes {
		h.log.Warn("prolific webhook malformed: X-Event-ID too long", slog.Int("bytes", len(eventID)))
		http.Error(w, "X-Event-ID too long", http.StatusBadRequest)
		return
	}
	log := h.log.With(slog.String("event_type", event.EventType), slog.String("event_id", eventID))

	var status string
	switch event.EventType {
	case prolific.EventStudyProgressChange:
	case prolific.EventStudyStatusChange:
		status = event.Status
		if !plausibleStatus(status) {
			log.Warn("prolific webhook malformed: status is not a study status", slog.Int("bytes", len(status)))
			http.Error(w, "status is not a study status", http.StatusBadRequest)
			return
		}
	default:
		log.Info("prolific webhook ignored: event type not handled")
		w.WriteHeader(http.StatusOK)
		return
	}
	if !prolific.IsStudyID(event.ResourceID) {
		log.Warn("prolific webhook malformed: resource_id is not a study id")
		http.Error(w, "resource_id is not a study id", http.StatusBadRequest)
		return
	}
	log = log.With(slog.String("study_id", event.ResourceID))

	ctx, cancel := context.WithTimeout(r.Context(), h.storeTimeout)
	defer cancel()
	var watched bool
	if eventID == "" {
		log.Debug("prolific webhook has no event id; it cannot be deduplicated")
		watched, err = h.store.PollSoon(ctx, event.ResourceID, status, now)
	} else {
		var out store.WebhookOutcome
		out, err = h.store.PollSoonOnce(ctx, eventID, event.ResourceID, status, now)
		if err == nil && out.Duplicate {
			log.Info("prolific webhook ignored: duplicate delivery")
			w.WriteHeader(http.StatusOK)
			return
		}
		watched = out.Watched
	}
	if err != nil {
		log.Error("prolific webhook failed: database", slog.String("error", err.Error()))
		http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	if !watched {
		log.Info("prolific webhook ignored: study not watched")
		w.WriteHeader(http.StatusOK)
		return
	}
	if h.poller != nil {
		h.poller.Trigger()
	}
	log.Info("prolific webhook: study due for a poll", slog.String("status", status))
	w.WriteHeader(http.StatusOK)
}

// maxEventIDBytes bounds X-Event-ID. Prolific's ids are short; a longer one
// is not a delivery we can dedupe, and answering 400 stops its retries.
const maxEventIDBytes = 256

// plausibleStatus accepts what a Prolific status looks like (for example
// "ACTIVE" or "AWAITING REVIEW", and "" when absent): short upper-case words.
// Unknown statuses are data, but a status is only shown until the poll
// re-reads it from Prolific, so anything else is refused rather than stored.
func plausibleStatus(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if (r < 'A' || r > 'Z') && r != ' ' && r != '_' {
			return false
		}
	}
	return true
}
