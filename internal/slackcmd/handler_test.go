package slackcmd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/slackcmd"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

const (
	prolificToken = "test-prolific-token"
	otherStudyID  = "60aca280709ee40ec37d4885"
	thirdStudyID  = "0123456789abcdef01234567"
	studyName     = "Study about API's"
	studyLink     = "https://app.prolific.com/researcher/workspaces/studies/" + studyID + "/submissions"
)

// t0 is the handler's clock in every test.
var t0 = time.Date(2026, 11, 3, 14, 0, 0, 0, time.UTC)

// fakePoller records Trigger calls.
type fakePoller struct{ triggers atomic.Int64 }

func (p *fakePoller) Trigger() { p.triggers.Add(1) }

// gatedProlific holds every call until its gate is closed, standing in
// for a slow Prolific in front of the real client.
type gatedProlific struct {
	inner slackcmd.Prolific
	gate  <-chan struct{}
}

func (g gatedProlific) Study(ctx context.Context, id string) (prolific.Study, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return prolific.Study{}, ctx.Err()
	}
	return g.inner.Study(ctx, id)
}

func (g gatedProlific) Progress(ctx context.Context, id string) (prolific.Progress, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return prolific.Progress{}, ctx.Err()
	}
	return g.inner.Progress(ctx, id)
}

// setupOptions vary the bundle per test.
type setupOptions struct {
	prolificTimeout time.Duration
	ackTimeout      time.Duration
	allowedTeams    []string
	gate            <-chan struct{}
	// slackOnlyResponseURLs keeps the production response_url check.
	slackOnlyResponseURLs bool
	// now is the handler's clock; zero means t0.
	now time.Time
}

// testBundle is a handler wired to real Postgres, the fake Prolific API
// through the real client, a response_url server and a fake poller.
type testBundle struct {
	store       *store.Store
	fake        *prolifictest.Server
	handler     *slackcmd.Handler
	server      *httptest.Server
	poller      *fakePoller
	responses   chan []byte
	responseURL string
	secret      []byte
	logs        *testkit.SyncBuffer
}

func setup(t *testing.T, opts setupOptions) *testBundle {
	t.Helper()
	b := &testBundle{
		store:     storetest.New(t),
		fake:      prolifictest.NewServer(t, prolificToken),
		poller:    &fakePoller{},
		responses: make(chan []byte, 16),
		secret:    []byte("8f742231b10e8888abcd99yyyzzz85a5"),
		logs:      &testkit.SyncBuffer{},
	}
	client, err := prolific.New(prolific.Config{BaseURL: b.fake.URL(), Token: prolificToken, Timeout: opts.prolificTimeout})
	if err != nil {
		t.Fatal(err)
	}
	var api slackcmd.Prolific = client
	if opts.gate != nil {
		api = gatedProlific{inner: client, gate: opts.gate}
	}
	responder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			body = []byte("unexpected request: " + r.Method + " " + r.Header.Get("Content-Type"))
		}
		b.responses <- body
	}))
	t.Cleanup(responder.Close)
	b.responseURL = responder.URL + "/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"

	now := t0
	if !opts.now.IsZero() {
		now = opts.now
	}
	cfg := slackcmd.Config{
		SigningSecret:    b.secret,
		AllowedTeams:     opts.allowedTeams,
		Prolific:         api,
		Store:            b.store,
		Poller:           b.poller,
		AckTimeout:       opts.ackTimeout,
		AllowResponseURL: slackcmd.AllowAnyResponseURL,
		Now:              func() time.Time { return now },
		Logger:           slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opts.slackOnlyResponseURLs {
		cfg.AllowResponseURL = nil
	}
	b.handler, err = slackcmd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /slack/commands", b.handler)
	b.server = httptest.NewServer(mux)
	t.Cleanup(b.server.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.handler.Wait(ctx); err != nil {
			t.Error(err)
		}
	})
	return b
}

// addStudy serves the documented sample progress for a study.
func (b *testBundle) addStudy(t *testing.T, id, name string) {
	t.Helper()
	b.fake.SetStudy(prolifictest.Study{ID: id, Name: name, URLs: fixtureURLs(t)})
}

