// Package prolific talks to the Prolific API: the Taskflow progress and
// study endpoints the poller reads, and the hooks endpoints that set up
// webhooks. It also verifies inbound webhook signatures and parses study
// references typed by users.
//
// The client is strict about what it accepts as data (a glitchy body must
// not resolve alerts) and lenient about how it is written (10.0 for 10,
// missing optional fields, unknown fields, three error body shapes).
// Errors are typed (*APIError plus sentinels) and never contain the token.
package prolific

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultBaseURL is Prolific's production API.
	DefaultBaseURL = "https://api.prolific.com"
	// DefaultTimeout bounds one request, including reading its body.
	DefaultTimeout = 15 * time.Second
	// DefaultMaxBodyBytes bounds a response body; a progress reply is a few
	// hundred bytes, so 1 MiB only stops a runaway or hostile server.
	DefaultMaxBodyBytes int64 = 1 << 20
	// DefaultUserAgent identifies the worker to Prolific.
	DefaultUserAgent = "taskflow-watch"
)

// maxErrorBodyBytes bounds how much of an error reply is read: only its
// first maxErrorText characters are kept anyway.
const maxErrorBodyBytes int64 = 64 << 10

// Config configures a Client. Zero fields take the defaults above.
type Config struct {
	// BaseURL is the API root, an absolute http(s) URL without query,
	// fragment or credentials. Tests point it at prolifictest.
	BaseURL string
	// Token is the API token sent as "Authorization: Token <token>". Required.
	Token string
	// HTTPClient sends the requests; nil uses a client whose transport keeps
	// enough idle connections for concurrent polling of one host.
	HTTPClient *http.Client
	// Timeout bounds each request, including reading the body.
	Timeout time.Duration
	// MaxBodyBytes bounds a 2xx body; a longer one is a malformed reply.
	MaxBodyBytes int64
	// UserAgent is sent as the User-Agent header.
	UserAgent string
	// Now is the clock used to turn a Retry-After HTTP-date into a delay.
	Now func() time.Time
}

// Client calls the Prolific API. It is safe for concurrent use and holds
// no state besides its configuration.
type Client struct {
	base      string
	token     string
	auth      string
	http      *http.Client
	timeout   time.Duration
	maxBody   int64
	userAgent string
	now       func() time.Time
}

// New validates cfg once and returns a ready client. Errors name the
// offending field but never echo the token.
func New(cfg Config) (*Client, error) {
	base, err := parseBaseURL(cmp.Or(strings.TrimSpace(cfg.BaseURL), DefaultBaseURL))
	if err != nil {
		return nil, err
	}
	token := strings.TrimSpace(cfg.Token)
	if token == "" {
		return nil, errors.New("prolific: Token is required")
	}
	if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, errors.New("prolific: Token must not contain spaces or control characters")
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("prolific: Timeout must not be negative")
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, errors.New("prolific: MaxBodyBytes must not be negative")
	}
	httpClient := cfg.HTTPClient
	if httpClient == nil {
		httpClient = defaultHTTPClient()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Client{
		base:      base,
		token:     token,
		auth:      "Token " + token,
		http:      httpClient,
		timeout:   cmp.Or(cfg.Timeout, DefaultTimeout),
		maxBody:   cmp.Or(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		userAgent: cmp.Or(cfg.UserAgent, DefaultUserAgent),
		now:       now,
	}, nil
}

// parseBaseURL checks that raw is an absolute http(s) URL fit to prefix
// API paths, and returns it without a trailing slash.
func parseBaseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("prolific: BaseURL is not a URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", errors.New("prolific: BaseURL must be an absolute http or https URL")
	case u.Host == "":
		return "", errors.New("prolific: BaseURL has no host")
	case u.User != nil:
		return "", errors.New("prolific: BaseURL must not contain credentials")
	case u.RawQuery != "" || u.Fragment != "":
		return "", errors.New("prolific: BaseURL must not have a query or fragment")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// defaultHTTPClient returns a client whose transport keeps idle connections
// for a pool of concurrent pollers; http.DefaultTransport keeps only two
// per host and would reconnect for almost every poll.
func defaultHTTPClient() *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 256
	transport.MaxIdleConnsPerHost = 64
	return &http.Client{Transport: transport}
}

// reply is a fully read 2xx response.
type reply struct {
	header http.Header
	body   []byte
}

// do sends one request and reads its reply within the per-request timeout.
// Non-2xx replies become *APIError; a 2xx body over the size limit is
// ErrMalformed; a request without a reply is ErrTransport.
func (c *Client) do(ctx context.Context, method, path string, payload any) (reply, error) {
	endpoint := method + " " + path
	var body io.Reader
	if payload != nil {
		encoded, err := json.Marshal(payload)
		if err != nil {
			return reply{}, fmt.Errorf("encoding %s request: %w", endpoint, err)
		}
		body = bytes.NewReader(encoded)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return reply{}, fmt.Errorf("building %s request: %w", endpoint, err)
	}
	req.Header.Set("Authorization", c.auth)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("%w: %w", ErrTransport, err)
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// The error body is best effort: a cut or failed read still leaves
		// the status code, which is what callers act on.
		data, _ := io.ReadAll(io.LimitReader(resp.Body, min(c.maxBody, maxErrorBodyBytes)))
		return reply{}, newAPIError(endpoint, resp.StatusCode, resp.Header, data, c.now(), c.redact)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			return reply{}, fmt.Errorf("%w: reading %s reply: %w (%w)", ErrTransport, endpoint, err, ctxErr)
		}
		return reply{}, fmt.Errorf("%w: reading %s reply: %w", ErrTransport, endpoint, err)
	}
	if int64(len(data)) > c.maxBody {
		return reply{}, c.malformed(endpoint, "body exceeds %d bytes", c.maxBody)
	}
	return reply{header: resp.Header, body: data}, nil
}

// redact removes the token from text that came from the server.
func (c *Client) redact(s string) string {
	if c.token == "" || !strings.Contains(s, c.token) {
		return s
	}
	return strings.ReplaceAll(s, c.token, "[redacted]")
}

// malformed wraps ErrMalformed with the endpoint and what was wrong.
func (c *Client) malformed(endpoint, format string, args ...any) error {
	return fmt.Errorf("%w from %s: %s", ErrMalformed, endpoint, c.redact(fmt.Sprintf(format, args...)))
}

// studyPath builds /api/v1/studies/{id}/ plus suffix, escaping the id so a
// stray slash cannot reach another endpoint.
func studyPath(studyID, suffix string) (string, error) {
	if strings.TrimSpace(studyID) == "" {
		return "", errors.New("prolific: study id is empty")
	}
	return "/api/v1/studies/" + url.PathEscape(studyID) + "/" + suffix, nil
}
