package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"time"

	"github.com/robfig/cron/v3"
	"golang.org/x/sync/errgroup"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/simulator"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

const (
	demoToken        = "demo-token"
	demoSchemaPrefix = "taskflow_demo"
)

// demoSchema is what --schema may be: a plain identifier that needs no quoting.
var demoSchema = regexp.MustCompile(`^` + demoSchemaPrefix + `[a-z0-9_]*$`)

// demo runs the worker against the built-in Prolific simulator: four
// scripted studies that over-allocate, screen out, stall and complete. It
// uses a schema of its own (recreated each run) in DATABASE_URL's database,
// and prints alerts as JSON lines on stdout, or sends them to Slack when
// the Slack variables are set.
func demo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("demo", flag.ContinueOnError)
	duration := flags.Duration("duration", 0, "stop after this long (0: run until interrupted)")
	step := flags.Duration("step", 2*time.Second, "how often the simulated studies move")
	stallAfter := flags.Duration("stall-after", 20*time.Second, "no-progress threshold for the demo")
	schedule := flags.String("schedule", "@every 2s", "poll schedule for the demo")
	schema := flags.String("schema", demoSchemaPrefix, "Postgres schema the demo recreates and uses (must start with "+demoSchemaPrefix+")")
	channel := flags.String("channel", "demo", "Slack channel id the demo studies alert (with Slack variables set)")
	if rest, err := parseFlags(flags, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: demo takes only flags, got %q", errUsage, rest)
	}
	if _, err := cron.ParseStandard(*schedule); err != nil {
		return fmt.Errorf("%w: --schedule is not a cron spec (e.g. \"@every 2s\"): %w", errUsage, err)
	}
	// The demo drops and recreates its schema: never one the worker may be using.
	if !demoSchema.MatchString(*schema) {
		return fmt.Errorf("%w: --schema must start with %s and go on with lower-case letters, digits or _, since the demo drops and recreates it", errUsage, demoSchemaPrefix)
	}
	if *step <= 0 || *stallAfter <= 0 || *duration < 0 {
		return fmt.Errorf("%w: --step and --stall-after must be positive, and --duration not negative", errUsage)
	}
	cfg, err := config.Load(getenv, config.Need{Database: true})
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	release, err := store.LockSchema(ctx, cfg.DatabaseURL, *schema)
	if errors.Is(err, store.ErrSchemaInUse) {
		return fmt.Errorf("another demo is running with schema %s in this database; stop it, or give this one a schema of its own (--schema %s_2)", *schema, *schema)
	}
	if err != nil {
		return err
	}
	defer release()
	if cfg.DatabaseURL, err = store.PrepareSchema(ctx, cfg.DatabaseURL, *schema, true); err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	if getenv("LOG_LEVEL") == "" {
		logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}

	sim := prolifictest.New(demoToken)
	sim.Start()
	defer sim.Close()
	started := time.Now()
	scenario := simulator.New(sim, logger, func(event string) {
		fmt.Fprintf(stderr, "[%6s] %s\n", time.Since(started).Round(time.Second), event)
	})

	client, err := prolific.New(prolific.Config{BaseURL: sim.URL(), Token: demoToken})
	if err != nil {
		return err
	}
	// The simulator signs its status webhooks with a secret made through
	// the hooks API, exactly as `worker webhooks subscribe` does for Prolific.
	const workspace = "demo-workspace"
	if cfg.ProlificWebhookSecret, err = client.CreateWebhookSecret(ctx, workspace); err != nil {
		return fmt.Errorf("demo: creating webhook secret: %w", err)
	}
	cfg.ProlificToken, cfg.ProlificAPIURL = demoToken, sim.URL()
	cfg.PollSchedule, cfg.StallAfter = *schedule, *stallAfter
	if getenv("HTTP_ADDR") == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	worker, err := app.New(ctx, cfg, app.Options{Stdout: stdout, Logger: logger})
	if err != nil {
		return err
	}
	target := "http://" + worker.Addr() + "/webhooks/prolific"
	if _, err := client.Subscribe(ctx, prolific.Subscription{EventType: prolific.EventStudyStatusChange, TargetURL: target, WorkspaceID: workspace}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	now := time.Now()
	fmt.Fprintf(stderr, "taskflow-watch demo: polling %s, stall threshold %s, worker HTTP on %s\n", *schedule, *stallAfter, worker.Addr())
	for _, st := range simulator.Studies() {
		info, err := client.Study(ctx, st.ID)
		if err != nil {
			return fmt.Errorf("demo: reading simulated study: %w", err)
		}
		if _, err := worker.Store().AddWatch(ctx, store.StudyInfo{ID: st.ID, Name: info.Name, Status: info.Status},
			store.Watch{ChannelID: *channel, AddedBy: "demo"}, now); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "  watching %s  %s: %s\n", st.ID, st.Name, st.Story)
	}
	if cfg.SlackMode() == "stdout" {
		fmt.Fprintln(stderr, "alerts follow as JSON lines on stdout (Ctrl-C to stop):")
	} else {
		fmt.Fprintf(stderr, "alerts go to Slack channel %s (Ctrl-C to stop)\n", *channel)
	}

	db := worker.Store()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return worker.Run(gctx) })
	g.Go(func() error {
		scenario.Run(gctx, *step)
		return nil
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return err
	}
	// The worker closed its store; read the final state with a fresh one.
	summaryCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if db, err = store.Open(summaryCtx, cfg.DatabaseURL); err == nil {
		defer db.Close()
		var studies []store.Study
		if studies, err = db.Studies(summaryCtx, ""); err == nil {
			fmt.Fprintln(stderr, "\nwhere the demo studies ended up:")
			err = printStudies(stderr, studies, time.Now())
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "demo: reading the final state:", err)
	}
	fmt.Fprintln(stderr, "demo stopped")
	return nil
}