func fixtureURLs(t *testing.T) []rules.URLCounts {
	t.Helper()
	data, err := os.ReadFile("testdata/prolific-access-details-progress.json")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Progress []rules.URLCounts `json:"progress"`
	}
	if err := json.Unmarshal(data, &body); err != nil {
		t.Fatal(err)
	}
	return body.Progress
}

// form is a slash command as Slack sends it.
func form(text string) url.Values {
	return url.Values{
		"token":        {"xyzz0WbapA4vBCDEFasx0q6G"},
		"team_id":      {"T1"},
		"team_domain":  {"testteam"},
		"channel_id":   {"C1"},
		"channel_name": {"studies"},
		"user_id":      {"U1"},
		"user_name":    {"roadrunner"},
		"command":      {"/taskflow"},
		"text":         {text},
		"trigger_id":   {"398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"},
		"api_app_id":   {"A123"},
	}
}

// reply is a decoded answer with all its visible text gathered.
type reply struct {
	status int
	body   string
	// ResponseType and Text are the top-level fields.
	ResponseType string `json:"response_type"`
	Text         string `json:"text"`
	// all is the top-level text and every text inside the blocks.
	all string
}

// post signs and sends raw form values, letting tests break the signature.
func (b *testBundle) post(t *testing.T, body string, header http.Header) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.server.URL+"/slack/commands", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, body: string(data)}
	if resp.StatusCode == http.StatusOK {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("reply Content-Type %q", ct)
		}
		r = decodeReply(t, data)
		r.status = resp.StatusCode
	}
	return r
}

// signed returns the headers Slack would send for body at the given time.
func (b *testBundle) signed(body string, at time.Time) http.Header {
	ts := strconv.FormatInt(at.Unix(), 10)
	return http.Header{
		slackcmd.HeaderTimestamp: {ts},
		slackcmd.HeaderSignature: {slackcmd.Sign(b.secret, ts, []byte(body))},
	}
}

// command sends text as channel C1 of team T1 and expects a 200 answer.
func (b *testBundle) command(t *testing.T, text string) reply {
	t.Helper()
	return b.commandAs(t, form(text))
}

func (b *testBundle) commandAs(t *testing.T, values url.Values) reply {
	t.Helper()
	values.Set("response_url", b.responseURL)
	body := values.Encode()
	r := b.post(t, body, b.signed(body, t0))
	if r.status != http.StatusOK {
		t.Fatalf("command %q: HTTP %d %s", values.Get("text"), r.status, r.body)
	}
	return r
}

// decodeReply checks the answer against Slack's rules and gathers its text.
func decodeReply(t *testing.T, data []byte) reply {
	t.Helper()
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("reply is not JSON: %v: %s", err, data)
	}
	if r.ResponseType != "ephemeral" {
		t.Fatalf("response_type %q; want ephemeral", r.ResponseType)
	}
	var raw struct {
		Blocks []json.RawMessage `json:"blocks"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Blocks) > 50 {
		t.Fatalf("reply has %d blocks; Slack allows 50", len(raw.Blocks))
	}
	var blocks slack.Blocks
	if err := json.Unmarshal([]byte(`[`+joinRaw(raw.Blocks)+`]`), &blocks); err != nil {
		t.Fatalf("slack-go cannot read the blocks: %v", err)
	}
	texts := []string{r.Text}
	for _, blk := range raw.Blocks {
		var b struct {
			Type string `json:"type"`
			Text struct {
				Text string `json:"text"`
			} `json:"text"`
			Elements []struct {
				Text string `json:"text"`
			} `json:"elements"`
		}
		if err := json.Unmarshal(blk, &b); err != nil {
			t.Fatal(err)
		}
		if n := utf8.RuneCountInString(b.Text.Text); n > 3000 {
			t.Fatalf("a %s block has %d characters; Slack allows 3000", b.Type, n)
		}
		texts = append(texts, b.Text.Text)
		for _, e := range b.Elements {
			texts = append(texts, e.Text)
		}
	}
	r.all = strings.Join(texts, "\n")
	if rest := slackLink.ReplaceAllString(r.all, ""); strings.ContainsAny(rest, "<>") {
		t.Fatalf("reply has unescaped angle brackets outside links; Slack would read them as markup:\n%s", r.all)
	}
	return r
}

// slackLink matches the links replies may contain: <https://…> or <https://…|label>.
var slackLink = regexp.MustCompile(`<https://[^<>|\s]+(\|[^<>]*)?>`)

func joinRaw(blocks []json.RawMessage) string {
	parts := make([]string, len(blocks))
	for i, b := range blocks {
		parts[i] = string(b)
	}
	return strings.Join(parts, ",")
}

// mustContain fails unless every want is in the reply's text.
func mustContain(t *testing.T, r reply, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(r.all, want) {
			t.Fatalf("reply lacks %q:\n%s", want, r.all)
		}
	}
}

