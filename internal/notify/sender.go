package notify

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
	"sync"
	"time"

	"github.com/slack-go/slack"
)

// Posted identifies a message Slack accepted.
type Posted struct {
	Channel, TS string
}

// Sender delivers rendered alerts. The dispatcher owns retries and pacing,
// so implementations make exactly one attempt per call and return errors
// that Classify understands.
type Sender interface {
	// Post sends a new message for a to channel; threadTS non-empty replies in that thread.
	Post(ctx context.Context, channel string, a Alert, threadTS string) (Posted, error)
	// Update rewrites the firing message at ts to show it resolved.
	Update(ctx context.Context, channel, ts string, firing, resolved Alert) error
	// Threads reports whether Post/Update with ts are supported (bot token yes; webhook/log no).
	Threads() bool
}

// ErrUpdateUnsupported is returned by Update of senders that cannot address
// an earlier message (incoming webhooks and the log). Callers should check
// Threads first; Classify treats it as permanent.
var ErrUpdateUnsupported = errors.New("sender cannot update messages")

// BotSender posts with a bot token through the Slack Web API, the only mode
// that carries message metadata, threads replies and updates messages.
type BotSender struct {
	client *slack.Client
}

// SendTimeout bounds one Slack request. Slack answers in well under a
// second; the bound keeps a hung request from outlasting the worker's
// shutdown grace, and stays far inside the dispatcher's claim lease.
const SendTimeout = 10 * time.Second

// NewBotSender returns a sender for token against the Web API at apiURL
// (ending in "/"; "" means Slack itself). slack-go's own retries stay off so
// that a 429 or 5xx comes back at once and the dispatcher decides when to
// try again. A nil httpClient uses a client with SendTimeout.
func NewBotSender(token, apiURL string, httpClient *http.Client) *BotSender {
	if httpClient == nil {
		httpClient = &http.Client{Timeout: SendTimeout}
	}
	opts := []slack.Option{slack.OptionHTTPClient(httpClient)}
	if apiURL != "" {
		opts = append(opts, slack.OptionAPIURL(apiURL))
	}
	return &BotSender{client: slack.New(token, opts...)}
}

// Post sends one chat.postMessage with text, blocks and metadata. Should
// Slack refuse the blocks, it posts the text fallback alone (see
// blocksRejected), still with the metadata.
func (s *BotSender) Post(ctx context.Context, channel string, a Alert, threadTS string) (Posted, error) {
	r := Render(a)
	opts := []slack.MsgOption{
		slack.MsgOptionText(r.Text, false),
		slack.MsgOptionMetadata(Metadata(a)),
		slack.MsgOptionDisableLinkUnfurl(),
		slack.MsgOptionDisableMediaUnfurl(),
	}
	if threadTS != "" {
		// The reply is also shown in the channel: a resolution only visible
		// inside a thread goes unnoticed.
		opts = append(opts, slack.MsgOptionTS(threadTS), slack.MsgOptionBroadcast())
	}
	ch, ts, err := s.client.PostMessageContext(ctx, channel, append(opts, slack.MsgOptionBlocks(r.Blocks...))...)
	if blocksRejected(err) {
		ch, ts, err = s.client.PostMessageContext(ctx, channel, opts...)
	}
	if err != nil {
		return Posted{}, fmt.Errorf("posting %s %s for study %s to Slack channel %s: %w",
			a.Transition.Rule, a.Transition.State, a.StudyID, channel, err)
	}
	return Posted{Channel: cmp.Or(ch, channel), TS: ts}, nil
}

// Update rewrites the firing message at ts with chat.update. It sends no
// metadata, so Slack keeps the firing message's own metadata.
func (s *BotSender) Update(ctx context.Context, channel, ts string, firing, resolved Alert) error {
	r := RenderResolvedOriginal(firing, resolved)
	_, _, _, err := s.client.UpdateMessageContext(ctx, channel, ts,
		slack.MsgOptionText(r.Text, false),
		slack.MsgOptionBlocks(r.Blocks...),
	)
	if blocksRejected(err) {
		// An empty block list replaces the original's blocks, which would
		// otherwise still show the alert as open.
		_, _, _, err = s.client.UpdateMessageContext(ctx, channel, ts,
			slack.MsgOptionText(r.Text, false),
			slack.MsgOptionBlocks(),
		)
	}
	if err != nil {
		return fmt.Errorf("updating Slack message %s in channel %s: %w", ts, channel, err)
	}
	return nil
}

// Threads reports true: a bot token can reply in threads and update messages.
func (s *BotSender) Threads() bool { return true }

