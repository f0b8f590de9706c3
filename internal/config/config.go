// Package config reads the worker's environment variables (the fixed
// interface documented in README.md) once, validates all of them, and
// reports every problem at once, each naming its variable.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// Config is the validated configuration.
type Config struct {
	DatabaseURL             string
	ProlificToken           string
	ProlificAPIURL          string
	ProlificWebhookSecret   string
	SlackBotToken           string
	SlackAPIURL             string
	SlackSigningSecret      string
	SlackAppToken           string
	SlackWebhookURL         string
	SlackAllowedTeams       []string
	PollSchedule            string
	StallAfter              time.Duration
	PollFailuresBeforeAlert int
	PollConcurrency         int
	HTTPAddr                string
	Retention               time.Duration
	LogFormat               string
	LogLevel                slog.Level
}

// Defaults documented in README.md.
const (
	DefaultProlificAPIURL = "https://api.prolific.com"
	DefaultSlackAPIURL    = "https://slack.com/api/"
	DefaultPollSchedule   = "@every 5m"
	DefaultHTTPAddr       = ":8080"
)

// Need says which variables a command requires.
type Need struct {
	Database bool
	Prolific bool
}

// Load reads the variables through getenv. Every missing or invalid value
// is reported in one error, so an operator fixes them in one go.
func Load(getenv func(string) string, need Need) (Config, error) {
	r := reader{getenv: getenv}
	c := Config{
		DatabaseURL:             r.databaseURL("DATABASE_URL", need.Database),
		ProlificToken:           r.token("PROLIFIC_TOKEN", need.Prolific),
		ProlificAPIURL:          r.url("PROLIFIC_API_URL", DefaultProlificAPIURL),
		ProlificWebhookSecret:   r.str("PROLIFIC_WEBHOOK_SECRET", "", false),
		SlackBotToken:           r.token("SLACK_BOT_TOKEN", false),
		SlackAPIURL:             r.url("SLACK_API_URL", DefaultSlackAPIURL),
		SlackSigningSecret:      r.str("SLACK_SIGNING_SECRET", "", false),
		SlackAppToken:           r.token("SLACK_APP_TOKEN", false),
		SlackWebhookURL:         r.secretURL("SLACK_WEBHOOK_URL"),
		SlackAllowedTeams:       r.list("SLACK_ALLOWED_TEAMS"),
		PollSchedule:            r.schedule("POLL_SCHEDULE", DefaultPollSchedule),
		StallAfter:              r.duration("STALL_AFTER", rules.DefaultStallAfter, rules.MinStallAfter, rules.MaxStallAfter),
		PollFailuresBeforeAlert: r.int("POLL_FAILURES_BEFORE_ALERT", 3, 1, 1000),
		PollConcurrency:         r.int("POLL_CONCURRENCY", 8, 1, 1000),
		HTTPAddr:                r.addr("HTTP_ADDR", DefaultHTTPAddr),
		Retention:               r.duration("RETENTION", 2160*time.Hour, time.Hour, 100*365*24*time.Hour),
		LogFormat:               r.oneOf("LOG_FORMAT", "json", "json", "text"),
		LogLevel:                r.level("LOG_LEVEL"),
	}
	if c.SlackAPIURL != "" && !strings.HasSuffix(c.SlackAPIURL, "/") {
		c.SlackAPIURL += "/"
	}
	if c.SlackAppToken != "" && !strings.HasPrefix(c.SlackAppToken, "xapp-") {
		r.fail("SLACK_APP_TOKEN", "must be an app-level token starting with xapp-")
	}
	if c.SlackAppToken != "" && c.SlackBotToken == "" {
		r.fail("SLACK_BOT_TOKEN", "is required with SLACK_APP_TOKEN (Socket Mode replies and alerts need the bot token)")
	}
	return c, errors.Join(r.errs...)
}

// SlackMode names how notifications leave the worker.
func (c Config) SlackMode() string {
	switch {
	case c.SlackBotToken != "":
		return "bot"
	case c.SlackWebhookURL != "":
		return "webhook"
	}
	return "stdout"
}

type reader struct {
	getenv func(string) string
	errs   []error
}

func (r *reader) fail(name, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s %s", name, fmt.Sprintf(format, args...)))
}