func (b *testBundle) studies(t *testing.T) []store.Study {
	t.Helper()
	studies, err := b.store.Studies(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return studies
}

func (b *testBundle) watchOf(t *testing.T, id, channel string) store.Watch {
	t.Helper()
	st, err := b.store.GetStudy(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Watches {
		if w.ChannelID == channel {
			return w
		}
	}
	t.Fatalf("study %s has no watch in %s", id, channel)
	return store.Watch{}
}

// waitResponse waits for a POST to the response_url.
func (b *testBundle) waitResponse(t *testing.T) reply {
	t.Helper()
	select {
	case body := <-b.responses:
		return decodeReply(t, body)
	case <-time.After(30 * time.Second):
		t.Fatal("no answer was posted to the response_url")
		return reply{}
	}
}

func TestWatchLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	b.addStudy(t, studyID, studyName)

	r := b.command(t, "watch <"+studyLink+">")
	mustContain(t, r, "Now watching", studyName, studyID, "`ACTIVE`", "Stall alert after the default 6h",
		"https://google.com", "12/10", "+3", "https://bing.com", "4/10",
		"▓▓▓▓▓▓▓▓░░░░░░░░░░░░") // bing: 4 of 10
	if n := b.poller.triggers.Load(); n != 1 {
		t.Fatalf("poller triggered %d times; want 1", n)
	}
	w := b.watchOf(t, studyID, "C1")
	if w.TeamID != "T1" || w.AddedBy != "U1" || w.StallAfter != 0 {
		t.Fatalf("stored watch %+v; want team T1, added by U1, default stall", w)
	}
	st, err := b.store.GetStudy(context.Background(), studyID)
	if err != nil || st.Name != studyName || st.Status != "ACTIVE" {
		t.Fatalf("stored study %+v, %v", st, err)
	}

	steps := []struct {
		name  string
		text  string
		want  []string
		stall time.Duration
	}{
		// Watching again is idempotent and says so.
		{"again", "watch " + studyID, []string{"Already watching", "(stall threshold: the default 6h)"}, 0},
		// stall= changes the threshold and reports the change.
		{"stall", "WATCH " + studyID + " stall=12h", []string{"Already watching", "stall threshold updated to 12h, was the default 6h"}, 12 * time.Hour},
		// Without stall= the channel's threshold stays.
		{"keep stall", "watch " + studyID, []string{"Already watching", "(stall threshold: 12h)"}, 12 * time.Hour},
		// stall=default goes back to the worker default.
		{"reset stall", "watch " + studyID + " stall=default", []string{"updated to the default 6h, was 12h"}, 0},
	}
	for _, step := range steps {
		r := b.command(t, step.text)
		mustContain(t, r, step.want...)
		if got := b.watchOf(t, studyID, "C1").StallAfter; got != step.stall {
			t.Fatalf("%s: stored stall %v; want %v", step.name, got, step.stall)
		}
	}
	if n := len(b.studies(t)); n != 1 {
		t.Fatalf("%d studies stored; want 1", n)
	}

	// A channel that joins while an alert is firing is told about it.
	poll(t, b.store, studyID, t0.Add(-time.Minute), true, fixtureURLs(t), "",
		rules.Transition{Rule: rules.OverAllocation, ExternalURL: "https://google.com", State: rules.Firing, At: t0.Add(-time.Minute), Since: t0.Add(-time.Minute)})
	joining := form("watch " + studyID)
	joining.Set("channel_id", "C2")
	mustContain(t, b.commandAs(t, joining), "Now watching", "Already firing", "over-allocation on https://google.com")
}

func TestWatchRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		text    string
		opts    setupOptions
		prepare func(b *testBundle)
		want    []string
	}{
		// A malformed id never reaches Prolific.
		{name: "malformed id", text: "watch 60d9aadeb86739", want: []string{"not a study I can read", "24 lowercase hexadecimal", "/taskflow help"}},
		// A study Prolific does not know.
		{name: "unknown study", text: "watch " + studyID, want: []string{"Prolific has no study `" + studyID + "`"}},
		// A study without access details is not a Taskflow study.
		{name: "not taskflow", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.SetNotTaskflow(studyID)
		}, want: []string{studyName, "is not a Taskflow study"}},
		// Our token is refused: the operator must act.
		{name: "prolific auth", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.SetToken("another-token")
		}, want: []string{"Prolific refused taskflow-watch's API token", "the person who runs taskflow-watch"}},
		// The token may not see this study.
		{name: "prolific 403", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.Fail(studyID, prolifictest.Fault{Endpoint: prolifictest.EndpointAll, Status: http.StatusForbidden}, -1)
		}, want: []string{"does not let taskflow-watch's API token see", "HTTP 403", "the person who runs taskflow-watch"}},
		// Prolific is down.
		{name: "prolific 503", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.Fail("", prolifictest.Fault{Endpoint: prolifictest.EndpointAll, Status: http.StatusServiceUnavailable}, -1)
		}, want: []string{"server error (HTTP 503)", "try again"}},
		// Prolific is rate-limiting us.
		{name: "prolific 429", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.Fail(studyID, prolifictest.Fault{Endpoint: prolifictest.EndpointProgress, Status: http.StatusTooManyRequests}, -1)
		}, want: []string{"rate-limiting", "try again"}},
		// Prolific does not answer before the client's timeout.
		{name: "prolific timeout", text: "watch " + studyID, opts: setupOptions{prolificTimeout: 200 * time.Millisecond, ackTimeout: time.Minute},
			prepare: func(b *testBundle) {
				b.addStudy(t, studyID, studyName)
				b.fake.Fail("", prolifictest.Fault{Endpoint: prolifictest.EndpointAll, Hang: true}, -1)
			}, want: []string{"did not answer in time"}},
		// Prolific is unreachable.
		{name: "prolific unreachable", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.Close()
		}, want: []string{"couldn't reach Prolific"}},
		// A garbled progress body is not trusted.
		{name: "prolific malformed", text: "watch " + studyID, prepare: func(b *testBundle) {
			b.addStudy(t, studyID, studyName)
			b.fake.Fail(studyID, prolifictest.Fault{Endpoint: prolifictest.EndpointProgress, Status: 200, Body: prolifictest.BodyMalformedJSON}, -1)
		}, want: []string{"reply I couldn't read"}},
		// A bad stall= is refused before Prolific is asked.
		{name: "bad stall", text: "watch " + studyID + " stall=2m", prepare: func(b *testBundle) { b.addStudy(t, studyID, studyName) },
			want: []string{"between 15m and 30d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.opts)
			if tt.prepare != nil {
				tt.prepare(b)
			}
			r := b.command(t, tt.text)
			mustContain(t, r, tt.want...)
			if strings.Contains(r.all, "Now watching") || strings.Contains(r.all, prolificToken) {
				t.Fatalf("refusal says too much:\n%s", r.all)
			}
			if n := len(b.studies(t)); n != 0 {
				t.Fatalf("%d studies stored after a refused watch", n)
			}
			if n := b.poller.triggers.Load(); n != 0 {
				t.Fatalf("poller triggered %d times after a refused watch", n)
			}
		})
	}
}

