package prolific

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// Sentinel errors. An *APIError matches the HTTP ones through errors.Is, so
// callers decide what to do without looking at status codes.
var (
	// ErrUnauthorized matches 401 and 403 replies: the token is wrong,
	// revoked or lacks access, and retrying will not help.
	ErrUnauthorized = errors.New("prolific: unauthorized")
	// ErrNotFound matches 404 replies. For Progress it means the study is
	// unknown or is not a Taskflow study.
	ErrNotFound = errors.New("prolific: not found")
	// ErrRateLimited matches 429 replies; APIError.RetryAfter says how long
	// to wait when Prolific sent a Retry-After header.
	ErrRateLimited = errors.New("prolific: rate limited")
	// ErrServer matches 5xx replies, which are usually transient.
	ErrServer = errors.New("prolific: server error")
	// ErrMalformed wraps a 2xx body (or a webhook payload) that does not
	// decode or breaks the documented shape, so that a glitch is never
	// mistaken for real data.
	ErrMalformed = errors.New("prolific: malformed payload")
	// ErrTransport wraps failures that produced no HTTP response at all:
	// connection errors and timeouts. The underlying error stays in the
	// chain, so errors.Is(err, context.DeadlineExceeded) works.
	ErrTransport = errors.New("prolific: request failed")
)

// maxErrorText bounds the server-provided text kept in an APIError, so a
// gateway's HTML page does not end up whole in an alert message.
const maxErrorText = 200

// APIError is a non-2xx reply from the Prolific API, decoded leniently
// from whichever error shape the server used.
type APIError struct {
	// StatusCode is the HTTP status of the reply.
	StatusCode int
	// Code is Prolific's error_code rendered as text, "" when absent.
	Code string
	// Title is the short error title (or the "message" field).
	Title string
	// Detail is the longer explanation, flattened to one readable line.
	Detail string
	// RetryAfter is the delay the Retry-After header asked for, 0 if absent.
	RetryAfter time.Duration
	// Endpoint is the method and path that failed, e.g.
	// "GET /api/v1/studies/<id>/access-details-progress/". It never holds the token.
	Endpoint string
}

// Error renders the reply in one line suitable for logs and alert messages.
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("prolific: ")
	if e.Endpoint != "" {
		b.WriteString(e.Endpoint)
		b.WriteString(": ")
	}
	b.WriteString("HTTP ")
	b.WriteString(strconv.Itoa(e.StatusCode))
	title := e.Title
	if title == "" {
		title = http.StatusText(e.StatusCode)
	}
	if title != "" {
		b.WriteString(" ")
		b.WriteString(title)
	}
	if e.Detail != "" && e.Detail != title {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Code != "" {
		b.WriteString(" (error_code ")
		b.WriteString(e.Code)
		b.WriteString(")")
	}
	if e.RetryAfter > 0 {
		b.WriteString(", retry after ")
		b.WriteString(e.RetryAfter.String())
	}
	return b.String()
}

// Is maps the status code onto the package's sentinel errors, so that
// errors.Is(err, ErrNotFound) works on a wrapped *APIError.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	case ErrServer:
		return e.StatusCode >= 500 && e.StatusCode <= 599
	}
	return false
}

// Retryable reports whether repeating the same request later may succeed:
// true for 429, 5xx, connection errors and timeouts; false for other
// replies, malformed bodies and a caller's own cancellation.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode == http.StatusTooManyRequests || (apiErr.StatusCode >= 500 && apiErr.StatusCode <= 599)
	}
	if errors.Is(err, ErrTransport) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}

// RetryAfter returns the delay an *APIError in err's chain asked for, or 0.
// It lets a scheduler honour Retry-After without unpacking the error.
func RetryAfter(err error) time.Duration {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.RetryAfter
	}
	return 0
}

// Classify maps a failed call onto the failure kinds the alert rules use:
// auth failures alert at once, 404 means the study is gone or not a
// Taskflow study, everything else is transient. It returns
// rules.FailureNone for a nil error.
func Classify(err error) rules.FailureKind {
	switch {
	case err == nil:
		return rules.FailureNone
	case errors.Is(err, ErrUnauthorized):
		return rules.FailureAuth
	case errors.Is(err, ErrNotFound):
		return rules.FailureNotFound
	default:
		return rules.FailureTransient
	}
}

