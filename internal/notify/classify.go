package notify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/slack-go/slack"
)

// Verdict is what the dispatcher should do after a failed send.
type Verdict struct {
	// Retryable says the same message may succeed later.
	Retryable bool
	// RetryAfter is how long Slack asked us to wait (0 when it did not say).
	RetryAfter time.Duration
	// Reason is a short, secret-free explanation to record and log: the
	// Slack error code when there is one.
	Reason string
}

// isRetryableSlackCode reports whether a Slack Web API error code describes
// Slack's trouble rather than ours. Every other code is permanent: retrying
// the same request cannot fix a missing channel, a revoked token or invalid
// blocks.
func isRetryableSlackCode(code string) bool {
	switch code {
	case "ratelimited", "rate_limited", "internal_error", "fatal_error",
		"service_unavailable", "request_timeout", "team_added_to_org":
		return true
	}
	return false
}

// isMessageGoneCode reports whether a chat.update or thread-reply error code
// means the original message can no longer be used; a fresh post still can.
func isMessageGoneCode(code string) bool {
	switch code {
	case "message_not_found", "thread_not_found", "cant_update_message", "edit_window_closed":
		return true
	}
	return false
}

// Classify maps a send error to a retry decision. It is the one place that
// knows how slack-go, net/http and the senders report failures. A nil error
// yields the zero Verdict. Anything it does not recognise is permanent, so a
// message can never be retried forever for a reason nobody understood.
func Classify(err error) Verdict {
	if err == nil {
		return Verdict{}
	}

	var rateLimited *slack.RateLimitedError
	if errors.As(err, &rateLimited) {
		return Verdict{Retryable: true, RetryAfter: rateLimited.RetryAfter, Reason: "rate limited"}
	}

	var webhookErr *WebhookError
	if errors.As(err, &webhookErr) {
		v := classifyStatus(webhookErr.StatusCode)
		if webhookErr.Code != "" {
			v.Reason = webhookErr.Code
		}
		return v
	}

	var slackErr slack.SlackErrorResponse
	if errors.As(err, &slackErr) {
		code := slackErr.Err
		if code == "" {
			code = "unknown_slack_error"
		}
		return Verdict{Retryable: isRetryableSlackCode(code), Reason: code}
	}

	var statusErr slack.StatusCodeError
	if errors.As(err, &statusErr) {
		return classifyStatus(statusErr.Code)
	}

	if errors.Is(err, ErrUpdateUnsupported) {
		return Verdict{Reason: "update unsupported"}
	}

	// Shutdown or a caller's deadline: the message is fine, try it later.
	if errors.Is(err, context.Canceled) {
		return Verdict{Retryable: true, Reason: "canceled"}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Verdict{Retryable: true, Reason: "timeout"}
	}

	// slack-go returns the strconv error itself when a 429 carries a
	// Retry-After that is not a number of seconds; it is still a rate limit.
	var numErr *strconv.NumError
	if errors.As(err, &numErr) {
		return Verdict{Retryable: true, Reason: "rate limited (unreadable Retry-After)"}
	}

	if isNetworkError(err) {
		return Verdict{Retryable: true, Reason: "network: " + networkDetail(err)}
	}

	return Verdict{Reason: "unexpected: " + redactSecrets(err.Error())}
}

// classifyStatus decides on an HTTP status that came without a Slack error code.
func classifyStatus(code int) Verdict {
	reason := fmt.Sprintf("http %d", code)
	switch {
	case code == http.StatusTooManyRequests:
		return Verdict{Retryable: true, Reason: "rate limited"}
	case code >= 500, code == http.StatusRequestTimeout:
		return Verdict{Retryable: true, Reason: reason}
	default:
		return Verdict{Reason: reason}
	}
}

// IsMessageGone reports whether err says the message to update or reply to
// no longer exists or can no longer be edited. The dispatcher then posts a
// new message instead.
func IsMessageGone(err error) bool {
	var slackErr slack.SlackErrorResponse
	return errors.As(err, &slackErr) && isMessageGoneCode(slackErr.Err)
}

// isNetworkError reports whether err is a transport failure worth retrying:
// refused or reset connections, timeouts, DNS trouble, a connection closed
// mid-response. Configuration mistakes that net/http also reports as
// *url.Error (an unsupported scheme, a bad certificate) are not.
func isNetworkError(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// networkDetail describes a network error without the URL it was sent to.
func networkDetail(err error) string {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return redactSecrets(urlErr.Op + ": " + urlErr.Err.Error())
	}
	return redactSecrets(err.Error())
}

// secretPattern matches what must never reach a log: Slack tokens and the
// path of any URL (incoming-webhook URLs carry their secret in the path).
var secretPattern = regexp.MustCompile(`xox[a-z]-[A-Za-z0-9-]+|([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s"']+)/[^\s"']*`)

// redactSecrets removes Slack tokens and URL paths from a message.
func redactSecrets(s string) string {
	return secretPattern.ReplaceAllStringFunc(s, func(m string) string {
		if sub := secretPattern.FindStringSubmatch(m); len(sub) > 1 && sub[1] != "" {
			return sub[1] + "/[redacted]"
		}
		return "[redacted token]"
	})
}
