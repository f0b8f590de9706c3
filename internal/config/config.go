// Package config reads the worker's environment variables (the fixed
// interface of DESIGN.md) once, validates all of them, and reports every
// problem at once, each naming its variable.
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

// Defaults of DESIGN.md.
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
		DatabaseURL:             r.str("DATABASE_URL", "", need.Database),
		ProlificToken:           r.str("PROLIFIC_TOKEN", "", need.Prolific),
		ProlificAPIURL:          r.url("PROLIFIC_API_URL", DefaultProlificAPIURL),
		ProlificWebhookSecret:   r.str("PROLIFIC_WEBHOOK_SECRET", "", false),
		SlackBotToken:           r.str("SLACK_BOT_TOKEN", "", false),
		SlackAPIURL:             r.url("SLACK_API_URL", DefaultSlackAPIURL),
		SlackSigningSecret:      r.str("SLACK_SIGNING_SECRET", "", false),
		SlackAppToken:           r.str("SLACK_APP_TOKEN", "", false),
		SlackWebhookURL:         r.secretURL("SLACK_WEBHOOK_URL"),
		SlackAllowedTeams:       r.list("SLACK_ALLOWED_TEAMS"),
		PollSchedule:            r.schedule("POLL_SCHEDULE", DefaultPollSchedule),
		StallAfter:              r.duration("STALL_AFTER", 6*time.Hour, time.Minute),
		PollFailuresBeforeAlert: r.int("POLL_FAILURES_BEFORE_ALERT", 3, 1, 1000),
		PollConcurrency:         r.int("POLL_CONCURRENCY", 8, 1, 1000),
		HTTPAddr:                r.addr("HTTP_ADDR", DefaultHTTPAddr),
		Retention:               r.duration("RETENTION", 2160*time.Hour, time.Hour),
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

func (r *reader) url(name, def string) string {
	v := r.str(name, def, false)
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		r.fail(name, "must be an absolute http(s) URL, got %q", v)
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

func (r *reader) list(name string) []string {
	var out []string
	for part := range strings.SplitSeq(r.getenv(name), ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func (r *reader) schedule(name, def string) string {
	v := r.str(name, def, false)
	if _, err := cron.ParseStandard(v); err != nil {
		r.fail(name, "is not a valid cron spec (e.g. \"*/5 * * * *\" or \"@every 1m\"): %v", err)
	}
	return v
}

func (r *reader) duration(name string, def, least time.Duration) time.Duration {
	v := r.str(name, "", false)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		r.fail(name, "must be a duration like 6h or 90m, got %q", v)
		return def
	}
	if d < least {
		r.fail(name, "must be at least %s, got %s", least, d)
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
	if _, _, err := net.SplitHostPort(v); err != nil {
		r.fail(name, "must be host:port or :port, got %q", v)
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
