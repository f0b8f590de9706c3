package slackcmd

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/httpx"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultStallAfter is the worker-wide stall threshold shown when a
	// watch has no override (STALL_AFTER's default).
	DefaultStallAfter = 6 * time.Hour
	// DefaultAckTimeout is how long a command may work before the handler
	// answers "checking…" and delivers the result through response_url:
	// Slack shows an error when the answer takes more than 3 seconds.
	DefaultAckTimeout = 2500 * time.Millisecond
	// DefaultCheckTimeout bounds the whole Prolific check of a watch,
	// including the part that runs after the first answer.
	DefaultCheckTimeout = 30 * time.Second
	// DefaultMaxBodyBytes bounds a slash command request; Slack's are a
	// few hundred bytes.
	DefaultMaxBodyBytes int64 = 64 << 10
	// DefaultResponseTimeout bounds one POST to a response_url.
	DefaultResponseTimeout = 10 * time.Second
	// DefaultCommandName is shown in help when Slack does not say which
	// command was typed.
	DefaultCommandName = "/taskflow"
)

// Prolific is what the handler needs from the Prolific API client.
type Prolific interface {
	// Study returns the study's name and status; an error matching
	// prolific.ErrNotFound means there is no such study.
	Study(ctx context.Context, studyID string) (prolific.Study, error)
	// Progress returns per-URL allocation; an error matching
	// prolific.ErrNotFound means the study is not a Taskflow study.
	Progress(ctx context.Context, studyID string) (prolific.Progress, error)
}

// Store is the part of the database the commands use.
type Store interface {
	AddWatch(ctx context.Context, info store.StudyInfo, w store.Watch, now time.Time) (created bool, err error)
	RemoveWatch(ctx context.Context, studyID, channelID string) error
	Studies(ctx context.Context, channelID string) ([]store.Study, error)
	GetStudy(ctx context.Context, id string) (store.Study, error)
	History(ctx context.Context, studyID string, since time.Time) ([]store.Observation, error)
}

// Poller starts a poll of due studies without waiting for it, so a new
// watch shows up in the history at once instead of at the next cron tick.
type Poller interface {
	Trigger()
}

// Config configures a Handler. Prolific and Store are required; zero
// fields take the defaults above.
type Config struct {
	// SigningSecret verifies requests to ServeHTTP (SLACK_SIGNING_SECRET).
	// Without it every HTTP request is refused; Socket Mode does not need it.
	SigningSecret []byte
	// AllowedTeams lists the Slack team ids allowed to use the commands
	// (SLACK_ALLOWED_TEAMS); empty allows every verified request.
	AllowedTeams []string
	Prolific     Prolific
	Store        Store
	// Poller is triggered after a new watch; nil skips that.
	Poller Poller
	// DefaultStallAfter is the threshold of watches without an override.
	DefaultStallAfter time.Duration
	// AckTimeout is how long a watch may check with Prolific before the
	// first answer is sent; the rest goes to the response_url.
	AckTimeout time.Duration
	// CheckTimeout bounds a watch's whole Prolific check and store write.
	CheckTimeout time.Duration
	// MaxBodyBytes bounds a request body; larger requests get 413.
	MaxBodyBytes int64
	// ResponseClient posts late answers to response_url; nil uses a client
	// with DefaultResponseTimeout.
	ResponseClient *http.Client
	// AllowResponseURL decides which response_url a late answer may be
	// posted to. nil uses AllowSlackResponseURL, which accepts only
	// https://*.slack.com; tests and fake Slack servers inject
	// AllowAnyResponseURL or their own check.
	AllowResponseURL func(*url.URL) bool
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
	// Logger receives one line per command; nil discards.
	Logger *slog.Logger
}

// Handler answers slash commands. It is an http.Handler for
// POST /slack/commands and, through Execute, the Socket Mode handler too.
// It is safe for concurrent use.
type Handler struct {
	secret       []byte
	allowedTeams []string
	prolific     Prolific
	store        Store
	poller       Poller
	stallAfter   time.Duration
	ackTimeout   time.Duration
	checkTimeout time.Duration
	maxBody      int64
	client       *http.Client
	allowURL     func(*url.URL) bool
	now          func() time.Time
	log          *slog.Logger

	// pending counts late answers still being worked on or delivered.
	// closing, set by Wait under pendingMu, stops new ones from starting,
	// so that no Add races the Wait of a shutting-down worker.
	pendingMu sync.Mutex
	closing   bool
	pending   sync.WaitGroup
}