// newAPIError builds an *APIError from a non-2xx reply. redact removes the
// token from any server-provided text, in case a proxy echoes headers.
func newAPIError(endpoint string, status int, header http.Header, body []byte, now time.Time, redact func(string) string) *APIError {
	e := &APIError{
		StatusCode: status,
		Endpoint:   endpoint,
		RetryAfter: parseRetryAfter(header.Get("Retry-After"), now),
	}
	e.Code, e.Title, e.Detail = decodeErrorBody(body)
	e.Code = truncateText(storable(redact(e.Code)))
	e.Title = truncateText(storable(redact(e.Title)))
	e.Detail = truncateText(storable(redact(e.Detail)))
	return e
}

// decodeErrorBody understands the three error shapes Prolific uses:
// {"error": {status, error_code, title, detail}}, {"message", "detail"}
// and plain text (or HTML from a gateway).
func decodeErrorBody(body []byte) (code, title, detail string) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return "", "", ""
	}
	if trimmed[0] == '{' {
		var fields map[string]any
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.UseNumber()
		if err := dec.Decode(&fields); err == nil {
			return decodeErrorObject(fields, trimmed)
		}
	}
	return "", "", plainText(trimmed)
}

// decodeErrorObject picks the known fields out of a JSON error object and
// falls back to the compacted JSON when none is present.
func decodeErrorObject(fields map[string]any, raw []byte) (code, title, detail string) {
	if inner, ok := fields["error"]; ok {
		switch inner := inner.(type) {
		case map[string]any:
			return renderValue(inner["error_code"]), renderValue(inner["title"]), renderValue(inner["detail"])
		case string:
			return "", inner, renderValue(fields["detail"])
		}
	}
	title = renderValue(fields["message"])
	if title == "" {
		title = renderValue(fields["title"])
	}
	detail = renderValue(fields["detail"])
	code = renderValue(fields["error_code"])
	if title == "" && detail == "" {
		var compact bytes.Buffer
		if json.Compact(&compact, raw) == nil {
			detail = compact.String()
		} else {
			detail = string(raw)
		}
	}
	return code, title, detail
}

// renderValue flattens a decoded JSON value to one readable line: lists are
// joined with "; " and objects become "key: value" pairs in key order, which
// suits Django-style validation errors such as {"target_url": ["required"]}.
func renderValue(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return strings.TrimSpace(v)
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	case []any:
		parts := make([]string, 0, len(v))
		for _, item := range v {
			if s := renderValue(item); s != "" {
				parts = append(parts, s)
			}
		}
		return strings.Join(parts, "; ")
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			if s := renderValue(v[k]); s != "" {
				parts = append(parts, k+": "+s)
			}
		}
		return strings.Join(parts, "; ")
	default:
		return fmt.Sprint(v)
	}
}

// plainText turns a text or HTML body into one short line.
func plainText(body []byte) string {
	s := string(body)
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	if strings.HasPrefix(s, "<") {
		s = stripTags(s)
	}
	return strings.Join(strings.Fields(s), " ")
}

// stripTags removes markup so that a gateway's HTML error page reads as its text.
func stripTags(s string) string {
	var b strings.Builder
	inTag := false
	for _, r := range s {
		switch {
		case r == '<':
			inTag = true
		case r == '>' && inTag:
			inTag = false
			b.WriteByte(' ')
		case !inTag:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// truncateText shortens s to maxErrorText runes, marking the cut.
func truncateText(s string) string {
	if utf8.RuneCountInString(s) <= maxErrorText {
		return s
	}
	runes := []rune(s)
	return string(runes[:maxErrorText]) + "…"
}

// parseRetryAfter reads a Retry-After header given as seconds or as an
// HTTP-date; anything else, or a time already past, yields 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	const maxSeconds = float64(math.MaxInt64 / int64(time.Second))
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 || math.IsNaN(secs) {
			return 0
		}
		if secs > maxSeconds {
			secs = maxSeconds
		}
		return time.Duration(secs * float64(time.Second))
	}
	if at, err := http.ParseTime(v); err == nil {
		if d := at.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
