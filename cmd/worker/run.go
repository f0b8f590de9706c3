package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

const usage = `usage: worker [command]

commands:
  serve                          poll, alert and serve HTTP (the default; applies migrations first)
  migrate up|version             apply pending migrations, or show the schema version
  migrate down --yes             revert the newest migration (deletes its tables and data)
  migrate force VERSION          mark VERSION as applied after repairing a failed migration by hand
  studies add <id|study URL> --channel C… [--stall-after 6h]
                                 watch a study (checked with Prolific first)
  studies remove <id> [--channel C…]
                                 stop watching (in one channel, or everywhere)
  studies list                   watched studies with status, last poll and last error
  webhooks subscribe --target-url https://… --workspace-id ID --secret-file PATH
                                 create a Prolific webhook secret (written to PATH)
                                 and confirmed subscriptions to both study events
  demo [--duration 2m]           run against the built-in Prolific simulator
  healthcheck                    exit 0 when the worker on HTTP_ADDR answers /healthz
  version                        print the build version

Configuration is read from the environment; see README.md.
`

// errUsage marks errors caused by how the command was called.
var errUsage = errors.New("usage")

// run is the whole program: main only adds signals and the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve", "healthcheck", "version":
		// These take no arguments: `serve --help` must not start a worker.
		if len(args) > 0 {
			if slices.Contains([]string{"-h", "-help", "--help", "help"}, args[0]) {
				fmt.Fprint(stdout, usage)
				return nil
			}
			return fmt.Errorf("%w: %s takes no arguments, got %q\n\n%s", errUsage, cmd, strings.Join(args, " "), usage)
		}
	}
	switch cmd {
	case "serve":
		return serve(ctx, getenv, stdout, stderr)
	case "migrate":
		return migrateCmd(args, getenv, stdout)
	case "studies":
		return studiesCmd(ctx, args, getenv, stdout)
	case "webhooks":
		return webhooksCmd(ctx, args, getenv, stdout)
	case "demo":
		return demo(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		return healthcheck(ctx, getenv, stdout)
	case "version":
		fmt.Fprintln(stdout, "taskflow-watch", version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q\n\n%s", errUsage, cmd, usage)
}

func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func serve(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(getenv, config.Need{Database: true, Prolific: true})
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	a, err := app.New(ctx, cfg, app.Options{Stdout: stdout, Logger: newLogger(cfg, stderr)})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func migrateCmd(args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := config.Load(getenv, config.Need{Database: true})
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	m := store.NewMigrator(cfg.DatabaseURL)
	var st store.SchemaStatus
	switch {
	case len(args) == 1 && args[0] == "up":
		st, err = m.Up()
	case len(args) >= 1 && args[0] == "down":
		if len(args) != 2 || args[1] != "--yes" {
			return fmt.Errorf("%w: migrate down reverts the newest migration and deletes the tables it created with "+
				"everything in them (at version 1: every study, watch, observation and alert); "+
				"back the database up, stop the workers, then run `worker migrate down --yes`", errUsage)
		}
		st, err = m.Down()
	case len(args) == 1 && args[0] == "version":
		st, err = m.Status()
	case len(args) == 2 && args[0] == "force":
		v, convErr := strconv.Atoi(args[1])
		if convErr != nil || v < 0 {
			return fmt.Errorf("%w: migrate force takes a version number, got %q", errUsage, args[1])
		}
		st, err = m.Force(v)
	default:
		return fmt.Errorf("%w: migrate up|down|version|force VERSION", errUsage)
	}
	if err != nil {
		return err
	}
	dirty := ""
	if st.Dirty {
		dirty = " (dirty)"
	}
	fmt.Fprintf(stdout, "schema version %d of %d%s\n", st.Version, st.Latest, dirty)
	return nil
}

func openStore(ctx context.Context, cfg config.Config) (*store.Store, error) {
	if _, err := store.NewMigrator(cfg.DatabaseURL).Up(); err != nil {
		return nil, fmt.Errorf("applying migrations: %w", err)
	}
	return store.Open(ctx, cfg.DatabaseURL)
}

func studiesCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: studies add|remove|list", errUsage)
	}
	sub, args := args[0], args[1:]
	need := config.Need{Database: true, Prolific: sub == "add"}
	cfg, err := config.Load(getenv, need)
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	switch sub {
	case "add":
		return studiesAdd(ctx, cfg, args, stdout)
	case "remove":
		return studiesRemove(ctx, cfg, args, stdout)
	case "list":
		if len(args) > 0 {
			return fmt.Errorf("%w: studies list takes no arguments", errUsage)
		}
		return studiesList(ctx, cfg, stdout)
	}
	return fmt.Errorf("%w: studies add|remove|list", errUsage)
}

// parseFlags parses flags that may come before or after the positional
// arguments, as operators type them either way. -h lists the flags.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	// The flag package keeps the last of a repeated flag; "--channel C1
	// --channel C2" would watch in C2 alone without a word.
	given := map[string]bool{}
	for _, a := range args {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || fs.Lookup(name) == nil {
			continue
		}
		if given[name] {
			return nil, fmt.Errorf("%w: %s: --%s given twice", errUsage, fs.Name(), name)
		}
		given[name] = true
	}
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			var defaults strings.Builder
			fs.SetOutput(&defaults)
			fs.PrintDefaults()
			return nil, fmt.Errorf("%w: %s: %w\n%s", errUsage, fs.Name(), err, defaults.String())
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func studiesAdd(ctx context.Context, cfg config.Config, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("studies add", flag.ContinueOnError)
	channel := fs.String("channel", "", "Slack channel id that receives the alerts (C…)")
	var stallAfter time.Duration
	fs.Func("stall-after", "no-progress threshold for this watch, like 12h, 90m or 2d (default STALL_AFTER)", func(v string) error {
		d, ok := textviz.ParseDuration(v)
		if !ok {
			return fmt.Errorf("not a duration like 12h, 90m or 2d: %q", v)
		}
		stallAfter = d
		return nil
	})
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: studies add <study id or Prolific study URL> --channel C… [--stall-after 6h]", errUsage)
	}
	if !store.ValidChannelID(*channel) {
		return fmt.Errorf("%w: studies add needs --channel with a Slack channel id (letters, digits, - or _; e.g. C0123456789)", errUsage)
	}
	if stallAfter != 0 && (stallAfter < rules.MinStallAfter || stallAfter > rules.MaxStallAfter) {
		return fmt.Errorf("%w: --stall-after must be between %s and %s", errUsage,
			textviz.Duration(rules.MinStallAfter), textviz.Duration(rules.MaxStallAfter))
	}
	id, err := prolific.ParseStudyRef(pos[0])
	if err != nil {
		return err
	}
	client, err := prolific.New(prolific.Config{BaseURL: cfg.ProlificAPIURL, Token: cfg.ProlificToken})
	if err != nil {
		return err
	}
	study, err := client.Study(ctx, id)
	if err != nil {
		return explainCheck(id, err, false)
	}
	progress, err := client.Progress(ctx, id)
	if err != nil {
		return explainCheck(id, err, true)
	}
	db, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	created, err := db.AddWatch(ctx, store.StudyInfo{ID: id, Name: study.Name, Status: study.Status},
		store.Watch{ChannelID: *channel, AddedBy: "cli", StallAfter: stallAfter}, time.Now())
	if err != nil {
		return err
	}
	verb := "now watching"
	if !created {
		verb = "already watching; settings updated for"
	}
	fmt.Fprintf(stdout, "%s study %s %q (%s) in channel %s\n", verb, id, study.Name, study.Status, *channel)
	for _, u := range progress.URLs {
		fmt.Fprintf(stdout, "  %s: %d allocated of %d (+%d screen-out capacity)\n", u.ExternalURL, u.Allocated, u.TotalAllocation, u.CapacityIncrements)
	}
	return nil
}

