package slackfake

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/slack-go/slack"
)

// setup starts a fake closed at the end of the test.
func setup(t *testing.T) *Server {
	t.Helper()
	s := New()
	t.Cleanup(s.Close)
	return s
}

// call posts body to a Web API method and decodes the answer.
func call(t *testing.T, s *Server, method, contentType, auth, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL()+method, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("calling %s: %v", method, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("decoding %s answer: %v", method, err)
	}
	return resp.StatusCode, out
}

func TestPostMessageBodies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		contentType string
		auth        string
		body        string
		wantErr     string
	}{
		{
			// What slack-go sends: a form with the token inside.
			name:        "form with token",
			contentType: "application/x-www-form-urlencoded",
			body: url.Values{"token": {DefaultToken}, "channel": {"C1"}, "text": {"hi"},
				"blocks":   {`[{"type":"section","text":{"type":"mrkdwn","text":"hi"}}]`},
				"metadata": {`{"event_type":"taskflow_alert","event_payload":{"rule":"stalled"}}`}}.Encode(),
		},
		{
			// What other clients send: JSON with a bearer token.
			name:        "JSON with bearer",
			contentType: "application/json; charset=utf-8",
			auth:        "Bearer " + DefaultToken,
			body: `{"channel":"C1","text":"hi","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"hi"}}],` +
				`"metadata":{"event_type":"taskflow_alert","event_payload":{"rule":"stalled"}}}`,
		},
		{
			// A wrong bearer token.
			name:        "wrong token",
			contentType: "application/json",
			auth:        "Bearer xoxb-nope",
			body:        `{"channel":"C1","text":"hi"}`,
			wantErr:     "invalid_auth",
		},
		{
			// No token at all.
			name:        "no token",
			contentType: "application/json",
			body:        `{"channel":"C1","text":"hi"}`,
			wantErr:     "not_authed",
		},
		{
			// A header over 150 characters, as Slack refuses it.
			name:        "header too long",
			contentType: "application/json",
			auth:        "Bearer " + DefaultToken,
			body:        `{"channel":"C1","text":"hi","blocks":[{"type":"header","text":{"type":"plain_text","text":"` + strings.Repeat("h", 151) + `"}}]}`,
			wantErr:     "invalid_blocks",
		},
		{
			// Neither text nor blocks.
			name:        "empty message",
			contentType: "application/json",
			auth:        "Bearer " + DefaultToken,
			body:        `{"channel":"C1"}`,
			wantErr:     "no_text",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := setup(t)
			status, out := call(t, s, "chat.postMessage", tt.contentType, tt.auth, tt.body)
			if status != http.StatusOK {
				t.Fatalf("status = %d", status)
			}
			if tt.wantErr != "" {
				if out["ok"] != false || out["error"] != tt.wantErr {
					t.Errorf("answer = %v, want error %s", out, tt.wantErr)
				}
				if n := len(s.Messages()); n != 0 {
					t.Errorf("%d messages recorded", n)
				}
				return
			}
			msgs := s.Messages()
			if out["ok"] != true || len(msgs) != 1 || out["ts"] != msgs[0].TS {
				t.Fatalf("answer = %v, messages = %+v", out, msgs)
			}
			m := msgs[0]
			if m.Channel != "C1" || m.Text != "hi" || !strings.Contains(string(m.Blocks), `"section"`) ||
				m.Metadata == nil || m.Metadata.EventType != "taskflow_alert" || m.Metadata.EventPayload["rule"] != "stalled" {
				t.Errorf("message = %+v", m)
			}
		})
	}
}

func TestTimestampsIncrease(t *testing.T) {
	t.Parallel()
	s := setup(t)
	api := slack.New(DefaultToken, slack.OptionAPIURL(s.URL()))
	var last string
	for range 3 {
		_, ts, err := api.PostMessageContext(t.Context(), "C1", slack.MsgOptionText("hi", false))
		if err != nil {
			t.Fatal(err)
		}
		if ts <= last || !strings.HasPrefix(ts, "1700000000.") || len(ts) != len("1700000000.000100") {
			t.Errorf("ts %q after %q", ts, last)
		}
		last = ts
	}
}

