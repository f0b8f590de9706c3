package slackcmd_test

import (
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/slackcmd"
)

// signingExample is Slack's documented request-signing example.
type signingExample struct {
	secret    []byte
	timestamp string
	body      []byte
	expected  string
}

func loadSigningExample(t *testing.T) signingExample {
	t.Helper()
	data, err := os.ReadFile("testdata/slack-signing-example.txt")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\r\n")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("unreadable fixture line %q", line)
		}
		fields[key] = value
	}
	return signingExample{
		secret:    []byte(fields["signing_secret"]),
		timestamp: fields["timestamp"],
		body:      []byte(fields["body"]),
		expected:  fields["expected_signature"],
	}
}

func TestVerifySignatureSlackExample(t *testing.T) {
	t.Parallel()
	ex := loadSigningExample(t)
	if ex.expected != "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503" {
		t.Fatalf("fixture expected signature is %q", ex.expected)
	}
	if got := slackcmd.Sign(ex.secret, ex.timestamp, ex.body); got != ex.expected {
		t.Fatalf("Sign = %q; want Slack's %q", got, ex.expected)
	}
	ts, err := strconv.ParseInt(ex.timestamp, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	signedAt := time.Unix(ts, 0)
	header := func(ts, sig string) http.Header {
		h := http.Header{}
		if ts != "" {
			h.Set(slackcmd.HeaderTimestamp, ts)
		}
		if sig != "" {
			h.Set(slackcmd.HeaderSignature, sig)
		}
		return h
	}
	altered := append([]byte(nil), ex.body...)
	altered[len(altered)-1] ^= 1

	tests := []struct {
		name   string
		secret []byte
		header http.Header
		body   []byte
		now    time.Time
		want   error
	}{
		// Slack's own example verifies.
		{"documented example", ex.secret, header(ex.timestamp, ex.expected), ex.body, signedAt, nil},
		// A request a few minutes old is still fresh.
		{"four minutes old", ex.secret, header(ex.timestamp, ex.expected), ex.body, signedAt.Add(4 * time.Minute), nil},
		// A clock slightly behind the sender is fine too.
		{"four minutes early", ex.secret, header(ex.timestamp, ex.expected), ex.body, signedAt.Add(-4 * time.Minute), nil},
		// More than five minutes old is a possible replay.
		{"stale", ex.secret, header(ex.timestamp, ex.expected), ex.body, signedAt.Add(5*time.Minute + time.Second), slackcmd.ErrStaleRequest},
		// More than five minutes in the future is refused as well.
		{"future", ex.secret, header(ex.timestamp, ex.expected), ex.body, signedAt.Add(-6 * time.Minute), slackcmd.ErrStaleRequest},
		// One flipped bit of the body breaks the signature.
		{"body altered", ex.secret, header(ex.timestamp, ex.expected), altered, signedAt, slackcmd.ErrBadSignature},
		// Another secret does not verify.
		{"wrong secret", []byte("another-secret"), header(ex.timestamp, ex.expected), ex.body, signedAt, slackcmd.ErrBadSignature},
		// A changed timestamp is part of what is signed.
		{"timestamp altered", ex.secret, header("1531420619", ex.expected), ex.body, signedAt, slackcmd.ErrBadSignature},
		// The signature header is required.
		{"missing signature", ex.secret, header(ex.timestamp, ""), ex.body, signedAt, slackcmd.ErrMissingSignature},
		// The timestamp header is required.
		{"missing timestamp", ex.secret, header("", ex.expected), ex.body, signedAt, slackcmd.ErrMissingSignature},
		// No headers at all.
		{"no headers", ex.secret, http.Header{}, ex.body, signedAt, slackcmd.ErrMissingSignature},
		// A timestamp that is not a number is refused.
		{"non-numeric timestamp", ex.secret, header("yesterday", ex.expected), ex.body, signedAt, slackcmd.ErrBadSignature},
		// Only v0 signatures exist.
		{"other version", ex.secret, header(ex.timestamp, "v1="+strings.TrimPrefix(ex.expected, "v0=")), ex.body, signedAt, slackcmd.ErrBadSignature},
		// Hex is required.
		{"not hex", ex.secret, header(ex.timestamp, "v0=zz"), ex.body, signedAt, slackcmd.ErrBadSignature},
		// A truncated signature does not match.
		{"truncated", ex.secret, header(ex.timestamp, ex.expected[:20]), ex.body, signedAt, slackcmd.ErrBadSignature},
		// Without a configured secret nothing verifies.
		{"no secret", nil, header(ex.timestamp, ex.expected), ex.body, signedAt, slackcmd.ErrMissingSignature},
		// An extreme timestamp neither overflows nor passes.
		{"extreme timestamp", ex.secret, header("-9223372036854775808", slackcmd.Sign(ex.secret, "-9223372036854775808", ex.body)), ex.body, signedAt, slackcmd.ErrStaleRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := slackcmd.VerifySignature(tt.secret, tt.header, tt.body, tt.now)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("VerifySignature = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifySignature = %v; want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), string(ex.secret)) || strings.Contains(err.Error(), ex.expected) {
				t.Fatalf("error %q leaks the secret or the signature", err)
			}
		})
	}
}