// explainCheck turns a failed Prolific check into a plain reason.
func explainCheck(id string, err error, progress bool) error {
	switch {
	case errors.Is(err, prolific.ErrNotFound) && progress:
		return fmt.Errorf("study %s is not a Taskflow study (Prolific has no access-details progress for it); nothing was stored", id)
	case errors.Is(err, prolific.ErrNotFound):
		return fmt.Errorf("study %s was not found on Prolific (check the id and that PROLIFIC_TOKEN's workspace can see it); nothing was stored", id)
	case errors.Is(err, prolific.ErrUnauthorized):
		return fmt.Errorf("Prolific refused PROLIFIC_TOKEN (401/403); nothing was stored: %w", err)
	}
	return fmt.Errorf("could not check study %s with Prolific; nothing was stored: %w", id, err)
}

func studiesRemove(ctx context.Context, cfg config.Config, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("studies remove", flag.ContinueOnError)
	channel := fs.String("channel", "", "stop only this channel's watch")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: studies remove <study id> [--channel C…]", errUsage)
	}
	id, err := prolific.ParseStudyRef(pos[0])
	if err != nil {
		return err
	}
	db, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	if *channel != "" {
		err = db.RemoveWatch(ctx, id, *channel)
	} else {
		err = db.RemoveStudy(ctx, id)
	}
	where := ""
	if *channel != "" {
		where = " in channel " + *channel
	}
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("study %s is not watched%s", id, where)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "stopped watching study %s%s\n", id, where)
	return nil
}

func studiesList(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	db, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	studies, err := db.Studies(ctx, "")
	if err != nil {
		return err
	}
	if len(studies) == 0 {
		fmt.Fprintln(stdout, "no studies are watched; add one with: worker studies add <id> --channel C…")
		return nil
	}
	return printStudies(stdout, studies, time.Now())
}

// printStudies writes one line per study: status, channels, last poll and
// its outcome, open alerts and any scheduling note.
func printStudies(w io.Writer, studies []store.Study, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STUDY\tNAME\tSTATUS\tCHANNELS\tLAST POLL\tRESULT\tOPEN ALERTS\tNOTE")
	for _, s := range studies {
		channels := make([]string, 0, len(s.Watches))
		for _, w := range s.Watches {
			channels = append(channels, w.ChannelID)
		}
		last, result := "never", "-"
		if !s.LastPolledAt.IsZero() {
			last = now.Sub(s.LastPolledAt).Round(time.Second).String() + " ago"
			result = "ok"
			if !s.LastPollOK {
				result = fmt.Sprintf("failed ×%d: %s", s.ConsecutiveFailures, oneLine(s.LastError, 80))
			}
		}
		alerts := make([]string, 0, len(s.OpenAlerts))
		for _, a := range s.OpenAlerts {
			alerts = append(alerts, string(a.Rule))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, oneLine(s.Name, 40), orDash(s.Status),
			strings.Join(channels, ","), last, result, orDash(strings.Join(alerts, ",")), orDash(s.PollNote))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