// WebhookSender posts to one incoming webhook. Webhooks cannot carry
// metadata, choose a channel, thread or update, so the channel is ignored.
type WebhookSender struct {
	webhookURL string
	client     *http.Client
}

// WebhookError is a non-200 answer from an incoming webhook. Slack writes a
// short error code in the body (channel_not_found, invalid_token,
// no_service, …) that slack-go discards; the sender keeps it for Classify
// and the record.
type WebhookError struct {
	StatusCode int
	// Code is Slack's error code from the body, "" when it sent none.
	Code string
	err  error
}

// Error reports the status and code, never the webhook URL.
func (e *WebhookError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("incoming webhook answered %d: %s", e.StatusCode, e.Code)
	}
	return fmt.Sprintf("incoming webhook answered %d", e.StatusCode)
}

// Unwrap returns slack-go's own error (a slack.StatusCodeError or
// *slack.RateLimitedError).
func (e *WebhookError) Unwrap() error { return e.err }

// NewWebhookSender returns a sender for the incoming webhook at webhookURL.
// A nil httpClient uses a client with SendTimeout.
func NewWebhookSender(webhookURL string, httpClient *http.Client) *WebhookSender {
	if httpClient == nil {
		httpClient = &http.Client{Timeout: SendTimeout}
	}
	// The copy keeps the caller's settings and adds a transport that keeps
	// the error code Slack writes in a failed response's body.
	c := *httpClient
	c.Transport = errorBodyTransport{next: cmpOrTransport(httpClient.Transport)}
	return &WebhookSender{webhookURL: webhookURL, client: &c}
}

// Post sends text and blocks to the webhook. Posted is always empty: a
// webhook does not say where or as which message it posted.
func (s *WebhookSender) Post(ctx context.Context, _ string, a Alert, _ string) (Posted, error) {
	r := Render(a)
	noUnfurl := false
	msg := &slack.WebhookMessage{
		Text:        r.Text,
		Blocks:      &slack.Blocks{BlockSet: r.Blocks},
		UnfurlLinks: &noUnfurl,
		UnfurlMedia: &noUnfurl,
	}
	post := func() error {
		body := &errorBody{}
		err := slack.PostWebhookCustomHTTPContext(context.WithValue(ctx, errorBodyKey{}, body), s.webhookURL, s.client, msg)
		if err != nil {
			return s.describeError(err, body)
		}
		return nil
	}
	err := post()
	if blocksRejected(err) {
		msg.Blocks = nil
		err = post()
	}
	if err != nil {
		return Posted{}, fmt.Errorf("posting %s %s for study %s to Slack incoming webhook: %w",
			a.Transition.Rule, a.Transition.State, a.StudyID, err)
	}
	return Posted{}, nil
}

// blocksRejected reports whether Slack refused a message for its blocks.
// The renderer keeps within every documented limit, but Slack may count or
// validate differently from the rendering; rather than lose the alert for
// good (the code is permanent), the senders try once more with the text
// fallback alone, which tells the same story.
func blocksRejected(err error) bool {
	code := ""
	var slackErr slack.SlackErrorResponse
	var webhookErr *WebhookError
	switch {
	case errors.As(err, &slackErr):
		code = slackErr.Err
	case errors.As(err, &webhookErr):
		code = webhookErr.Code
	}
	return code == "invalid_blocks" || code == "invalid_blocks_format"
}

// Update is not possible through a webhook.
func (s *WebhookSender) Update(context.Context, string, string, Alert, Alert) error {
	return ErrUpdateUnsupported
}

// Threads reports false: webhooks cannot thread or update.
func (s *WebhookSender) Threads() bool { return false }

// describeError turns slack-go's webhook error into one that never shows the
// webhook URL (slack-go wraps *url.Error, whose text includes it) and that
// carries Slack's error code when the response had one.
func (s *WebhookSender) describeError(err error, body *errorBody) error {
	var statusErr slack.StatusCodeError
	var rateLimited *slack.RateLimitedError
	switch {
	case errors.As(err, &rateLimited):
		return &WebhookError{StatusCode: http.StatusTooManyRequests, err: rateLimited}
	case errors.As(err, &statusErr):
		return &WebhookError{StatusCode: statusErr.Code, Code: body.code(), err: statusErr}
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = &url.Error{Op: urlErr.Op, URL: redactSecrets(urlErr.URL), Err: urlErr.Err}
	}
	return &redactedError{msg: s.redact(err.Error()), err: err}
}

