package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

const (
	testToken = "test-prolific-token"
	studyMove = "60d9aadeb86739de712faee0"
	studyIdle = "60aca280709ee40ec37d4885"
	studyNoTF = "5f0e8a7c1d2b3c4d5e6f7a8b"
)

type testEnv map[string]string

func (e testEnv) get(k string) string { return e[k] }

func newEnv(t *testing.T, fake *prolifictest.Server) testEnv {
	t.Helper()
	return testEnv{
		"DATABASE_URL":     storetest.NewDatabaseURL(t),
		"PROLIFIC_TOKEN":   testToken,
		"PROLIFIC_API_URL": fake.URL(),
		"POLL_SCHEDULE":    "@every 1s",
		"HTTP_ADDR":        "127.0.0.1:0",
		"LOG_LEVEL":        "debug",
	}
}

func runCmd(t *testing.T, env testEnv, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), args, env.get, &out, &out)
	return out.String(), err
}

func countObservations(t *testing.T, dsn, studyID string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM observations WHERE study_id = $1`, studyID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func urls(allocated int) []rules.URLCounts {
	return []rules.URLCounts{
		{ExternalURL: "https://a.example/task", TotalAllocation: 10, Allocated: allocated},
		{ExternalURL: "https://b.example/task", TotalAllocation: 10, Allocated: 2},
	}
}

func TestStudiesCommands(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	fake.SetStudy(prolifictest.Study{ID: studyIdle, Name: "Idle study", URLs: urls(3)})
	fake.SetStudy(prolifictest.Study{ID: studyNoTF, Name: "Plain study", NotTaskflow: true})
	env := newEnv(t, fake)

	tests := []struct {
		name    string
		args    []string
		wantErr string
		wantOut string
	}{
		// A malformed id is refused before anything is asked of Prolific.
		{"malformed id", []string{"studies", "add", "not-an-id", "--channel", "C1"}, "24", ""},
		// A study without Taskflow progress is refused with the reason.
		{"not taskflow", []string{"studies", "add", studyNoTF, "--channel", "C1"}, "not a Taskflow study", ""},
		// An unknown study is refused.
		{"unknown", []string{"studies", "add", "aaaaaaaaaaaaaaaaaaaaaaaa", "--channel", "C1"}, "not found", ""},
		// A channel is required.
		{"no channel", []string{"studies", "add", studyIdle}, "--channel", ""},
		// One watch is one channel: a repeated --channel is refused, not half-used.
		{"two channels", []string{"studies", "add", studyIdle, "--channel", "C1", "--channel=C2"}, "--channel given twice", ""},
		// A study URL works as well as an id and shows current progress.
		{"add by URL", []string{"studies", "add", "https://app.prolific.com/researcher/workspaces/studies/" + studyIdle + "/submissions", "--channel", "C1", "--stall-after", "2h"}, "", "now watching study " + studyIdle},
		// Adding again is idempotent; --stall-after takes days as the slash command does.
		{"add again", []string{"studies", "add", studyIdle, "--channel", "C1", "--stall-after", "2d"}, "", "already watching"},
		// A threshold out of bounds is refused.
		{"stall too long", []string{"studies", "add", studyIdle, "--channel", "C1", "--stall-after", "31d"}, "between 15m and 30d", ""},
		// The list shows the study and that it was never polled yet.
		{"list", []string{"studies", "list"}, "", "Idle study"},
		// Removing a channel that does not watch says so.
		{"remove absent", []string{"studies", "remove", studyIdle, "--channel", "C9"}, "not watched in channel C9", ""},
		// Removing works.
		{"remove", []string{"studies", "remove", studyIdle}, "", "stopped watching"},
		// After removal the list is empty.
		{"list empty", []string{"studies", "list"}, "", "no studies are watched"},
	}
	for _, tt := range tests {
		out, err := runCmd(t, env, tt.args...)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("%s: err = %v, want it to mention %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !strings.Contains(out, tt.wantOut) {
			t.Fatalf("%s: output %q does not contain %q", tt.name, out, tt.wantOut)
		}
	}
	// Refused studies stored nothing.
	if got := countObservations(t, env["DATABASE_URL"], studyNoTF); got != 0 {
		t.Errorf("refused study has %d observations", got)
	}
}

func TestServePollsAndRecordsOnlyChanges(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	fake.SetStudy(prolifictest.Study{ID: studyMove, Name: "Moving study", URLs: urls(1)})
	fake.SetStudy(prolifictest.Study{ID: studyIdle, Name: "Idle study", URLs: urls(3)})
	env := newEnv(t, fake)
	for _, id := range []string{studyMove, studyIdle} {
		if _, err := runCmd(t, env, "studies", "add", id, "--channel", "C1"); err != nil {
			t.Fatal(err)
		}
	}
	fake.ResetRequests()
	// Every progress fetch of the moving study moves it on by one, up to 5
	// allocated, so polls 1–5 each see new progress and later ones do not.
	fake.OnRequest(func(r prolifictest.Request) {
		if r.Endpoint == prolifictest.EndpointProgress && r.StudyID == studyMove {
			if n := fake.Requests(studyMove); n < 5 {
				fake.SetProgress(studyMove, urls(1+n))
			}
		}
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testkit.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, env.get, &stdout, &stderr) }()

	waitCtx, waitCancel := context.WithTimeout(ctx, 60*time.Second)
	defer waitCancel()
	if err := fake.Wait(waitCtx, func() bool { return fake.Requests(studyMove) >= 7 && fake.Requests(studyIdle) >= 7 }); err != nil {
		t.Fatalf("waiting for more polls: %v\n%s", err, stderr.String())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after cancellation")
	}

	// Progress 1 → 2 → 3 → 4 → 5: five distinct observations, whatever the number of polls.
	if got := countObservations(t, env["DATABASE_URL"], studyMove); got != 5 {
		t.Errorf("moving study has %d observations, want 5", got)
	}
	// Six or more unchanged polls: the first observation only.
	if got := countObservations(t, env["DATABASE_URL"], studyIdle); got != 1 {
		t.Errorf("idle study has %d observations, want 1", got)
	}
	out, err := runCmd(t, env, "studies", "list")
	if err != nil || !strings.Contains(out, "ago") || !strings.Contains(out, "ok") {
		t.Errorf("studies list after polling = %q, %v; want last poll times", out, err)
	}
}

func TestServeRefusesBadConfigurationByName(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"serve"}, testEnv{"POLL_CONCURRENCY": "lots"}.get, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil {
		t.Fatal("serve started without configuration")
	}
	for _, name := range []string{"DATABASE_URL", "PROLIFIC_TOKEN", "POLL_CONCURRENCY"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"frobnicate"}, testEnv{}.get, &bytes.Buffer{}, &bytes.Buffer{})
	if !errors.Is(err, errUsage) {
		t.Fatalf("err = %v, want a usage error", err)
	}
}

// Commands without arguments refuse them, and `serve --help` shows the
// usage instead of starting a worker (with no database configured, a
// started one would fail instead).
func TestCommandsWithoutArguments(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"serve", "--bogus"}, {"version", "x"}, {"healthcheck", "--port", "1"}} {
		if _, err := runCmd(t, testEnv{}, args...); !errors.Is(err, errUsage) {
			t.Errorf("%v = %v, want a usage error", args, err)
		}
	}
	out, err := runCmd(t, testEnv{}, "serve", "--help")
	if err != nil || !strings.Contains(out, "usage: worker") {
		t.Errorf("serve --help = %q, %v; want the usage", out, err)
	}
}

func TestWebhooksSubscribe(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	env := testEnv{"PROLIFIC_TOKEN": testToken, "PROLIFIC_API_URL": fake.URL()}
	secretFile := t.TempDir() + "/secret"
	out, err := runCmd(t, env, "webhooks", "subscribe", "--target-url", "https://watch.example.org/webhooks/prolific",
		"--workspace-id", "ws1", "--secret-file", secretFile)
	if err != nil {
		t.Fatalf("subscribe: %v\n%s", err, out)
	}
	secrets := fake.Secrets()
	if len(secrets) != 1 {
		t.Fatalf("secrets created: %d", len(secrets))
	}
	data, err := os.ReadFile(secretFile)
	if err != nil || strings.TrimSpace(string(data)) != secrets[0].Value {
		t.Fatalf("secret file = %q, %v", data, err)
	}
	if info, _ := os.Stat(secretFile); info.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", info.Mode().Perm())
	}
	if strings.Contains(out, secrets[0].Value) {
		t.Error("the secret was printed")
	}
	subs := fake.Subscriptions()
	events := map[string]bool{}
	for _, s := range subs {
		if !s.Confirmed || s.TargetURL != "https://watch.example.org/webhooks/prolific" || s.WorkspaceID != "ws1" {
			t.Errorf("subscription %+v not confirmed for the target", s)
		}
		events[s.EventType] = true
	}
	if len(subs) != 2 || !events["study.progress.change"] || !events["study.status.change"] {
		t.Errorf("subscriptions = %+v, want both study events", subs)
	}
	// An existing secret file is never overwritten.
	if _, err := runCmd(t, env, "webhooks", "subscribe", "--target-url", "https://watch.example.org/webhooks/prolific",
		"--workspace-id", "ws1", "--secret-file", secretFile); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second subscribe into the same file = %v", err)
	}
}

func TestHealthcheckCommand(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	env := newEnv(t, fake)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	env["HTTP_ADDR"] = addr

	// Nothing listens yet: unhealthy.
	if _, err := runCmd(t, env, "healthcheck"); err == nil {
		t.Fatal("healthcheck passed with no worker running")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, env.get, io.Discard, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := runCmd(t, env, "healthcheck")
		if err == nil && strings.Contains(out, "healthy") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthcheck never passed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMigrateCommands(t *testing.T) {
	t.Parallel()
	env := testEnv{"DATABASE_URL": storetest.NewSchema(t)}
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "version"}, "schema version 0 of 1"},
		{[]string{"migrate", "up"}, "schema version 1 of 1"},
		{[]string{"migrate", "down", "--yes"}, "schema version 0 of 1"},
		{[]string{"migrate", "up"}, "schema version 1 of 1"},
	}
	for _, s := range steps {
		out, err := runCmd(t, env, s.args...)
		if err != nil || !strings.Contains(out, s.want) {
			t.Fatalf("%v = %q, %v; want %q", s.args, out, err, s.want)
		}
	}
	// Without --yes, down deletes nothing: it says what it would delete.
	if _, err := runCmd(t, env, "migrate", "down"); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("migrate down without --yes = %v, want it refused", err)
	}
	if out, err := runCmd(t, env, "migrate", "version"); err != nil || !strings.Contains(out, "schema version 1 of 1") {
		t.Errorf("after a refused migrate down: %q, %v; want version 1 of 1", out, err)
	}
	if _, err := runCmd(t, env, "migrate", "sideways"); !errors.Is(err, errUsage) {
		t.Errorf("migrate sideways = %v, want a usage error", err)
	}
	// A version this build does not have is refused and changes nothing.
	if _, err := runCmd(t, env, "migrate", "force", "99"); err == nil || !strings.Contains(err.Error(), "from 0 to 1") {
		t.Errorf("migrate force 99 = %v, want it refused", err)
	}
	// Pool settings in the URL are understood by the migrator too.
	pooled := testEnv{"DATABASE_URL": env["DATABASE_URL"] + "&pool_max_conns=2"}
	if out, err := runCmd(t, pooled, "migrate", "version"); err != nil || !strings.Contains(out, "schema version 1 of 1") {
		t.Errorf("migrate version with pool_max_conns = %q, %v; want version 1 of 1", out, err)
	}
}
