package notify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

// Senders satisfy the dispatcher's interface.
var (
	_ Sender = (*BotSender)(nil)
	_ Sender = (*WebhookSender)(nil)
	_ Sender = (*LogSender)(nil)
)

// testBundle is what a sender test needs besides the sender.
type testBundle struct {
	fake *slackfake.Server
	ctx  context.Context
}

// setupFake starts a Slack fake closed at the end of the test.
func setupFake(t *testing.T) testBundle {
	t.Helper()
	fake := slackfake.New()
	t.Cleanup(fake.Close)
	return testBundle{fake: fake, ctx: t.Context()}
}

// newBot returns a bot sender pointed at the fake.
func newBot(fake *slackfake.Server) *BotSender {
	return NewBotSender(fake.Token(), fake.URL(), &http.Client{})
}

func TestBotSenderPost(t *testing.T) {
	t.Parallel()
	b := setupFake(t)
	s := newBot(b.fake)
	a := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour)

	posted, err := s.Post(b.ctx, "C0ALERTS", a, "")
	if err != nil {
		t.Fatalf("Post: %v", err)
	}
	msgs, err := b.fake.WaitMessages(b.ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if posted.Channel != "C0ALERTS" || posted.TS == "" || posted.TS != m.TS {
		t.Errorf("Posted = %+v, fake recorded ts %q", posted, m.TS)
	}
	r := Render(a)
	if m.Method != "chat.postMessage" || m.Channel != "C0ALERTS" || m.Text != r.Text || m.ThreadTS != "" {
		t.Errorf("message = %+v, want text %q in C0ALERTS", m, r.Text)
	}
	if got, want := string(m.Blocks), blocksJSON(t, r.Blocks); got != want {
		t.Errorf("blocks =\n%s\nwant\n%s", got, want)
	}
	if m.Metadata == nil {
		t.Fatal("no metadata arrived")
	}
	wantPayload := map[string]any{"study_id": testStudyID, "rule": "over_allocation", "external_url": "https://google.com", "state": "firing"}
	if m.Metadata.EventType != "taskflow_alert" || !maps.Equal(m.Metadata.EventPayload, wantPayload) {
		t.Errorf("metadata = %+v, want taskflow_alert %v", *m.Metadata, wantPayload)
	}
	if !s.Threads() {
		t.Error("a bot sender should support threads")
	}
}

func TestBotSenderThreadAndUpdate(t *testing.T) {
	t.Parallel()
	b := setupFake(t)
	s := newBot(b.fake)
	firing := studyAlert(rules.Stalled, rules.Firing, 6*time.Hour)
	resolved := studyAlert(rules.Stalled, rules.Resolved, 8*time.Hour)
	resolved.Transition.At = testAt.Add(2 * time.Hour)

	first, err := s.Post(b.ctx, "C0ALERTS", firing, "")
	if err != nil {
		t.Fatalf("Post firing: %v", err)
	}
	reply, err := s.Post(b.ctx, "C0ALERTS", resolved, first.TS)
	if err != nil {
		t.Fatalf("Post reply: %v", err)
	}
	if err := s.Update(b.ctx, "C0ALERTS", first.TS, firing, resolved); err != nil {
		t.Fatalf("Update: %v", err)
	}

	msgs := b.fake.Messages()
	if len(msgs) != 2 || msgs[1].ThreadTS != first.TS || msgs[1].TS != reply.TS {
		t.Fatalf("messages = %+v, want a reply in thread %s", msgs, first.TS)
	}
	if got := msgs[1].Metadata.EventPayload["state"]; got != "resolved" {
		t.Errorf("reply state = %v, want resolved", got)
	}
	updates := b.fake.Updates()
	if len(updates) != 1 || updates[0].TS != first.TS || updates[0].Channel != "C0ALERTS" {
		t.Fatalf("updates = %+v, want one of %s", updates, first.TS)
	}
	want := RenderResolvedOriginal(firing, resolved)
	if updates[0].Text != want.Text || string(updates[0].Blocks) != blocksJSON(t, want.Blocks) {
		t.Errorf("update text = %q, want %q", updates[0].Text, want.Text)
	}
	cur, ok := b.fake.Current(first.TS)
	if !ok || cur.Text != want.Text {
		t.Errorf("current message = %+v, want the resolved rendering", cur)
	}
	if cur.Metadata == nil || cur.Metadata.EventPayload["state"] != "firing" {
		t.Errorf("the updated message should keep its firing metadata, got %+v", cur.Metadata)
	}
}

