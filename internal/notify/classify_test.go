package notify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// TestClassifySlackErrors classifies the errors slack-go really returns for
// each kind of answer, produced against the fake.
func TestClassifySlackErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault slackfake.Fault
		want  Verdict
	}{
		{
			// A 429 with Retry-After becomes slack-go's RateLimitedError.
			name: "rate limited with Retry-After", fault: slackfake.Fault{Status: 429, RetryAfter: "3"},
			want: Verdict{Retryable: true, RetryAfter: 3 * time.Second, Reason: "rate limited"},
		},
		{
			// A 429 without Retry-After is a StatusCodeError; the dispatcher backs off itself.
			name: "rate limited without Retry-After", fault: slackfake.Fault{Status: 429},
			want: Verdict{Retryable: true, Reason: "rate limited"},
		},
		{
			// slack-go cannot parse an HTTP-date Retry-After and returns the strconv error.
			name: "rate limited with a date", fault: slackfake.Fault{Status: 429, RetryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"},
			want: Verdict{Retryable: true, Reason: "rate limited (unreadable Retry-After)"},
		},
		{
			// Slack's servers failing.
			name: "500", fault: slackfake.Fault{Status: 500},
			want: Verdict{Retryable: true, Reason: "http 500"},
		},
		{
			// A gateway in front of Slack failing.
			name: "503", fault: slackfake.Fault{Status: 503},
			want: Verdict{Retryable: true, Reason: "http 503"},
		},
		{
			// A request timeout is worth another try.
			name: "408", fault: slackfake.Fault{Status: 408},
			want: Verdict{Retryable: true, Reason: "http 408"},
		},
		{
			// Other 4xx statuses will not change on retry.
			name: "404", fault: slackfake.Fault{Status: 404},
			want: Verdict{Reason: "http 404"},
		},
		{
			// The bot is pointed at a channel that does not exist.
			name: "channel_not_found", fault: slackfake.Fault{SlackError: "channel_not_found"},
			want: Verdict{Reason: "channel_not_found"},
		},
		{
			// The bot was not invited.
			name: "not_in_channel", fault: slackfake.Fault{SlackError: "not_in_channel"},
			want: Verdict{Reason: "not_in_channel"},
		},
		{
			// The token is wrong.
			name: "invalid_auth", fault: slackfake.Fault{SlackError: "invalid_auth"},
			want: Verdict{Reason: "invalid_auth"},
		},
		{
			// The text is too long: the same request cannot succeed later.
			// (invalid_blocks is answered by a text-only post; see sender_test.go.)
			name: "msg_too_long", fault: slackfake.Fault{SlackError: "msg_too_long"},
			want: Verdict{Reason: "msg_too_long"},
		},
		{
			// A code this version has never seen stops, recorded under its name.
			name: "unknown Slack code", fault: slackfake.Fault{SlackError: "brand_new_error"},
			want: Verdict{Reason: "brand_new_error"},
		},
		{
			// Slack reports rate limiting in the body too.
			name: "ratelimited code", fault: slackfake.Fault{SlackError: "ratelimited"},
			want: Verdict{Retryable: true, Reason: "ratelimited"},
		},
		{
			// Slack's own failure, in the body.
			name: "internal_error code", fault: slackfake.Fault{SlackError: "internal_error"},
			want: Verdict{Retryable: true, Reason: "internal_error"},
		},
		{
			// Slack's own failure, in the body.
			name: "service_unavailable code", fault: slackfake.Fault{SlackError: "service_unavailable"},
			want: Verdict{Retryable: true, Reason: "service_unavailable"},
		},
		{
			// The connection drops before an answer.
			name: "connection dropped", fault: slackfake.Fault{CloseConn: true},
			want: Verdict{Retryable: true, Reason: "network: Post: EOF"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupFake(t)
			b.fake.FailNext("C0ALERTS", tt.fault, 1)
			_, err := newBot(b.fake).Post(b.ctx, "C0ALERTS", studyAlert(rules.Stalled, rules.Firing, time.Hour), "")
			if err == nil {
				t.Fatal("Post succeeded")
			}
			if got := Classify(err); got != tt.want {
				t.Errorf("Classify(%v) = %+v, want %+v", err, got, tt.want)
			}
		})
	}
}

