package app_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// The worker logs every failure it meets, at debug level one line per poll,
// and none of those lines may carry a token, a signing secret or the
// incoming webhook's URL: a 401 from Prolific, Slack refusing the token or
// failing, and forged inbound requests.
func TestLogsNeverCarrySecrets(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"bot token", "incoming webhook"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := setup(t, map[string]string{"SLACK_SIGNING_SECRET": signingSecret, "PROLIFIC_WEBHOOK_SECRET": webhookSecret})
			secrets := []string{token, b.slack.Token(), signingSecret, webhookSecret}
			if mode == "incoming webhook" {
				b.cfg.SlackBotToken, b.cfg.SlackWebhookURL = "", b.slack.WebhookURL()
				// The webhook's secret is its path; its last segment alone must not leak either.
				u := b.slack.WebhookURL()
				secrets = append(secrets, u, u[strings.LastIndex(u, "/")+1:])
				b.slack.FailNext("", slackfake.Fault{Status: http.StatusInternalServerError}, 2)
			} else {
				b.slack.FailNext("", slackfake.Fault{SlackError: "invalid_auth"}, 0)
			}
			b.watch(t, prolifictest.Study{ID: studyID, URLs: progress(10, 4, 0)})
			// Prolific refuses the worker's token: poll_failing fires at once.
			b.prolific.SetToken("another-token")
			b.start(t)

			if code, _ := b.slash(t, "watch "+studyID, "wrong-secret"); code != http.StatusUnauthorized {
				t.Errorf("forged command = %d, want 401", code)
			}
			req, err := http.NewRequest(http.MethodPost, "http://"+b.app.Addr()+"/webhooks/prolific",
				strings.NewReader(`{"resource_id":"`+studyID+`","event_type":"study.progress.change"}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Prolific-Request-Timestamp", "1700000000")
			req.Header.Set("X-Prolific-Request-Signature", "Zm9yZ2Vk")
			if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode/100 == 2 {
				t.Errorf("forged webhook = %v, %v; want refused", resp, err)
			} else {
				resp.Body.Close()
			}

			// Two polls refused (each stops at the status request) and a delivery attempted.
			ctx := waitCtx(t)
			if err := b.prolific.Wait(ctx, func() bool { return b.prolific.TotalRequests() >= 2 && len(b.slack.Requests()) >= 1 }); err != nil {
				t.Fatalf("%v\nlogs:\n%s", err, b.logs.String())
			}
			// The outbox drains: the message was failed (invalid_auth) or delivered after retries.
			b.settle(t)
			logs := b.logs.String()
			for _, want := range []string{"401", "poll"} {
				if !strings.Contains(logs, want) {
					t.Errorf("logs do not mention %q, so the failures were not logged:\n%s", want, logs)
				}
			}
			for _, secret := range secrets {
				if strings.Contains(logs, secret) {
					t.Errorf("logs contain the secret %q:\n%s", secret, logs)
				}
			}
		})
	}
}