// New validates cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Prolific == nil {
		return nil, errors.New("slackcmd: Prolific is required")
	}
	if cfg.Store == nil {
		return nil, errors.New("slackcmd: Store is required")
	}
	for _, d := range []time.Duration{cfg.DefaultStallAfter, cfg.AckTimeout, cfg.CheckTimeout} {
		if d < 0 {
			return nil, errors.New("slackcmd: durations must not be negative")
		}
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, errors.New("slackcmd: MaxBodyBytes must not be negative")
	}
	var teams []string
	for _, t := range cfg.AllowedTeams {
		if t = strings.TrimSpace(t); t != "" {
			teams = append(teams, t)
		}
	}
	h := &Handler{
		secret:       slices.Clone(cfg.SigningSecret),
		allowedTeams: teams,
		prolific:     cfg.Prolific,
		store:        cfg.Store,
		poller:       cfg.Poller,
		stallAfter:   cmp.Or(cfg.DefaultStallAfter, DefaultStallAfter),
		ackTimeout:   cmp.Or(cfg.AckTimeout, DefaultAckTimeout),
		checkTimeout: cmp.Or(cfg.CheckTimeout, DefaultCheckTimeout),
		maxBody:      cmp.Or(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		client:       cfg.ResponseClient,
		allowURL:     cfg.AllowResponseURL,
		now:          cfg.Now,
		log:          cfg.Logger,
	}
	if h.client == nil {
		h.client = &http.Client{Timeout: DefaultResponseTimeout}
	}
	if h.allowURL == nil {
		h.allowURL = AllowSlackResponseURL
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	return h, nil
}

// AllowSlackResponseURL accepts only https URLs on slack.com or one of its
// subdomains (hooks.slack.com), without credentials. It is the default
// because a response_url is where the answer, study names included, goes.
func AllowSlackResponseURL(u *url.URL) bool {
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	return u.Scheme == "https" && u.User == nil &&
		(host == "slack.com" || strings.HasSuffix(host, ".slack.com"))
}

// AllowAnyResponseURL accepts any http or https URL. It is meant for tests
// and a local fake Slack, never for a worker reachable from the internet.
func AllowAnyResponseURL(u *url.URL) bool {
	return (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}

// Reply is an ephemeral slash command answer, as returned in the HTTP
// response, acknowledged over Socket Mode, or posted to a response_url.
type Reply struct {
	ResponseType string `json:"response_type"`
	// Text is the notification and fallback text.
	Text   string        `json:"text"`
	Blocks []slack.Block `json:"blocks,omitempty"`
}

// ServeHTTP handles POST /slack/commands: it bounds and reads the body,
// verifies Slack's signature before looking at anything else (401 and no
// effect otherwise), then answers the command as JSON.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok, tooLarge := httpx.ReadPost(w, r, h.maxBody)
	if tooLarge {
		h.log.Warn("slack command refused: body too large", slog.Int64("limit_bytes", h.maxBody))
	}
	if !ok {
		return
	}
	if err := VerifySignature(h.secret, r.Header, body, h.now()); err != nil {
		h.log.Warn("slack command refused", slog.String("reason", err.Error()))
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		http.Error(w, "malformed form body", http.StatusBadRequest)
		return
	}
	reply := h.Execute(r.Context(), slack.SlashCommand{
		TeamID:      form.Get("team_id"),
		ChannelID:   form.Get("channel_id"),
		UserID:      form.Get("user_id"),
		Command:     form.Get("command"),
		Text:        form.Get("text"),
		ResponseURL: form.Get("response_url"),
	})
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(reply); err != nil {
		h.log.Warn("writing slack command reply failed", slog.String("error", err.Error()))
	}
}

// Execute runs one slash command and returns the answer within AckTimeout
// plus the time of a database read. Both transports call it. A watch whose
// Prolific check takes longer answers "checking…" and posts the result to
// sc.ResponseURL when it is ready.
func (h *Handler) Execute(ctx context.Context, sc slack.SlashCommand) Reply {
	log := h.log.With(slog.String("team_id", sc.TeamID), slog.String("channel_id", sc.ChannelID),
		slog.String("user_id", sc.UserID))
	if !h.teamAllowed(sc.TeamID) {
		log.Warn("slack command refused: team not allowed")
		return textReply("This Slack workspace is not allowed to use taskflow-watch. " +
			"Ask the person who runs it to add team `" + escape(sc.TeamID) + "` to SLACK_ALLOWED_TEAMS.")
	}
	if !store.ValidChannelID(sc.ChannelID) {
		log.Warn("slack command refused: no usable channel id")
		return textReply("I can't tell which channel this command came from, so I can't answer it.")
	}
	name := commandName(sc.Command)
	cmd, err := ParseCommand(sc.Text)
	if err != nil {
		log.Info("slack command not understood", slog.String("error", err.Error()))
		return textReply(err.Error() + "\nType `" + name + " help` to see what I understand.")
	}
	log = log.With(slog.String("verb", string(cmd.Verb)))
	if cmd.StudyID != "" {
		log = log.With(slog.String("study_id", cmd.StudyID))
	}
	log.Info("slack command")
	switch cmd.Verb {
	case VerbWatch:
		return h.watch(ctx, log, sc, cmd)
	case VerbUnwatch:
		return h.unwatch(ctx, log, sc, cmd, name)
	case VerbList:
		return h.list(ctx, log, sc, name)
	case VerbStatus:
		return h.status(ctx, log, sc, cmd, name)
	default:
		return helpReply(name, cmd.NotUnderstood, h.stallAfter)
	}
}

// Wait blocks until every late answer has been delivered or ctx is done,
// so a shutting-down worker does not cut a watch off halfway. Commands that
// arrive from then on (a request the HTTP server is still draining, a
// Socket Mode event) are told to try again instead of starting work.
func (h *Handler) Wait(ctx context.Context) error {
	h.pendingMu.Lock()
	h.closing = true
	h.pendingMu.Unlock()
	done := make(chan struct{})
	go func() {
		h.pending.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for late slack answers: %w", ctx.Err())
	}
}

func (h *Handler) teamAllowed(teamID string) bool {
	return len(h.allowedTeams) == 0 || slices.Contains(h.allowedTeams, teamID)
}

// commandName is the slash command as typed, for help texts.
func commandName(c string) string {
	c = strings.TrimSpace(c)
	if c == "" || !strings.HasPrefix(c, "/") || len(c) > 32 {
		return DefaultCommandName
	}
	return escape(c)
}

// respondLater runs work in the background and returns its reply if it is
// ready within AckTimeout. Otherwise it returns waiting, and the reply is
// posted to responseURL once ready.
func (h *Handler) respondLater(ctx context.Context, log *slog.Logger, responseURL string, waiting Reply, work func(context.Context) Reply) Reply {
	ready := make(chan Reply)
	late := make(chan struct{})
	h.pendingMu.Lock()
	if h.closing {
		h.pendingMu.Unlock()
		return textReply("taskflow-watch is restarting; nothing was changed. Please try again in a minute.")
	}
	h.pending.Add(1)
	h.pendingMu.Unlock()
	workCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.checkTimeout)
	go func() {
		defer h.pending.Done()
		defer cancel()
		reply := work(workCtx)
		select {
		case ready <- reply:
		case <-late:
			h.deliver(workCtx, log, responseURL, reply)
		}
	}()
	timer := time.NewTimer(h.ackTimeout)
	defer timer.Stop()
	select {
	case reply := <-ready:
		return reply
	case <-timer.C:
	case <-ctx.Done():
	}
	close(late)
	log.Info("slack command answer will follow through response_url")
	return waiting
}

// deliver posts a late answer to the command's response_url. Failures are
// logged without the URL, which is a capability to post into the channel.
func (h *Handler) deliver(ctx context.Context, log *slog.Logger, responseURL string, reply Reply) {
	if err := h.post(ctx, responseURL, reply); err != nil {
		log.Error("delivering late slack answer failed", slog.String("error", err.Error()))
		return
	}
	log.Info("late slack answer delivered")
}

func (h *Handler) post(ctx context.Context, responseURL string, reply Reply) error {
	if responseURL == "" {
		return errors.New("the command has no response_url")
	}
	u, err := url.Parse(responseURL)
	if err != nil {
		return errors.New("response_url is not a URL")
	}
	if !h.allowURL(u) {
		return errors.New("response_url is not an allowed Slack URL")
	}
	body, err := json.Marshal(reply)
	if err != nil {
		return fmt.Errorf("encoding answer: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return errors.New("building response_url request failed")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		// *url.Error repeats the URL; keep only what went wrong.
		if urlErr, ok := errors.AsType[*url.Error](err); ok {
			err = urlErr.Err
		}
		return fmt.Errorf("posting to response_url: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("posting to response_url: HTTP %d", resp.StatusCode)
	}
	return nil
}