// redact removes the webhook URL, and any other URL path or token, from msg.
func (s *WebhookSender) redact(msg string) string {
	if s.webhookURL != "" {
		msg = strings.ReplaceAll(msg, s.webhookURL, "[webhook URL]")
		if u, err := url.Parse(s.webhookURL); err == nil && len(u.Path) > 1 {
			msg = strings.ReplaceAll(msg, u.Path, "/[redacted]")
		}
	}
	return redactSecrets(msg)
}

// redactedError keeps an error's chain for errors.Is/As while replacing its
// text with a version scrubbed of secrets.
type redactedError struct {
	msg string
	err error
}

// Error returns the scrubbed text.
func (e *redactedError) Error() string { return e.msg }

// Unwrap returns the original error for errors.Is/As.
func (e *redactedError) Unwrap() error { return e.err }

// errorBodyKey marks the context value through which errorBodyTransport hands
// a failed response's body to the Post call that made the request.
type errorBodyKey struct{}

// errorBody holds the first bytes of a failed webhook response.
type errorBody struct {
	mu   sync.Mutex
	data []byte
}

// code returns the body if it looks like a Slack error code
// ("channel_not_found"), or "" for anything else (HTML pages, prose).
func (b *errorBody) code() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := strings.TrimSpace(string(b.data))
	if c == "" || len(c) > 64 {
		return ""
	}
	for _, r := range c {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return ""
		}
	}
	return c
}

// maxErrorBody is how much of a failed response the transport keeps.
const maxErrorBody = 256

// errorBodyTransport copies the start of non-200 response bodies into the
// request's errorBody, leaving the body intact for slack-go.
type errorBodyTransport struct {
	next http.RoundTripper
}

// RoundTrip sends req and, for a non-200 answer, records the body's start.
func (t errorBodyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.StatusCode == http.StatusOK {
		return resp, err
	}
	holder, ok := req.Context().Value(errorBodyKey{}).(*errorBody)
	if !ok {
		return resp, nil
	}
	head, readErr := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	holder.mu.Lock()
	holder.data = head
	holder.mu.Unlock()
	resp.Body = readCloser{Reader: io.MultiReader(bytes.NewReader(head), errReader{readErr}, resp.Body), Closer: resp.Body}
	return resp, nil
}

// readCloser joins a reader with the original body's Close.
type readCloser struct {
	io.Reader
	io.Closer
}

// errReader replays a read error after the bytes read before it, or reads
// nothing when there was none.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	return 0, io.EOF
}

// cmpOrTransport returns t, or http.DefaultTransport when t is nil.
func cmpOrTransport(t http.RoundTripper) http.RoundTripper {
	if t == nil {
		return http.DefaultTransport
	}
	return t
}

// LogSender writes each notification as one JSON line, for running without
// Slack (development, demos, black-box tests reading stdout).
type LogSender struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

// NewLogSender returns a sender that writes to w. Lines are written whole
// under a lock, so concurrent dispatchers never interleave them.
func NewLogSender(w io.Writer) *LogSender {
	return &LogSender{w: w, now: time.Now}
}

// logLine is the JSON shape of one logged notification.
type logLine struct {
	Time        time.Time `json:"time"`
	Channel     string    `json:"channel"`
	StudyID     string    `json:"study_id"`
	StudyName   string    `json:"study_name"`
	Rule        string    `json:"rule"`
	ExternalURL string    `json:"external_url"`
	State       string    `json:"state"`
	Text        string    `json:"text"`
	ThreadTS    string    `json:"thread_ts,omitempty"`
}

// Post writes a's line. The text is the plain fallback without mrkdwn
// escaping, since nobody renders it as mrkdwn.
func (s *LogSender) Post(_ context.Context, channel string, a Alert, threadTS string) (Posted, error) {
	line, err := json.Marshal(logLine{
		Time:        s.now().UTC(),
		Channel:     channel,
		StudyID:     a.StudyID,
		StudyName:   a.StudyName,
		Rule:        string(a.Transition.Rule),
		ExternalURL: metadataURL(a.Transition),
		State:       string(a.Transition.State),
		Text:        describe(a, noEscape).sentence,
		ThreadTS:    threadTS,
	})
	if err != nil {
		return Posted{}, fmt.Errorf("encoding notification for study %s: %w", a.StudyID, err)
	}
	line = append(line, '\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(line); err != nil {
		return Posted{}, fmt.Errorf("writing notification for study %s: %w", a.StudyID, err)
	}
	return Posted{}, nil
}

// Update is not possible for a log.
func (s *LogSender) Update(context.Context, string, string, Alert, Alert) error {
	return ErrUpdateUnsupported
}

// Threads reports false: a log has no threads.
func (s *LogSender) Threads() bool { return false }