func (r *reader) str(name, def string, required bool) string {
	v := strings.TrimSpace(r.getenv(name))
	if v == "" && required {
		r.fail(name, "is required")
	}
	if v == "" {
		return def
	}
	return v
}

// url validates an API base URL. The value is echoed only without any
// credentials it might carry.
func (r *reader) url(name, def string) string {
	v := r.str(name, def, false)
	u, err := url.Parse(v)
	switch {
	case err != nil:
		r.fail(name, "must be an absolute http(s) URL (it does not parse)")
	case u.User != nil:
		r.fail(name, "must not carry credentials (got %q)", u.Redacted())
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		r.fail(name, "must be an absolute http(s) URL, got %q", u.Redacted())
	}
	return v
}

// token reads a credential: it must not contain spaces or control
// characters (a pasted line break, say), and is never echoed.
func (r *reader) token(name string, required bool) string {
	v := r.str(name, "", required)
	if strings.ContainsFunc(v, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
		r.fail(name, "must not contain spaces or control characters (value not shown)")
	}
	return v
}

// secretURL validates a URL that is itself a credential without echoing it.
func (r *reader) secretURL(name string) string {
	v := r.str(name, "", false)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		r.fail(name, "must be an absolute http(s) URL (value not shown: it is a secret)")
	}
	return v
}

// databaseURL checks the connection string as the store will parse it, so
// a typo is reported with the other variables instead of at first use. The
// value holds the password and is never echoed.
func (r *reader) databaseURL(name string, required bool) string {
	v := r.str(name, "", required)
	if v == "" {
		return ""
	}
	if _, err := store.ParseDatabaseURL(v); err != nil {
		r.fail(name, "cannot be parsed (value not shown): %s", strings.TrimPrefix(err.Error(), "parsing DATABASE_URL (value not shown): "))
	}
	return v
}

// list reads comma-separated values. A variable that is set but names
// nothing (" , ") is refused rather than read as unset: for an allow-list,
// unset means everyone.
func (r *reader) list(name string) []string {
	var out []string
	for part := range strings.SplitSeq(r.getenv(name), ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	if len(out) == 0 && r.getenv(name) != "" {
		r.fail(name, "is set but lists nothing; unset it to allow every team, or list team ids separated by commas")
	}
	return out
}

// schedule accepts a cron spec that fires: "0 0 30 2 *" (February 30th)
// parses but never comes, and a poller given it would have no next tick.
func (r *reader) schedule(name, def string) string {
	v := r.str(name, def, false)
	s, err := cron.ParseStandard(v)
	switch {
	case err != nil:
		r.fail(name, "is not a valid cron spec (e.g. \"*/5 * * * *\" or \"@every 1m\"): %v", err)
	case s.Next(time.Now()).IsZero():
		r.fail(name, "never fires (%q names no time that comes)", v)
	}
	return v
}

func (r *reader) duration(name string, def, least, most time.Duration) time.Duration {
	v := r.str(name, "", false)
	if v == "" {
		return def
	}
	d, ok := textviz.ParseDuration(v)
	if !ok {
		r.fail(name, "must be a duration like 6h, 90m or 30d, got %q", v)
		return def
	}
	if d < least || d > most {
		r.fail(name, "must be between %s and %s, got %s", textviz.Duration(least), textviz.Duration(most), v)
	}
	return d
}

func (r *reader) int(name string, def, lo, hi int) int {
	v := r.str(name, "", false)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		r.fail(name, "must be a whole number from %d to %d, got %q", lo, hi, v)
		return def
	}
	return n
}

func (r *reader) addr(name, def string) string {
	v := r.str(name, def, false)
	_, port, err := net.SplitHostPort(v)
	if n, convErr := strconv.Atoi(port); err != nil || convErr != nil || n < 0 || n > 65535 {
		r.fail(name, "must be host:port or :port with a port from 0 to 65535, got %q", v)
	}
	return v
}

func (r *reader) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(r.str(name, def, false))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.fail(name, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
	return def
}

func (r *reader) level(name string) slog.Level {
	var l slog.Level
	v := r.str(name, "info", false)
	if err := l.UnmarshalText([]byte(v)); err != nil {
		r.fail(name, "must be debug, info, warn or error, got %q", v)
		return slog.LevelInfo
	}
	return l
}
