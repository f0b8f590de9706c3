package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/slackcmd"
)

const (
	signingSecret = "8f742231b10e8888abcd99yyyzzz85a5"
	webhookSecret = "prolific-webhook-test-secret"
)

// slash posts a slash command from team T1 to the running worker exactly as
// Slack does, signed with secret.
func (b *bundle) slash(t *testing.T, text, secret string) (int, string) {
	t.Helper()
	return b.slashAs(t, "T1", text, secret)
}

// slashAs is slash from the given team.
func (b *bundle) slashAs(t *testing.T, team, text, secret string) (int, string) {
	t.Helper()
	body := url.Values{"team_id": {team}, "channel_id": {channel}, "user_id": {"U1"}, "command": {"/taskflow"}, "text": {text},
		"response_url": {"https://hooks.slack.com/commands/" + team + "/1/x"}}.Encode()
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req, err := http.NewRequest(http.MethodPost, "http://"+b.app.Addr()+"/slack/commands", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(slackcmd.HeaderTimestamp, ts)
	req.Header.Set(slackcmd.HeaderSignature, slackcmd.Sign([]byte(secret), ts, []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(reply)
}

func TestSlashCommandsAndWebhooksThroughTheWorker(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]string{"SLACK_SIGNING_SECRET": signingSecret, "PROLIFIC_WEBHOOK_SECRET": webhookSecret,
		"POLL_SCHEDULE": "@every 1h"})
	b.prolific.SetStudy(prolifictest.Study{ID: studyID, Name: "Wired study", URLs: progress(10, 4, 0)})
	b.start(t)
	// The start-up cycle finds nothing to poll.
	b.settle(t)

	// A forged request changes nothing.
	if code, _ := b.slash(t, "watch "+studyID, "wrong-secret"); code != http.StatusUnauthorized {
		t.Fatalf("forged command = %d, want 401", code)
	}
	code, reply := b.slash(t, "watch "+studyID, signingSecret)
	if code != http.StatusOK || !strings.Contains(reply, "ephemeral") || !strings.Contains(reply, "Wired study") {
		t.Fatalf("watch = %d %s", code, reply)
	}
	// The watch checks the study with Prolific (one progress fetch) and
	// triggers a poll at once, long before the hourly tick.
	b.waitPolls(t, studyID, 2)
	b.waitScheduled(t, studyID)

	// A signed progress webhook polls the study again within the hour.
	body, _ := json.Marshal(map[string]string{"event_type": prolific.EventStudyProgressChange, "resource_id": studyID})
	status, err := b.prolific.SendWebhook(context.Background(), "http://"+b.app.Addr()+"/webhooks/prolific", []byte(webhookSecret), "evt-1", body)
	if err != nil || status != http.StatusOK {
		t.Fatalf("webhook = %d, %v", status, err)
	}
	b.waitPolls(t, studyID, 3)
	b.waitScheduled(t, studyID)
	// The same event again is a duplicate and polls nothing more.
	if status, err := b.prolific.SendWebhook(context.Background(), "http://"+b.app.Addr()+"/webhooks/prolific", []byte(webhookSecret), "evt-1", body); err != nil || status != http.StatusOK {
		t.Fatalf("duplicate webhook = %d, %v", status, err)
	}
	// The handler dedupes before answering: a duplicate leaves the study
	// scheduled for the next hourly tick.
	if st, err := b.store.GetStudy(context.Background(), studyID); err != nil || time.Until(st.NextPollAt) < 30*time.Minute {
		t.Errorf("after a duplicate webhook the study is due at %v (%v), want the next hourly tick", st.NextPollAt, err)
	}
	code, reply = b.slash(t, "list", signingSecret)
	if code != http.StatusOK || !strings.Contains(reply, studyID) {
		t.Fatalf("list = %d %s", code, reply)
	}
	if got := b.prolific.Requests(studyID); got != 3 {
		t.Errorf("progress fetched %d times, want 3 (the watch's check, its poll, one webhook's poll)", got)
	}
}

// waitScheduled waits until the study's last poll is recorded and it is due
// only at a later tick.
func (b *bundle) waitScheduled(t *testing.T, id string) {
	t.Helper()
	ctx := waitCtx(t)
	for {
		st, err := b.store.GetStudy(ctx, id)
		if err == nil && time.Until(st.NextPollAt) > 30*time.Minute {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("study %s never scheduled for a later tick: %+v, %v", id, st, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
