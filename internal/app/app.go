// Package app wires the worker together: store, Prolific client, poller,
// notification dispatcher and the inbound HTTP server. cmd/worker parses the
// environment and runs an App; end-to-end tests start one on a :0 port.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/metrics"
	"github.com/taskflow-watch/taskflow-watch/internal/notify"
	"github.com/taskflow-watch/taskflow-watch/internal/poller"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolifichook"
	"github.com/taskflow-watch/taskflow-watch/internal/replica"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/slackcmd"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// shutdownTimeout bounds how long the HTTP server drains on shutdown.
const shutdownTimeout = 10 * time.Second

// Options are the process-level dependencies that are not configuration.
type Options struct {
	// Stdout receives notifications when no Slack variables are set.
	Stdout io.Writer
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// ShutdownGrace bounds how long in-flight polls may finish after shutdown starts.
	ShutdownGrace time.Duration
	// ProlificTimeout bounds one Prolific API request; zero means
	// prolific.DefaultTimeout. Fault tests shorten it so that a hanging API
	// times out within seconds instead of fifteen.
	ProlificTimeout time.Duration
	// AllowResponseURL decides where late slash-command answers may be
	// posted; nil allows only https://*.slack.com. Tests allow their fakes.
	AllowResponseURL func(*url.URL) bool
}

// App is a running worker.
type App struct {
	cfg        config.Config
	log        *slog.Logger
	now        func() time.Time
	store      *store.Store
	prolific   *prolific.Client
	poller     *poller.Poller
	dispatcher *notify.Dispatcher
	metrics    *metrics.Metrics
	commands   *slackcmd.Handler
	hooks      *prolifichook.Handler
	listener   net.Listener
	server     *http.Server
}

// New checks the Prolific settings and binds the HTTP listener, then applies
// pending migrations and builds every component. It fails before anything
// runs when a setting is unusable, the schema is dirty or newer than this
// build, or the database cannot be reached.
func New(ctx context.Context, cfg config.Config, opts Options) (*App, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger
	// Everything that can be checked without the database is checked
	// first, so a bad setting stops the worker before it migrates anything.
	client, err := prolific.New(prolific.Config{BaseURL: cfg.ProlificAPIURL, Token: cfg.ProlificToken, Timeout: opts.ProlificTimeout, Now: opts.Now})
	if err != nil {
		return nil, fmt.Errorf("PROLIFIC_API_URL / PROLIFIC_TOKEN: %w", err)
	}
	listener, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("HTTP_ADDR: %w", err)
	}
	a, err := build(ctx, cfg, opts, client)
	if err != nil {
		listener.Close()
		return nil, err
	}
	a.listener = listener
	a.server = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return a, nil
}

// build applies pending migrations and assembles the components.
func build(ctx context.Context, cfg config.Config, opts Options, client *prolific.Client) (*App, error) {
	log := opts.Logger
	st, err := store.NewMigrator(cfg.DatabaseURL).Up()
	if err != nil {
		return nil, fmt.Errorf("applying migrations: %w", err)
	}
	log.Info("database schema is current", slog.Int("version", int(st.Version)))
	db, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	owner := replica.Name()
	a := &App{cfg: cfg, log: log, now: opts.Now, store: db, prolific: client}
	a.metrics = metrics.New(db, opts.Now, log)
	a.dispatcher = notify.NewDispatcher(notify.DispatcherConfig{Owner: owner, Now: opts.Now, Logger: log, Observer: a.metrics},
		db, newSender(cfg, opts.Stdout))
	a.poller, err = poller.New(poller.Config{
		Schedule:      cfg.PollSchedule,
		Concurrency:   cfg.PollConcurrency,
		Settings:      rules.Settings{StallAfter: cfg.StallAfter, FailuresBeforeAlert: cfg.PollFailuresBeforeAlert},
		ShutdownGrace: opts.ShutdownGrace,
		Owner:         owner,
		Now:           opts.Now,
		Logger:        log,
		Observer:      a.metrics,
		Queued:        a.dispatcher.Trigger,
		Destination:   destination(cfg),
	}, client, db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("POLL_SCHEDULE: %w", err)
	}
	if err := a.inbound(opts); err != nil {
		db.Close()
		return nil, err
	}
	return a, nil
}