func TestClassifyTransportErrors(t *testing.T) {
	t.Parallel()

	// Connection refused: the fake is closed before the call.
	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		s := newBot(b.fake)
		b.fake.Close()
		_, err := s.Post(b.ctx, "C0ALERTS", studyAlert(rules.Stalled, rules.Firing, time.Hour), "")
		v := Classify(err)
		if !v.Retryable || !strings.Contains(v.Reason, "connection refused") {
			t.Errorf("Classify(%v) = %+v, want retryable connection refused", err, v)
		}
	})

	// The client's own timeout while Slack hangs.
	t.Run("client timeout", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		b.fake.FailNext("", slackfake.Fault{Hang: true}, 1)
		s := NewBotSender(b.fake.Token(), b.fake.URL(), &http.Client{Timeout: 50 * time.Millisecond})
		_, err := s.Post(b.ctx, "C0ALERTS", studyAlert(rules.Stalled, rules.Firing, time.Hour), "")
		if v := Classify(err); !v.Retryable {
			t.Errorf("Classify(%v) = %+v, want retryable", err, v)
		}
	})

	// Shutdown cancels a send in flight: the message is retried later.
	t.Run("canceled", func(t *testing.T) {
		t.Parallel()
		b := setupFake(t)
		b.fake.FailNext("", slackfake.Fault{Hang: true}, 1)
		ctx, cancel := context.WithCancel(b.ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := newBot(b.fake).Post(ctx, "C0ALERTS", studyAlert(rules.Stalled, rules.Firing, time.Hour), "")
			errc <- err
		}()
		if _, err := b.fake.WaitRequests(b.ctx, 1); err != nil {
			t.Fatal(err)
		}
		cancel()
		err := <-errc
		if v := Classify(err); v != (Verdict{Retryable: true, Reason: "canceled"}) {
			t.Errorf("Classify(%v) = %+v, want retryable canceled", err, v)
		}
	})
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want Verdict
	}{
		{name: "nil", err: nil, want: Verdict{}}, // Nothing failed.
		{
			// Wrapped rate limits keep their wait.
			name: "wrapped rate limit",
			err:  fmt.Errorf("posting: %w", &slack.RateLimitedError{RetryAfter: 7 * time.Second}),
			want: Verdict{Retryable: true, RetryAfter: 7 * time.Second, Reason: "rate limited"},
		},
		{
			// A revoked token stops retries.
			name: "token revoked", err: fmt.Errorf("posting: %w", slack.SlackErrorResponse{Err: "token_revoked"}),
			want: Verdict{Reason: "token_revoked"},
		},
		{
			// Metadata Slack rejects stops retries.
			name: "invalid metadata", err: slack.SlackErrorResponse{Err: "invalid_metadata_schema"},
			want: Verdict{Reason: "invalid_metadata_schema"},
		},
		{
			// Gateway timeouts are retried.
			name: "504", err: slack.StatusCodeError{Code: 504, Status: "504 Gateway Timeout"},
			want: Verdict{Retryable: true, Reason: "http 504"},
		},
		{
			// A truncated body.
			name: "unexpected EOF", err: fmt.Errorf("decoding: %w", io.ErrUnexpectedEOF),
			want: Verdict{Retryable: true, Reason: "network: decoding: unexpected EOF"},
		},
		{
			// A deadline set by the caller.
			name: "deadline", err: fmt.Errorf("posting: %w", context.DeadlineExceeded),
			want: Verdict{Retryable: true, Reason: "timeout"},
		},
		{
			// Senders that cannot update say so once.
			name: "update unsupported", err: ErrUpdateUnsupported,
			want: Verdict{Reason: "update unsupported"},
		},
		{
			// A misconfigured URL is not a network blip.
			name: "unsupported scheme",
			err: func() error {
				_, err := NewBotSender("xoxb-1", "ftp://slack.test/api/", nil).
					Post(t.Context(), "C1", studyAlert(rules.Stalled, rules.Firing, time.Hour), "")
				return err
			}(),
			want: Verdict{Reason: `unexpected: posting stalled firing for study 60aca280709ee40ec37d4885 to Slack channel C1: Post "ftp://slack.test/[redacted]": unsupported protocol scheme "ftp"`},
		},
		{
			// Unknown errors are permanent, with secrets scrubbed from the reason.
			name: "unknown with secrets",
			err:  errors.New("boom at https://hooks.slack.com/services/T1/B2/sekrit with xoxb-123-456-sekrit"),
			want: Verdict{Reason: "unexpected: boom at https://hooks.slack.com/[redacted] with [redacted token]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %+v, want %+v", tt.err, got, tt.want)
			}
		})
	}
}

func TestIsMessageGone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "message_not_found", err: slack.SlackErrorResponse{Err: "message_not_found"}, want: true},     // Deleted.
		{name: "thread_not_found", err: slack.SlackErrorResponse{Err: "thread_not_found"}, want: true},       // Parent deleted.
		{name: "cant_update_message", err: slack.SlackErrorResponse{Err: "cant_update_message"}, want: true}, // Not ours to edit.
		{name: "edit_window_closed", err: slack.SlackErrorResponse{Err: "edit_window_closed"}, want: true},   // Too old to edit.
		{name: "wrapped", err: fmt.Errorf("updating: %w", slack.SlackErrorResponse{Err: "message_not_found"}), want: true},
		{name: "channel_not_found", err: slack.SlackErrorResponse{Err: "channel_not_found"}, want: false}, // A new post fails too.
		{name: "server error", err: slack.StatusCodeError{Code: 500}, want: false},                        // Retry instead.
		{name: "nil", err: nil, want: false}, // Nothing failed.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsMessageGone(tt.err); got != tt.want {
				t.Errorf("IsMessageGone(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