func TestFaultQueue(t *testing.T) {
	t.Parallel()
	s := setup(t)
	api := slack.New(DefaultToken, slack.OptionAPIURL(s.URL()))
	post := func(channel string) string {
		_, _, err := api.PostMessageContext(t.Context(), channel, slack.MsgOptionText("hi", false))
		var se slack.SlackErrorResponse
		if errors.As(err, &se) {
			return se.Err
		}
		if err != nil {
			return err.Error()
		}
		return "ok"
	}
	s.FailNext("", Fault{SlackError: "global_fault"}, 1)
	s.FailNext("C1", Fault{SlackError: "first"}, 2)
	s.FailNext("C1", Fault{SlackError: "second"}, 1)

	got := []string{post("C1"), post("C1"), post("C1"), post("C2"), post("C1"), post("C2")}
	want := []string{"first", "first", "second", "global_fault", "ok", "ok"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("answers = %v, want %v", got, want)
	}

	s.FailNext("C3", Fault{SlackError: "channel_not_found"}, 0)
	if a, b := post("C3"), post("C3"); a != "channel_not_found" || b != "channel_not_found" {
		t.Errorf("a fault without a count should repeat, got %q, %q", a, b)
	}
	s.ClearFaults()
	if got := post("C3"); got != "ok" {
		t.Errorf("after ClearFaults: %q", got)
	}
	reqs := s.Requests()
	if len(reqs) != 9 || reqs[0].Error != "first" || reqs[4].Status != http.StatusOK {
		t.Errorf("requests = %+v", reqs)
	}
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	s := setup(t)
	api := slack.New(DefaultToken, slack.OptionAPIURL(s.URL()))
	_, ts, err := api.PostMessageContext(t.Context(), "C1", slack.MsgOptionText("before", false))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		channel string
		ts      string
		wantErr string
	}{
		{name: "wrong channel", channel: "C2", ts: ts, wantErr: "message_not_found"}, // Slack looks up by channel and ts.
		{name: "unknown ts", channel: "C1", ts: "1.000000", wantErr: "message_not_found"},
		{name: "ok", channel: "C1", ts: ts}, // Rewrites the message.
	}
	for _, tt := range tests {
		_, _, _, err := api.UpdateMessageContext(t.Context(), tt.channel, tt.ts, slack.MsgOptionText("after", false))
		var se slack.SlackErrorResponse
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (!errors.As(err, &se) || se.Err != tt.wantErr) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.wantErr)
		}
	}
	if m, ok := s.Current(ts); !ok || m.Text != "after" {
		t.Errorf("current = %+v, %v", m, ok)
	}
	s.Delete(ts)
	_, _, _, err = api.UpdateMessageContext(t.Context(), "C1", ts, slack.MsgOptionText("again", false))
	var se slack.SlackErrorResponse
	if !errors.As(err, &se) || se.Err != "message_not_found" {
		t.Errorf("update after delete: %v", err)
	}
	if n := len(s.Updates()); n != 1 {
		t.Errorf("%d updates recorded, want 1", n)
	}
}

func TestWebhook(t *testing.T) {
	t.Parallel()
	s := setup(t)
	msg := &slack.WebhookMessage{Text: "hi"}
	if err := slack.PostWebhookContext(t.Context(), s.WebhookURL(), msg); err != nil {
		t.Fatalf("posting: %v", err)
	}
	posts := s.WebhookPosts()
	if len(posts) != 1 || posts[0].Text != "hi" {
		t.Errorf("posts = %+v", posts)
	}

	resp, err := http.Post(strings.TrimSuffix(s.WebhookURL(), "1")+"2", "application/json", strings.NewReader(`{"text":"hi"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || string(body) != "no_service" {
		t.Errorf("wrong webhook answered %d %q", resp.StatusCode, body)
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	s := setup(t)
	api := slack.New(DefaultToken, slack.OptionAPIURL(s.URL()))
	done := make(chan []Message, 1)
	go func() {
		msgs, err := s.WaitMessages(t.Context(), 2)
		if err != nil {
			t.Errorf("waiting: %v", err)
		}
		done <- msgs
	}()
	for range 2 {
		if _, _, err := api.PostMessageContext(t.Context(), "C1", slack.MsgOptionText("hi", false)); err != nil {
			t.Fatal(err)
		}
	}
	if msgs := <-done; len(msgs) != 2 {
		t.Errorf("got %d messages", len(msgs))
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.WaitUpdates(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("waiting with a canceled context = %v", err)
	}
}

func TestCloseReleasesHangs(t *testing.T) {
	t.Parallel()
	s := New()
	s.FailNext("", Fault{Hang: true}, 1)
	api := slack.New(DefaultToken, slack.OptionAPIURL(s.URL()))
	errc := make(chan error, 1)
	go func() {
		_, err := api.AuthTestContext(context.Background())
		errc <- err
	}()
	if _, err := s.WaitRequests(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
	if err := <-errc; err == nil {
		t.Error("a hung request succeeded")
	}
}
