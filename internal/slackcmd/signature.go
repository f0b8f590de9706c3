package slackcmd

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Headers Slack signs requests with.
const (
	HeaderSignature = "X-Slack-Signature"
	HeaderTimestamp = "X-Slack-Request-Timestamp"
)

// MaxRequestAge is how far a request's timestamp may be from now, in either
// direction, before it is refused as a possible replay (Slack's own advice).
const MaxRequestAge = 5 * time.Minute

// signatureVersion prefixes both the signed base string and the signature.
const signatureVersion = "v0"

// Signature verification errors. They all mean "answer 401 and do nothing";
// they are distinct so logs can say why.
var (
	// ErrMissingSignature means a signature or timestamp header is absent,
	// or no signing secret is configured.
	ErrMissingSignature = errors.New("slack request is not signed")
	// ErrBadSignature means the headers are malformed or the signature does
	// not match the body.
	ErrBadSignature = errors.New("slack request signature is invalid")
	// ErrStaleRequest means the signature matches but the timestamp is more
	// than MaxRequestAge away from now.
	ErrStaleRequest = errors.New("slack request timestamp is too old or in the future")
)

// VerifySignature checks Slack's request signature: X-Slack-Signature must be
// "v0=" + hex(HMAC-SHA256(secret, "v0:" + X-Slack-Request-Timestamp + ":" +
// body)), compared in constant time, and the timestamp must be within
// MaxRequestAge of now. It returns nil or an error matching one of the
// sentinels above; errors never contain the secret or the signature.
func VerifySignature(secret []byte, header http.Header, body []byte, now time.Time) error {
	if len(secret) == 0 {
		return fmt.Errorf("%w: no signing secret configured", ErrMissingSignature)
	}
	timestamp := header.Get(HeaderTimestamp)
	signature := header.Get(HeaderSignature)
	if timestamp == "" || signature == "" {
		return fmt.Errorf("%w: missing %s or %s header", ErrMissingSignature, HeaderSignature, HeaderTimestamp)
	}
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: timestamp is not a unix time", ErrBadSignature)
	}
	hexSig, ok := strings.CutPrefix(signature, signatureVersion+"=")
	if !ok {
		return fmt.Errorf("%w: unknown signature version", ErrBadSignature)
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return fmt.Errorf("%w: signature is not hexadecimal", ErrBadSignature)
	}
	if !hmac.Equal(got, sign(secret, timestamp, body)) {
		return fmt.Errorf("%w: signature does not match", ErrBadSignature)
	}
	// Compare in seconds: converting a hostile timestamp to a time.Duration
	// could overflow.
	age := now.Unix() - ts
	if age < 0 {
		age = -age
	}
	if age < 0 || age > int64(MaxRequestAge/time.Second) {
		return fmt.Errorf("%w: signed at unix time %d", ErrStaleRequest, ts)
	}
	return nil
}

// Sign returns the X-Slack-Signature value Slack would send for body at the
// given unix timestamp. The worker only verifies; fakes and tests sign.
func Sign(secret []byte, timestamp string, body []byte) string {
	return signatureVersion + "=" + hex.EncodeToString(sign(secret, timestamp, body))
}

// sign is HMAC-SHA256(secret, "v0:" + timestamp + ":" + body).
func sign(secret []byte, timestamp string, body []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signatureVersion + ":" + timestamp + ":"))
	mac.Write(body)
	return mac.Sum(nil)
}