func TestWatchMalformedNeverAsksProlific(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	b.command(t, "watch not-a-study")
	if n := b.fake.TotalRequests(); n != 0 {
		t.Fatalf("Prolific got %d requests for a malformed id", n)
	}
}

func TestWatchSlowProlificAnswersThroughResponseURL(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	b := setup(t, setupOptions{gate: gate, ackTimeout: 10 * time.Millisecond})
	b.addStudy(t, studyID, studyName)

	r := b.command(t, "watch "+studyID+" stall=1d")
	mustContain(t, r, "Checking study `"+studyID+"` with Prolific")
	if n := len(b.studies(t)); n != 0 {
		t.Fatalf("%d studies stored before Prolific answered", n)
	}

	close(gate)
	late := b.waitResponse(t)
	mustContain(t, late, "Now watching", studyName, "https://google.com")
	if got := b.watchOf(t, studyID, "C1").StallAfter; got != 24*time.Hour {
		t.Fatalf("stored stall %v; want 24h", got)
	}
	if n := b.poller.triggers.Load(); n != 1 {
		t.Fatalf("poller triggered %d times; want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.handler.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if logs := b.logs.String(); strings.Contains(logs, "96rGlfmibIGlgcZRskXaIFfN") {
		t.Fatalf("logs contain the response_url:\n%s", logs)
	}
}

func TestLateAnswerRefusesNonSlackResponseURL(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	b := setup(t, setupOptions{gate: gate, ackTimeout: 10 * time.Millisecond, slackOnlyResponseURLs: true})
	b.addStudy(t, studyID, studyName)

	mustContain(t, b.command(t, "watch "+studyID), "Checking study")
	close(gate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.handler.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case body := <-b.responses:
		t.Fatalf("a loopback response_url was posted to by default: %s", body)
	default:
	}
	// The watch itself happened; only the late answer was withheld.
	b.watchOf(t, studyID, "C1")
	logs := b.logs.String()
	if !strings.Contains(logs, "not an allowed Slack URL") || strings.Contains(logs, "96rGlfmibIGlgcZRskXaIFfN") {
		t.Fatalf("logs should explain the refusal without the URL:\n%s", logs)
	}
}

func TestAllowSlackResponseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  string
		want bool
	}{
		{"https://hooks.slack.com/commands/T1/1/abc", true},    // Slack's response_url host
		{"https://slack.com/x", true},                          // the apex domain
		{"https://HOOKS.SLACK.COM./commands", true},            // case and trailing dot
		{"http://hooks.slack.com/commands", false},             // plain http
		{"https://hooks.slack.com.evil.example/x", false},      // look-alike suffix
		{"https://evilslack.com/x", false},                     // look-alike name
		{"https://user:pw@hooks.slack.com/x", false},           // credentials
		{"https://127.0.0.1/commands", false},                  // loopback
		{"ftp://hooks.slack.com/x", false},                     // other scheme
		{"https://hooks.slack.com:8443/commands/T1/1/a", true}, // a port does not change the host
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := slackcmd.AllowSlackResponseURL(u); got != tt.want {
			t.Errorf("AllowSlackResponseURL(%s) = %v; want %v", tt.raw, got, tt.want)
		}
	}
}

