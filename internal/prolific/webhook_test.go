package prolific

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	secret := []byte("whsec-test-9f3a")
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"event_type":"study.status.change","resource_id":"60d9aadeb86739de712faee0","status":"PAUSED"}`)
	ts := strconv.FormatInt(now.Unix(), 10)
	tsMillis := strconv.FormatInt(now.UnixMilli(), 10)
	old := strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10)
	future := strconv.FormatInt(now.Add(4*time.Minute).Unix(), 10)
	altered := append([]byte(nil), body...)
	altered[len(altered)-3] ^= 1

	tests := []struct {
		name      string
		secret    []byte
		timestamp string
		signature string
		body      []byte
		want      error
	}{
		// A correct delivery.
		{name: "good", secret: secret, timestamp: ts, signature: SignWebhook(secret, ts, body), body: body},
		// The signature without base64 padding.
		{name: "unpadded", secret: secret, timestamp: ts, signature: strings.TrimRight(SignWebhook(secret, ts, body), "="), body: body},
		// A millisecond timestamp.
		{name: "millisecond timestamp", secret: secret, timestamp: tsMillis, signature: SignWebhook(secret, tsMillis, body), body: body},
		// Within the window on the other side.
		{name: "slightly in the future", secret: secret, timestamp: future, signature: SignWebhook(secret, future, body), body: body},
		// One byte of the body changed.
		{name: "altered body", secret: secret, timestamp: ts, signature: SignWebhook(secret, ts, body), body: altered, want: ErrBadSignature},
		// Signed with another secret.
		{name: "wrong secret", secret: secret, timestamp: ts, signature: SignWebhook([]byte("other"), ts, body), body: body, want: ErrBadSignature},
		// The timestamp was changed after signing.
		{name: "altered timestamp", secret: secret, timestamp: future, signature: SignWebhook(secret, ts, body), body: body, want: ErrBadSignature},
		// Signed correctly but too old: a replay.
		{name: "stale", secret: secret, timestamp: old, signature: SignWebhook(secret, old, body), body: body, want: ErrStaleWebhook},
		// No signature header.
		{name: "missing signature", secret: secret, timestamp: ts, signature: "", body: body, want: ErrBadSignature},
		// No timestamp header.
		{name: "missing timestamp", secret: secret, timestamp: "", signature: SignWebhook(secret, "", body), body: body, want: ErrBadSignature},
		// A timestamp that is not a number.
		{name: "bad timestamp", secret: secret, timestamp: "yesterday", signature: SignWebhook(secret, "yesterday", body), body: body, want: ErrBadSignature},
		// A signature that is not base64.
		{name: "not base64", secret: secret, timestamp: ts, signature: "%%%", body: body, want: ErrBadSignature},
		// No secret configured: fail closed.
		{name: "no secret", secret: nil, timestamp: ts, signature: SignWebhook(nil, ts, body), body: body, want: ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := VerifyWebhook(tt.secret, tt.timestamp, tt.signature, tt.body, now, 5*time.Minute)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("VerifyWebhook: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyWebhook error = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), string(secret)) {
				t.Errorf("error %q contains the secret", err)
			}
		})
	}
}

func TestVerifyWebhookDefaultSkew(t *testing.T) {
	t.Parallel()
	secret := []byte("s")
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{}`)
	tests := []struct {
		name string
		age  time.Duration
		want error
	}{
		// Inside the default five minutes.
		{name: "four minutes", age: 4 * time.Minute},
		// Outside it.
		{name: "six minutes", age: 6 * time.Minute, want: ErrStaleWebhook},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := strconv.FormatInt(now.Add(-tt.age).Unix(), 10)
			err := VerifyWebhook(secret, ts, SignWebhook(secret, ts, body), body, now, 0)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("VerifyWebhook error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseWebhookEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		want    WebhookEvent
		wantErr bool
	}{
		// A status change with an unknown extra field.
		{
			name: "status change",
			body: `{"event_type": "study.status.change", "resource_id": "60d9aadeb86739de712faee0", "status": "AWAITING REVIEW", "workspace_id": "w"}`,
			want: WebhookEvent{ResourceID: "60d9aadeb86739de712faee0", EventType: EventStudyStatusChange, Status: "AWAITING REVIEW"},
		},
		// A progress change has no status.
		{
			name: "progress change",
			body: `{"event_type": "study.progress.change", "resource_id": "60d9aadeb86739de712faee0"}`,
			want: WebhookEvent{ResourceID: "60d9aadeb86739de712faee0", EventType: EventStudyProgressChange},
		},
		// Without a resource there is nothing to act on.
		{name: "no resource", body: `{"event_type": "study.status.change"}`, wantErr: true},
		// Not JSON.
		{name: "not json", body: `event`, wantErr: true},
		// A list instead of an object.
		{name: "list", body: `[{"resource_id": "x"}]`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseWebhookEvent([]byte(tt.body))
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("error = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseWebhookEvent = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
