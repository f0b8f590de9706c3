package prolific

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Headers of a Prolific webhook delivery.
const (
	// HeaderWebhookTimestamp carries the unix time the delivery was signed.
	HeaderWebhookTimestamp = "X-Prolific-Request-Timestamp"
	// HeaderWebhookSignature carries base64(HMAC-SHA256(secret, timestamp + body)).
	HeaderWebhookSignature = "X-Prolific-Request-Signature"
	// HeaderWebhookEventID is the same across retries of one event, so
	// receivers deduplicate on it.
	HeaderWebhookEventID = "X-Event-ID"
)

// DefaultWebhookMaxSkew is the replay window VerifyWebhook uses when given
// a non-positive maxSkew, the same five minutes Slack uses.
const DefaultWebhookMaxSkew = 5 * time.Minute

// Webhook verification errors.
var (
	// ErrBadSignature means the delivery is not provably from Prolific: a
	// header is missing, unreadable, or the signature does not match.
	ErrBadSignature = errors.New("prolific webhook: missing or invalid signature")
	// ErrStaleWebhook means the signature is valid but the timestamp is
	// outside the allowed window, as a replayed delivery would be.
	ErrStaleWebhook = errors.New("prolific webhook: timestamp outside the allowed window")
)

// WebhookEvent is the part of a webhook payload the worker acts on.
type WebhookEvent struct {
	// ResourceID is the study id for study.* events.
	ResourceID string `json:"resource_id"`
	EventType  string `json:"event_type"`
	// Status is the new study status for study.status.change, else "".
	Status string `json:"status"`
}

// SignWebhook computes the signature Prolific sends for body at timestamp.
// The worker only verifies; the fake API and tests sign.
func SignWebhook(secret []byte, timestamp string, body []byte) string {
	return base64.StdEncoding.EncodeToString(webhookMAC(secret, timestamp, body))
}

// webhookMAC is HMAC-SHA256(secret, timestamp + body).
func webhookMAC(secret []byte, timestamp string, body []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write(body)
	return mac.Sum(nil)
}

// VerifyWebhook checks a delivery's signature in constant time, then that
// its timestamp is within maxSkew of now (DefaultWebhookMaxSkew when
// maxSkew <= 0). timestamp and signature are the raw header values; the
// timestamp is unix seconds, or milliseconds when it is above 1e12. It
// returns nil, or an error matching ErrBadSignature or ErrStaleWebhook
// that never contains the secret.
func VerifyWebhook(secret []byte, timestamp, signature string, body []byte, now time.Time, maxSkew time.Duration) error {
	if len(secret) == 0 {
		return fmt.Errorf("%w: no webhook secret configured", ErrBadSignature)
	}
	if timestamp == "" || signature == "" {
		return fmt.Errorf("%w: missing %s or %s header", ErrBadSignature, HeaderWebhookTimestamp, HeaderWebhookSignature)
	}
	sent, ok := parseWebhookTimestamp(timestamp)
	if !ok {
		return fmt.Errorf("%w: timestamp is not a unix time", ErrBadSignature)
	}
	got, ok := decodeSignature(signature)
	if !ok {
		return fmt.Errorf("%w: signature is not base64", ErrBadSignature)
	}
	if !hmac.Equal(got, webhookMAC(secret, timestamp, body)) {
		return fmt.Errorf("%w: signature does not match", ErrBadSignature)
	}
	if maxSkew <= 0 {
		maxSkew = DefaultWebhookMaxSkew
	}
	skew := now.Sub(sent)
	if skew < 0 {
		skew = -skew
	}
	if skew > maxSkew {
		return fmt.Errorf("%w: signed at %s, %s away from now (allowed %s)",
			ErrStaleWebhook, sent.UTC().Format(time.RFC3339), skew.Round(time.Second), maxSkew)
	}
	return nil
}

// parseWebhookTimestamp reads unix seconds (fractions allowed) or, for
// values above 1e12, unix milliseconds.
func parseWebhookTimestamp(s string) (time.Time, bool) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return time.Time{}, false
	}
	if v > 1e12 {
		v /= 1e3
	}
	if v > 1e11 {
		return time.Time{}, false
	}
	secs, frac := math.Modf(v)
	return time.Unix(int64(secs), int64(frac*1e9)), true
}

// decodeSignature accepts standard base64 with or without padding.
func decodeSignature(s string) ([]byte, bool) {
	s = strings.TrimSpace(s)
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, true
	}
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, true
	}
	return nil, false
}

// ParseWebhookEvent decodes a verified webhook body, ignoring unknown
// fields. A body that is not a JSON object or names no resource yields an
// error matching ErrMalformed.
func ParseWebhookEvent(body []byte) (WebhookEvent, error) {
	var ev WebhookEvent
	if err := unmarshalObject(body, &ev); err != nil {
		return WebhookEvent{}, fmt.Errorf("%w: webhook body: %w", ErrMalformed, err)
	}
	ev.ResourceID = strings.TrimSpace(ev.ResourceID)
	if ev.ResourceID == "" {
		return WebhookEvent{}, fmt.Errorf("%w: webhook body has no resource_id", ErrMalformed)
	}
	return ev, nil
}