func TestUnwatch(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	b.addStudy(t, studyID, studyName)
	mustContain(t, b.command(t, "watch "+studyID), "Now watching")

	other := form("unwatch " + studyID)
	other.Set("channel_id", "C2")
	mustContain(t, b.commandAs(t, other), "This channel was not watching `"+studyID+"`")
	b.watchOf(t, studyID, "C1")

	mustContain(t, b.command(t, "unwatch <"+studyLink+">"), "Stopped watching `"+studyID+"`")
	if _, err := b.store.GetStudy(context.Background(), studyID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("study still stored after its last watch ended: %v", err)
	}
	mustContain(t, b.command(t, "unwatch "+studyID), "This channel was not watching")
}

// poll records one poll of a study through the store, as the poller would.
func poll(t *testing.T, s *store.Store, id string, at time.Time, ok bool, urls []rules.URLCounts, errText string, transitions ...rules.Transition) {
	t.Helper()
	storetest.RecordPoll(t, s, store.PollRecord{StudyID: id, At: at, OK: ok, Error: errText},
		func(p store.PollState) store.Evaluation {
			next := p.State
			if ok {
				next.URLs, next.ConsecutiveFailures = urls, 0
			} else {
				next.ConsecutiveFailures++
			}
			return store.Evaluation{State: next, Transitions: transitions, NextPollAt: at}
		})
}