// inbound builds the slash-command handler (for HTTP with
// SLACK_SIGNING_SECRET, or Socket Mode with SLACK_APP_TOKEN) and the
// Prolific webhook handler (with PROLIFIC_WEBHOOK_SECRET).
func (a *App) inbound(opts Options) error {
	var err error
	if a.cfg.SlackSigningSecret != "" || a.cfg.SlackAppToken != "" {
		a.commands, err = slackcmd.New(slackcmd.Config{
			SigningSecret:     []byte(a.cfg.SlackSigningSecret),
			AllowedTeams:      a.cfg.SlackAllowedTeams,
			Prolific:          a.prolific,
			Store:             a.store,
			Poller:            a.poller,
			DefaultStallAfter: a.cfg.StallAfter,
			AllowResponseURL:  opts.AllowResponseURL,
			Now:               a.now,
			Logger:            a.log,
		})
		if err != nil {
			return fmt.Errorf("slash commands: %w", err)
		}
	}
	if a.cfg.ProlificWebhookSecret != "" {
		a.hooks, err = prolifichook.New(prolifichook.Config{
			Secret: []byte(a.cfg.ProlificWebhookSecret),
			Store:  a.store,
			Poller: a.poller,
			Now:    a.now,
			Logger: a.log,
		})
		if err != nil {
			return fmt.Errorf("PROLIFIC_WEBHOOK_SECRET: %w", err)
		}
	}
	return nil
}

// destination is the single outbox destination of incoming-webhook mode,
// where every message lands in the webhook's one channel whoever watches:
// one message per transition, not one per watching channel.
func destination(cfg config.Config) string {
	if cfg.SlackMode() == "webhook" {
		return "incoming-webhook"
	}
	return ""
}

// newSender picks the notification transport from the Slack variables: a
// bot token, else an incoming webhook, else JSON lines on stdout.
func newSender(cfg config.Config, stdout io.Writer) notify.Sender {
	switch cfg.SlackMode() {
	case "bot":
		return notify.NewBotSender(cfg.SlackBotToken, cfg.SlackAPIURL, nil)
	case "webhook":
		return notify.NewWebhookSender(cfg.SlackWebhookURL, nil)
	}
	return notify.NewLogSender(stdout)
}

// Addr is the address the HTTP server listens on.
func (a *App) Addr() string { return a.listener.Addr().String() }

// Store exposes the store, for commands that share the App's connection.
func (a *App) Store() *store.Store { return a.store }

// Run serves until ctx is done, then shuts down: the HTTP server drains,
// no new study is claimed, in-flight polls finish within their grace, and
// the dispatcher records what it already sent. Run closes the store.
func (a *App) Run(ctx context.Context) error {
	defer a.store.Close()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.server.Serve(a.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		return a.server.Shutdown(shutdownCtx)
	})
	g.Go(func() error { return a.poller.Start(ctx) })
	g.Go(func() error { return a.dispatcher.Start(ctx) })
	g.Go(func() error { return a.pruneLoop(ctx) })
	if a.commands != nil && a.cfg.SlackAppToken != "" {
		g.Go(func() error {
			return slackcmd.RunSocketMode(ctx, a.cfg.SlackAppToken, a.cfg.SlackBotToken, a.cfg.SlackAPIURL, a.commands, a.log)
		})
	}
	if a.commands != nil {
		g.Go(func() error {
			// Late slash-command answers (sent to response_url) finish before exit.
			<-ctx.Done()
			waitCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
			defer cancel()
			if err := a.commands.Wait(waitCtx); err != nil {
				a.log.Warn("late slash-command answers still pending at shutdown", slog.Any("error", err))
			}
			return nil
		})
	}
	a.log.Info("worker started", slog.String("http_addr", a.Addr()), slog.String("poll_schedule", a.cfg.PollSchedule),
		slog.String("notifications", a.cfg.SlackMode()))
	err := g.Wait()
	a.log.Info("worker stopped")
	return err
}

func (a *App) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", a.ready)
	mux.Handle("GET /metrics", a.metrics.Handler())
	if a.commands != nil && a.cfg.SlackSigningSecret != "" {
		mux.Handle("POST /slack/commands", a.commands)
	} else {
		mux.Handle("POST /slack/commands", disabled("slash commands over HTTP are off: set SLACK_SIGNING_SECRET"))
	}
	if a.hooks != nil {
		mux.Handle("POST /webhooks/prolific", a.hooks)
	} else {
		mux.Handle("POST /webhooks/prolific", disabled("Prolific webhooks are off: set PROLIFIC_WEBHOOK_SECRET"))
	}
	return mux
}

// disabled answers 404 with the setting that would enable the route.
func disabled(reason string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, reason, http.StatusNotFound)
	})
}

// ready answers 200 only when the database answers and the schema is the
// one this build expects, so a load balancer or Kubernetes holds traffic
// from a replica that cannot do its work.
func (a *App) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := a.store.Ping(ctx); err != nil {
		a.log.Warn("readiness: database unreachable", slog.Any("error", err))
		http.Error(w, "database unreachable", http.StatusServiceUnavailable)
		return
	}
	st, err := a.store.SchemaStatus(ctx)
	if err != nil || !st.Current() {
		http.Error(w, fmt.Sprintf("schema not current (version %d, want %d, dirty %v)", st.Version, st.Latest, st.Dirty), http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}