func TestBotSenderMessageGone(t *testing.T) {
	t.Parallel()
	b := setupFake(t)
	s := newBot(b.fake)
	firing := urlAlert(rules.OverCapacity, rules.Firing, googleCounts(), time.Hour)
	resolved := urlAlert(rules.OverCapacity, rules.Resolved, googleCounts(), 2*time.Hour)
	first, err := s.Post(b.ctx, "C0ALERTS", firing, "")
	if err != nil {
		t.Fatalf("Post: %v", err)
	}
	b.fake.Delete(first.TS)

	tests := []struct {
		name string
		call func() error
		code string
	}{
		{
			// Updating a deleted message.
			name: "update", code: "message_not_found",
			call: func() error { return s.Update(b.ctx, "C0ALERTS", first.TS, firing, resolved) },
		},
		{
			// Replying in the thread of a deleted message.
			name: "thread reply", code: "thread_not_found",
			call: func() error { _, err := s.Post(b.ctx, "C0ALERTS", resolved, first.TS); return err },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !IsMessageGone(err) {
				t.Fatalf("IsMessageGone(%v) = false", err)
			}
			if v := Classify(err); v.Retryable || v.Reason != tt.code {
				t.Errorf("Classify = %+v, want permanent %s", v, tt.code)
			}
		})
	}
}

func TestBotSenderWrongToken(t *testing.T) {
	t.Parallel()
	b := setupFake(t)
	s := NewBotSender("xoxb-wrong-123-secretpart", b.fake.URL(), nil)
	_, err := s.Post(b.ctx, "C0ALERTS", studyAlert(rules.Stalled, rules.Firing, time.Hour), "")
	if v := Classify(err); v.Retryable || v.Reason != "invalid_auth" {
		t.Errorf("Classify(%v) = %+v, want permanent invalid_auth", err, v)
	}
	if strings.Contains(err.Error(), "secretpart") {
		t.Errorf("error %q shows the token", err)
	}
	if n := len(b.fake.Messages()); n != 0 {
		t.Errorf("%d messages accepted with a wrong token", n)
	}
}

func TestWebhookSenderPost(t *testing.T) {
	t.Parallel()
	b := setupFake(t)
	s := NewWebhookSender(b.fake.WebhookURL(), &http.Client{})
	a := urlAlert(rules.CapacityIncrease, rules.Event, googleCounts(), 0)

	posted, err := s.Post(b.ctx, "ignored-channel", a, "1700000000.000100")
	if err != nil {
		t.Fatalf("Post: %v", err)
	}
	if posted != (Posted{}) {
		t.Errorf("Posted = %+v, want empty", posted)
	}
	posts, err := b.fake.WaitWebhookPosts(b.ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	r := Render(a)
	if posts[0].Text != r.Text || string(posts[0].Blocks) != blocksJSON(t, r.Blocks) {
		t.Errorf("post = %+v, want the rendering", posts[0])
	}
	var body map[string]any
	if err := json.Unmarshal(posts[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"metadata", "channel", "thread_ts"} {
		if _, ok := body[key]; ok {
			t.Errorf("webhook body has %q: %s", key, posts[0].Body)
		}
	}
	if s.Threads() {
		t.Error("a webhook sender cannot thread")
	}
	if err := s.Update(b.ctx, "", "1", a, a); !errors.Is(err, ErrUpdateUnsupported) {
		t.Errorf("Update = %v, want ErrUpdateUnsupported", err)
	}
}

func TestWebhookSenderErrorsHideURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault *slackfake.Fault // nil: the server is closed
		want  Verdict
	}{
		{
			// Slack is down.
			name: "server error", fault: &slackfake.Fault{Status: 500},
			want: Verdict{Retryable: true, Reason: "http 500"},
		},
		{
			// The webhook's channel is gone: Slack's code is kept.
			name: "channel not found", fault: &slackfake.Fault{Status: 404, SlackError: "channel_not_found"},
			want: Verdict{Reason: "channel_not_found"},
		},
		{
			// The webhook was revoked.
			name: "invalid token", fault: &slackfake.Fault{Status: 403, SlackError: "invalid_token"},
			want: Verdict{Reason: "invalid_token"},
		},
		{
			// Webhooks rate-limit with Retry-After too.
			name: "rate limited", fault: &slackfake.Fault{Status: 429, RetryAfter: "3"},
			want: Verdict{Retryable: true, RetryAfter: 3 * time.Second, Reason: "rate limited"},
		},
		{
			// The dropped connection's error names the URL in net/http.
			name: "connection dropped", fault: &slackfake.Fault{CloseConn: true},
			want: Verdict{Retryable: true},
		},
		{
			// Nothing listens any more.
			name: "connection refused",
			want: Verdict{Retryable: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupFake(t)
			webhookURL := b.fake.WebhookURL()
			if tt.fault == nil {
				b.fake.Close()
			} else {
				b.fake.FailNext("", *tt.fault, 1)
			}
			s := NewWebhookSender(webhookURL, &http.Client{})
			_, err := s.Post(b.ctx, "", studyAlert(rules.PollFailing, rules.Firing, time.Hour), "")
			if err == nil {
				t.Fatal("Post succeeded")
			}
			secret := webhookURL[strings.LastIndex(webhookURL, "/")+1:]
			v := Classify(err)
			for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), v.Reason} {
				if strings.Contains(s, secret) {
					t.Errorf("%q shows the webhook secret", s)
				}
			}
			if v.Retryable != tt.want.Retryable || v.RetryAfter != tt.want.RetryAfter ||
				(tt.want.Reason != "" && v.Reason != tt.want.Reason) {
				t.Errorf("Classify(%v) = %+v, want %+v", err, v, tt.want)
			}
		})
	}
}