func TestList(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	mustContain(t, b.command(t, "list"), "This channel isn't watching any study yet", "/taskflow watch &lt;study id or link&gt;")

	b.addStudy(t, studyID, studyName)
	b.addStudy(t, otherStudyID, "<!channel> & friends")
	b.addStudy(t, thirdStudyID, "Other channel's study")
	mustContain(t, b.command(t, "watch "+studyID+" stall=12h"), "Now watching")
	mustContain(t, b.command(t, "watch "+otherStudyID), "Now watching")
	other := form("watch " + thirdStudyID)
	other.Set("channel_id", "C2")
	mustContain(t, b.commandAs(t, other), "Now watching")

	urls := fixtureURLs(t)
	poll(t, b.store, studyID, t0.Add(-3*time.Minute), true, urls, "",
		rules.Transition{Rule: rules.Stalled, State: rules.Firing, At: t0.Add(-2 * time.Hour), Since: t0.Add(-2 * time.Hour)},
		rules.Transition{Rule: rules.OverAllocation, ExternalURL: "https://google.com", State: rules.Firing, At: t0.Add(-3 * time.Minute), Since: t0.Add(-3 * time.Minute)})
	poll(t, b.store, otherStudyID, t0.Add(-10*time.Minute), false, nil, "Prolific answered HTTP 503 <b>")

	r := b.command(t, "list")
	mustContain(t, r,
		"This channel watches 2 studies",
		studyName, studyID, "Last poll: 3m ago, OK", "stalled (since 2h ago)", "over-allocation on https://google.com (since 3m ago)",
		"Stall threshold: 12h",
		"&lt;!channel&gt; &amp; friends", otherStudyID, "10m ago, *failed* (1 in a row): Prolific answered HTTP 503 &lt;b&gt;",
		"Stall threshold: 6h (the default)", "Open alerts: none")
	if strings.Contains(r.all, "<!channel>") || strings.Contains(r.all, thirdStudyID) {
		t.Fatalf("list shows markup or another channel's study:\n%s", r.all)
	}
}

func TestListManyStudiesFitsOneMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	ctx := context.Background()
	const n = 70
	for i := range n {
		id := fmt.Sprintf("%024x", i+1)
		_, err := b.store.AddWatch(ctx, store.StudyInfo{ID: id, Name: strings.Repeat("long name ", 20) + strconv.Itoa(i), Status: "ACTIVE"},
			store.Watch{ChannelID: "C1"}, t0)
		if err != nil {
			t.Fatal(err)
		}
	}
	r := b.command(t, "list") // decodeReply enforces Slack's limits
	mustContain(t, r, fmt.Sprintf("This channel watches %d studies", n), "more. Use `/taskflow status &lt;id&gt;`")
}

