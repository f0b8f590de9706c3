package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{"DATABASE_URL": "postgres://x", "PROLIFIC_TOKEN": "tok"}), Need{Database: true, Prolific: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.PollSchedule != "@every 5m" || c.StallAfter != 6*time.Hour || c.PollFailuresBeforeAlert != 3 ||
		c.PollConcurrency != 8 || c.HTTPAddr != ":8080" || c.Retention != 2160*time.Hour ||
		c.ProlificAPIURL != "https://api.prolific.com" || c.SlackAPIURL != "https://slack.com/api/" ||
		c.LogFormat != "json" || c.SlackMode() != "stdout" {
		t.Errorf("defaults = %+v", c)
	}
}

// Durations are written as everywhere else in the worker: days included.
func TestLoadReadsDays(t *testing.T) {
	t.Parallel()
	c, err := Load(env(map[string]string{"DATABASE_URL": "postgres://x", "STALL_AFTER": "30d", "RETENTION": "90d"}), Need{Database: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.StallAfter != 30*24*time.Hour || c.Retention != 90*24*time.Hour {
		t.Errorf("STALL_AFTER %v, RETENTION %v; want 720h and 2160h", c.StallAfter, c.Retention)
	}
}

func TestLoadReportsEveryProblemByName(t *testing.T) {
	t.Parallel()
	_, err := Load(env(map[string]string{
		"POLL_SCHEDULE":     "every five minutes",
		"STALL_AFTER":       "six hours",
		"POLL_CONCURRENCY":  "0",
		"HTTP_ADDR":         "8080",
		"LOG_LEVEL":         "loud",
		"SLACK_WEBHOOK_URL": "hooks.example/secret-path",
		"SLACK_APP_TOKEN":   "xoxb-not-an-app-token",
		"PROLIFIC_API_URL":  "ftp://user:PWSECRET@127.0.0.1:18091",
		"RETENTION":         "1m",
	}), Need{Database: true, Prolific: true})
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	for _, name := range []string{"DATABASE_URL", "PROLIFIC_TOKEN", "POLL_SCHEDULE", "STALL_AFTER", "POLL_CONCURRENCY",
		"HTTP_ADDR", "LOG_LEVEL", "SLACK_WEBHOOK_URL", "SLACK_APP_TOKEN", "SLACK_BOT_TOKEN", "PROLIFIC_API_URL", "RETENTION"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
	for _, secret := range []string{"secret-path", "xoxb-not-an-app-token", "PWSECRET"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error echoes a secret %q:\n%v", secret, err)
		}
	}
}

func TestSlackMode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		// A bot token wins: it supports metadata, threads and updates.
		{"bot", map[string]string{"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_WEBHOOK_URL": "https://hooks.example/x"}, "bot"},
		// A webhook alone posts plain messages to one channel.
		{"webhook", map[string]string{"SLACK_WEBHOOK_URL": "https://hooks.example/x"}, "webhook"},
		// Nothing configured writes JSON lines to stdout.
		{"stdout", map[string]string{}, "stdout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(env(tt.env), Need{})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.SlackMode(); got != tt.want {
				t.Errorf("SlackMode = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLoadRejectsValuesThatWouldFailLater(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, variable, value string
	}{
		// A port out of range would only fail when the listener binds.
		{"port range", "HTTP_ADDR", "127.0.0.1:99999"},
		// A named port is not a port number.
		{"named port", "HTTP_ADDR", "foo:bar"},
		// A token with a space would be refused by every request.
		{"token space", "PROLIFIC_TOKEN", "tok with space"},
		// A pasted line break in a bot token.
		{"token newline", "SLACK_BOT_TOKEN", "xoxb-1\nxoxb-2"},
		// Credentials in an API URL are refused and not echoed.
		{"url credentials", "PROLIFIC_API_URL", "http://user:pw@127.0.0.1:8080"},
		// Stall thresholds share the bounds of the slash command's stall=.
		{"stall too short", "STALL_AFTER", "1m"},
		{"stall too long", "STALL_AFTER", "1000000h"},
		// A schedule that parses but never fires (February 30th) would leave the poller no next tick.
		{"schedule never fires", "POLL_SCHEDULE", "0 0 30 2 *"},
		// An allow-list of only separators would silently allow every team.
		{"allowed teams blank", "SLACK_ALLOWED_TEAMS", " , ,, "},
		// A connection string pgx cannot parse fails here, not at first use; its
		// quoted password (which pgx would half show) is not echoed.
		{"database url unparsable", "DATABASE_URL", "host=127.0.0.1 password='tok with space"},
		{"database url pool setting", "DATABASE_URL", "postgres://u:pw@127.0.0.1/db?pool_max_conns=many"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			vars := map[string]string{"DATABASE_URL": "postgres://x", "PROLIFIC_TOKEN": "tok", tt.variable: tt.value}
			_, err := Load(env(vars), Need{Database: true, Prolific: true})
			if err == nil || !strings.Contains(err.Error(), tt.variable) {
				t.Fatalf("err = %v, want it to name %s", err, tt.variable)
			}
			if strings.Contains(err.Error(), "pw@") || strings.Contains(err.Error(), "with space") {
				t.Errorf("error echoes a secret: %v", err)
			}
		})
	}
}

func TestLoadAllowedTeams(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		value string
		want  []string
	}{
		// Unset: any team whose request is verified may use the commands.
		{"unset", "", nil},
		// One team id.
		{"one", "T0123456", []string{"T0123456"}},
		// Comma-separated, spaces around each id trimmed, empty entries dropped.
		{"several", " T0123456 ,T0ABCDEF,, \tT0999999\t", []string{"T0123456", "T0ABCDEF", "T0999999"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(env(map[string]string{"SLACK_ALLOWED_TEAMS": tt.value}), Need{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.SlackAllowedTeams, tt.want) {
				t.Errorf("SLACK_ALLOWED_TEAMS=%q gives %q, want %q", tt.value, c.SlackAllowedTeams, tt.want)
			}
		})
	}
}