func TestLogSender(t *testing.T) {
	t.Parallel()
	var buf testkit.SyncBuffer
	s := NewLogSender(&buf)
	s.now = func() time.Time { return testAt }

	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour)
			a.StudyName = fmt.Sprintf("Study & %d", i)
			thread := ""
			if i%2 == 0 {
				thread = "1700000000.000100"
			}
			if _, err := s.Post(t.Context(), "C0ALERTS", a, thread); err != nil {
				t.Errorf("Post: %v", err)
			}
		})
	}
	wg.Wait()
	if s.Threads() {
		t.Error("a log sender cannot thread")
	}

	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	lines := 0
	for sc.Scan() {
		lines++
		var got map[string]any
		if err := json.Unmarshal(sc.Bytes(), &got); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", lines, err, sc.Bytes())
		}
		for k, want := range map[string]any{
			"time": "2025-03-04T12:05:00Z", "channel": "C0ALERTS", "study_id": testStudyID,
			"rule": "over_allocation", "external_url": "https://google.com", "state": "firing",
		} {
			if got[k] != want {
				t.Errorf("line %d: %s = %v, want %v", lines, k, got[k], want)
			}
		}
		name, _ := got["study_name"].(string)
		text, _ := got["text"].(string)
		if !strings.HasPrefix(name, "Study & ") || !strings.Contains(text, "“"+name+"”") {
			t.Errorf("line %d: text %q should name %q unescaped", lines, text, name)
		}
		var i int
		if _, err := fmt.Sscanf(name, "Study & %d", &i); err != nil {
			t.Fatalf("line %d: study name %q: %v", lines, name, err)
		}
		if _, has := got["thread_ts"]; has != (i%2 == 0) {
			t.Errorf("line %d: thread_ts present = %v for post %d", lines, has, i)
		}
	}
	if lines != n {
		t.Errorf("got %d lines, want %d", lines, n)
	}
}

// Slack refusing the blocks still delivers the alert: the text fallback goes
// out alone, with its metadata, instead of the alert being failed for good.
func TestSendersFallBackToTextWhenBlocksAreRefused(t *testing.T) {
	t.Parallel()
	a := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour)
	r := Render(a)

	t.Run("bot post", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		b.fake.FailNext("C0ALERTS", slackfake.Fault{SlackError: "invalid_blocks"}, 1)
		if _, err := newBot(b.fake).Post(b.ctx, "C0ALERTS", a, ""); err != nil {
			t.Fatalf("Post: %v", err)
		}
		msgs := b.fake.Messages()
		if len(msgs) != 1 || msgs[0].Text != r.Text || len(msgs[0].Blocks) != 0 || msgs[0].Metadata == nil {
			t.Fatalf("messages = %+v, want one text-only message with metadata", msgs)
		}
		if n := len(b.fake.Requests()); n != 2 {
			t.Errorf("%d requests, want the refused one and the text-only one", n)
		}
	})
	t.Run("bot update", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		s := newBot(b.fake)
		posted, err := s.Post(b.ctx, "C0ALERTS", a, "")
		if err != nil {
			t.Fatal(err)
		}
		resolved := urlAlert(rules.OverAllocation, rules.Resolved, googleCounts(), 2*time.Hour)
		b.fake.FailNext("C0ALERTS", slackfake.Fault{SlackError: "invalid_blocks"}, 1)
		if err := s.Update(b.ctx, posted.Channel, posted.TS, a, resolved); err != nil {
			t.Fatalf("Update: %v", err)
		}
		cur, ok := b.fake.Current(posted.TS)
		if want := RenderResolvedOriginal(a, resolved).Text; !ok || cur.Text != want || string(cur.Blocks) != "[]" {
			t.Fatalf("message now %+v, want text %q and its old blocks cleared", cur, want)
		}
	})
	t.Run("incoming webhook", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		b.fake.FailNext("", slackfake.Fault{SlackError: "invalid_blocks"}, 1)
		if _, err := NewWebhookSender(b.fake.WebhookURL(), &http.Client{}).Post(b.ctx, "", a, ""); err != nil {
			t.Fatalf("Post: %v", err)
		}
		posts := b.fake.WebhookPosts()
		if len(posts) != 1 || posts[0].Text != r.Text || len(posts[0].Blocks) != 0 {
			t.Fatalf("posts = %+v, want one text-only post", posts)
		}
	})
	t.Run("other permanent errors are not retried", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		b.fake.FailNext("C0ALERTS", slackfake.Fault{SlackError: "channel_not_found"}, 1)
		if _, err := newBot(b.fake).Post(b.ctx, "C0ALERTS", a, ""); Classify(err).Reason != "channel_not_found" {
			t.Fatalf("Post = %v, want channel_not_found", err)
		}
		if n := len(b.fake.Requests()); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	})
}