func TestStatus(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	b.addStudy(t, studyID, studyName)

	notWatched := "This channel isn't watching `" + studyID + "`"
	mustContain(t, b.command(t, "status "+studyID), notWatched)
	mustContain(t, b.command(t, "watch "+studyID), "Now watching")
	mustContain(t, b.command(t, "status "+studyID), studyName, "No progress recorded yet", "Last poll: not yet")

	other := form("status " + studyID)
	other.Set("channel_id", "C2")
	mustContain(t, b.commandAs(t, other), notWatched)

	// Allocation grows 5 → 10 → 16 over the day.
	at := func(ago time.Duration, google, bing int) []rules.URLCounts {
		urls := fixtureURLs(t)
		urls[0].Allocated, urls[1].Allocated = google, bing
		poll(t, b.store, studyID, t0.Add(-ago), true, urls, "")
		return urls
	}
	at(20*time.Hour, 3, 2)
	at(10*time.Hour, 6, 4)
	latest := at(time.Hour, 12, 4)
	// An unchanged poll writes no observation but opens an alert.
	poll(t, b.store, studyID, t0.Add(-5*time.Minute), true, latest, "",
		rules.Transition{Rule: rules.OverAllocation, ExternalURL: "https://google.com", State: rules.Firing, At: t0.Add(-time.Hour), Since: t0.Add(-time.Hour)})

	r := b.command(t, "status <"+studyLink+"|study>")
	mustContain(t, r,
		studyName, "`ACTIVE`", "Last poll: 5m ago, OK", "over-allocation on https://google.com (since 1h ago)",
		"https://google.com", "12/10", "+3", "13", "▓▓▓▓▓▓▓▓▓▓▓▓▓▓▓▓▓▓░░",
		"https://bing.com", "4/10", "▓▓▓▓▓▓▓▓░░░░░░░░░░░░",
		"Allocated, last 24 h: `▁▁▁▁▁▁▁▁▁▁▄▄▄▄▄▄▄▄▄██` 5 → 16")
	if n := b.fake.TotalRequests(); n != 2 {
		t.Fatalf("Prolific got %d requests; status must use stored data only (want the watch's 2)", n)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	helpTexts := []string{"watch &lt;study id or link&gt; [stall=&lt;duration&gt;]", "`/taskflow unwatch &lt;study id&gt;`", "`/taskflow list`",
		"`/taskflow status &lt;study id&gt;`", "stall=90m", "between 15m and 30d", "default is 6h",
		"over-allocation", "over capacity", "capacity increase", "stalled", "polls failing"}
	tests := []struct {
		name string
		text string
		want []string
	}{
		// help explains everything.
		{"help", "help", helpTexts},
		// Empty text is help.
		{"empty", "", helpTexts},
		// An unknown verb says what was not understood.
		{"unknown verb", "frobnicate " + studyID, append([]string{"I didn't understand `frobnicate`"}, helpTexts...)},
	}
	for _, tt := range tests {
		r := b.command(t, tt.text)
		mustContain(t, r, tt.want...)
		if tt.name != "unknown verb" && strings.Contains(r.all, "didn't understand") {
			t.Fatalf("%s: help complains:\n%s", tt.name, r.all)
		}
	}
}

func TestTeamAllowList(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{allowedTeams: []string{"T1", " T9 "}})
	b.addStudy(t, studyID, studyName)

	stranger := form("watch " + studyID)
	stranger.Set("team_id", "T2")
	mustContain(t, b.commandAs(t, stranger), "not allowed to use taskflow-watch", "`T2`")
	if n := len(b.studies(t)); n != 0 || b.fake.TotalRequests() != 0 {
		t.Fatalf("a refused team changed something: %d studies, %d Prolific requests", n, b.fake.TotalRequests())
	}
	mustContain(t, b.command(t, "watch "+studyID), "Now watching")
}

func TestRequestsRefusedBeforeAnything(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	b.addStudy(t, studyID, studyName)
	values := form("watch " + studyID)
	values.Set("response_url", b.responseURL)
	body := values.Encode()

	tests := []struct {
		name   string
		body   string
		header http.Header
		status int
	}{
		// No signature headers at all.
		{"unsigned", body, http.Header{}, http.StatusUnauthorized},
		// A signature for another body.
		{"altered body", strings.Replace(body, "U1", "U2", 1), b.signed(body, t0), http.StatusUnauthorized},
		// Signed with another secret.
		{"wrong secret", body, http.Header{
			slackcmd.HeaderTimestamp: {strconv.FormatInt(t0.Unix(), 10)},
			slackcmd.HeaderSignature: {slackcmd.Sign([]byte("nope"), strconv.FormatInt(t0.Unix(), 10), []byte(body))},
		}, http.StatusUnauthorized},
		// A correctly signed but old request (a replay).
		{"stale", body, b.signed(body, t0.Add(-6*time.Minute)), http.StatusUnauthorized},
		// The timestamp header alone.
		{"missing signature", body, http.Header{slackcmd.HeaderTimestamp: {strconv.FormatInt(t0.Unix(), 10)}}, http.StatusUnauthorized},
		// The signature header alone.
		{"missing timestamp", body, http.Header{slackcmd.HeaderSignature: b.signed(body, t0)[slackcmd.HeaderSignature]}, http.StatusUnauthorized},
		// A timestamp that is not a number.
		{"garbled timestamp", body, http.Header{
			slackcmd.HeaderTimestamp: {"now"},
			slackcmd.HeaderSignature: {slackcmd.Sign(b.secret, "now", []byte(body))},
		}, http.StatusUnauthorized},
		// A body over the limit is refused before verification.
		{"oversize", "text=" + strings.Repeat("a", 70<<10), b.signed("text="+strings.Repeat("a", 70<<10), t0), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		r := b.post(t, tt.body, tt.header)
		if r.status != tt.status {
			t.Fatalf("%s: HTTP %d %s; want %d", tt.name, r.status, r.body, tt.status)
		}
		if strings.Contains(r.body, "watch") {
			t.Fatalf("%s: refusal echoes the command: %s", tt.name, r.body)
		}
	}
	if n := len(b.studies(t)); n != 0 || b.fake.TotalRequests() != 0 || b.poller.triggers.Load() != 0 {
		t.Fatalf("refused requests changed something: %d studies, %d Prolific requests, %d triggers",
			n, b.fake.TotalRequests(), b.poller.triggers.Load())
	}
	// The same request, correctly signed, works: the refusals were about the signature.
	r := b.post(t, body, b.signed(body, t0))
	if r.status != http.StatusOK {
		t.Fatalf("signed request: HTTP %d", r.status)
	}
	mustContain(t, r, "Now watching")
}

// TestSlackSigningExampleOverHTTP sends Slack's documented example request
// byte for byte: its keys are not in the order url.Values.Encode writes
// them, so it is accepted only if the signature is checked over the raw body.
func TestSlackSigningExampleOverHTTP(t *testing.T) {
	t.Parallel()
	ex := loadSigningExample(t)
	if ex.timestamp != "1531420618" || string(ex.secret) != "8f742231b10e8888abcd99yyyzzz85a5" {
		t.Fatalf("fixture timestamp %q, secret %q; want Slack's example", ex.timestamp, ex.secret)
	}
	values, err := url.ParseQuery(string(ex.body))
	if err != nil {
		t.Fatal(err)
	}
	if values.Encode() == string(ex.body) {
		t.Fatal("the example body is in canonical order; it cannot tell the raw body from a re-encoded form")
	}
	b := setup(t, setupOptions{now: time.Unix(1531420618, 0)})
	if string(b.secret) != string(ex.secret) {
		t.Fatalf("handler secret %q; want the example's", b.secret)
	}
	r := b.post(t, string(ex.body), http.Header{
		slackcmd.HeaderTimestamp: {ex.timestamp},
		slackcmd.HeaderSignature: {ex.expected},
	})
	if r.status != http.StatusOK {
		t.Fatalf("Slack's example request: HTTP %d %s; want 200", r.status, r.body)
	}
	// The empty text of the example is answered with help.
	mustContain(t, r, "/webhook-collect")
}

func TestOnlyPost(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	h, err := slackcmd.New(slackcmd.Config{Prolific: gatedProlific{}, Store: b.store})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/slack/commands", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost {
		t.Fatalf("GET: HTTP %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
	// Without a signing secret nothing is accepted.
	body := form("list").Encode()
	req := httptest.NewRequest(http.MethodPost, "/slack/commands", strings.NewReader(body))
	for k, v := range b.signed(body, time.Now()) {
		req.Header[k] = v
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("no secret configured: HTTP %d; want 401", rec.Code)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  slackcmd.Config
	}{
		{"no prolific", slackcmd.Config{Store: storeStub{}}},                                         // Prolific is required
		{"no store", slackcmd.Config{Prolific: gatedProlific{}}},                                     // Store is required
		{"negative", slackcmd.Config{Prolific: gatedProlific{}, Store: storeStub{}, AckTimeout: -1}}, // durations are checked
	}
	for _, tt := range tests {
		if _, err := slackcmd.New(tt.cfg); err == nil {
			t.Errorf("%s: New accepted an invalid config", tt.name)
		}
	}
}

// storeStub satisfies slackcmd.Store for configuration checks only.
type storeStub struct{ slackcmd.Store }

// A signed command whose channel_id is not a channel id (Slack never sends
// one) is answered without touching anything, so no such watch can exist.
func TestCommandFromAnUnusableChannelChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	b.addStudy(t, studyID, studyName)
	for _, ch := range []string{"", "../../etc<x>", strings.Repeat("C", 81)} {
		values := form("watch " + studyID)
		values.Set("channel_id", ch)
		mustContain(t, b.commandAs(t, values), "can't tell which channel")
	}
	if n := len(b.studies(t)); n != 0 {
		t.Fatalf("%d studies stored from commands without a usable channel", n)
	}
	if n := b.fake.TotalRequests(); n != 0 {
		t.Fatalf("Prolific asked %d times", n)
	}
}
