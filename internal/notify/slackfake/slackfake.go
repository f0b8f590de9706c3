// Package slackfake is an in-process fake of the parts of the Slack Web API
// and incoming webhooks that taskflow-watch uses: chat.postMessage,
// chat.update, auth.test and webhook posts. It is a real HTTP server on
// loopback, so the real slack-go client talks to it unchanged, and it
// accepts requests both form-encoded (what slack-go sends for chat methods
// and auth.test) and as JSON. Tests read what arrived, wait for it without
// sleeping, and program faults (HTTP errors, Slack errors, hangs, dropped
// connections) per channel.
package slackfake

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// DefaultToken is the bot token the fake accepts unless WithToken says otherwise.
const DefaultToken = "xoxb-slackfake-token"

// webhookPath is the path of the fake's incoming webhook; like Slack's, its
// last segment is the secret.
const webhookPath = "/services/TFAKE0000/BFAKE0000/slackfakewebhooksecret0001"

// Slack's limits, enforced so that rendering bugs fail tests the way they
// would fail in production. Lengths are counted as Slack counts them, in
// UTF-16 code units (textviz.Len).
const (
	maxBlocks       = 50
	maxHeaderChars  = 150
	maxSectionChars = 3000
	maxFieldChars   = 2000
	maxFields       = 10
	maxTextChars    = 40000
)

// Message is one chat.postMessage or chat.update call that Slack accepted.
type Message struct {
	// Method is "chat.postMessage" or "chat.update".
	Method   string
	Channel  string
	TS       string
	ThreadTS string
	// Broadcast is set for a thread reply also shown in the channel.
	Broadcast bool
	Text      string
	// Blocks is the blocks JSON as sent, nil when none were.
	Blocks json.RawMessage
	// Metadata is the decoded message metadata, nil when none was sent.
	Metadata *Metadata
}

// Metadata is Slack message metadata as the fake decoded it.
type Metadata struct {
	EventType    string         `json:"event_type"`
	EventPayload map[string]any `json:"event_payload"`
}

// WebhookPost is one message accepted by the incoming webhook.
type WebhookPost struct {
	Text   string
	Blocks json.RawMessage
	// Body is the whole JSON body as sent.
	Body json.RawMessage
}

// Request is any call that reached the fake, accepted or not, so tests can
// count attempts (retries, faults) as well as results.
type Request struct {
	// Method is the Web API method ("chat.postMessage", …) or "webhook".
	Method  string
	Channel string
	// Status is the HTTP status answered, 0 for a hang or a dropped connection.
	Status int
	// Error is the Slack error code answered, "" on success.
	Error string
	// At is when the fake answered (or, for a hang, took) the request.
	At time.Time
}

// Fault is a failure the fake answers instead of handling a request.
type Fault struct {
	// Status, when not 0 or 200, is the HTTP status to answer.
	Status int
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter string
	// SlackError is the error code: for the Web API a 200
	// {"ok":false,"error":…} unless Status is set; for the webhook the body
	// of a 400 (or of Status).
	SlackError string
	// Hang holds the request until the client gives up or the server closes.
	Hang bool
	// CloseConn drops the connection without answering.
	CloseConn bool
}

// Option configures a Server.
type Option func(*Server)

// WithToken sets the bot token the Web API accepts.
func WithToken(token string) Option {
	return func(s *Server) { s.token = token }
}

// queuedFault is a fault with the number of requests it still applies to;
// negative means every request until ClearFaults.
type queuedFault struct {
	fault     Fault
	remaining int
}

// Server is the fake. All methods are safe for concurrent use.
type Server struct {
	srv   *httptest.Server
	token string

	closeOnce sync.Once
	closing   chan struct{}

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced whenever anything is recorded
	seq      int
	messages []Message
	updates  []Message
	webhooks []WebhookPost
	requests []Request
	current  map[string]Message // live messages by ts, with updates applied
	faults   map[string][]*queuedFault
}

// New starts a fake on a loopback port. Close it when done.
func New(opts ...Option) *Server {
	s := &Server{
		token:   DefaultToken,
		closing: make(chan struct{}),
		changed: make(chan struct{}),
		current: map[string]Message{},
		faults:  map[string][]*queuedFault{},
	}
	for _, opt := range opts {
		opt(s)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/", s.handleAPI)
	mux.HandleFunc(webhookPath, s.handleWebhook)
	mux.HandleFunc("/services/", func(w http.ResponseWriter, _ *http.Request) {
		s.answerWebhook(w, Request{Method: "webhook"}, http.StatusNotFound, "no_service")
	})
	s.srv = httptest.NewServer(mux)
	return s
}

// URL is the Web API base URL, ending in "/" like SLACK_API_URL.
func (s *Server) URL() string { return s.srv.URL + "/api/" }

// WebhookURL is the incoming-webhook URL.
func (s *Server) WebhookURL() string { return s.srv.URL + webhookPath }

// Token is the bot token the fake accepts.
func (s *Server) Token() string { return s.token }

// Close releases hanging requests and shuts the server down. It is safe to
// call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.Close()
	})
}

// FailNext makes the next times requests for channel answer with f instead
// of being handled; times <= 0 means every request until ClearFaults.
// Channel "" matches any request, webhook posts and auth.test included; a
// channel's own faults are used before those for "". Faults queue in order.
func (s *Server) FailNext(channel string, f Fault, times int) {
	if times <= 0 {
		times = -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[channel] = append(s.faults[channel], &queuedFault{fault: f, remaining: times})
}

// ClearFaults drops every programmed fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = map[string][]*queuedFault{}
}

// Delete forgets the message at ts, as if someone deleted it: updating it
// answers message_not_found and replying to it answers thread_not_found.
func (s *Server) Delete(ts string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.current, ts)
}

// Messages returns every accepted chat.postMessage, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Updates returns every accepted chat.update, in order.
func (s *Server) Updates() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.updates...)
}

// WebhookPosts returns every accepted webhook post, in order.
func (s *Server) WebhookPosts() []WebhookPost {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]WebhookPost(nil), s.webhooks...)
}

// Requests returns every request that reached the fake, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Current returns the message at ts as it reads now, updates applied, and
// false if it was never posted or was deleted.
func (s *Server) Current(ts string) (Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.current[ts]
	return m, ok
}

// WaitMessages waits until at least n messages were posted and returns them.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	return waitFor(ctx, s, func() ([]Message, bool) { return cloneIf(s.messages, n) })
}

// WaitUpdates waits until at least n updates were accepted and returns them.
func (s *Server) WaitUpdates(ctx context.Context, n int) ([]Message, error) {
	return waitFor(ctx, s, func() ([]Message, bool) { return cloneIf(s.updates, n) })
}

// WaitWebhookPosts waits until at least n webhook posts were accepted and returns them.
func (s *Server) WaitWebhookPosts(ctx context.Context, n int) ([]WebhookPost, error) {
	return waitFor(ctx, s, func() ([]WebhookPost, bool) { return cloneIf(s.webhooks, n) })
}

// WaitRequests waits until at least n requests arrived and returns them.
func (s *Server) WaitRequests(ctx context.Context, n int) ([]Request, error) {
	return waitFor(ctx, s, func() ([]Request, bool) { return cloneIf(s.requests, n) })
}

// cloneIf copies xs when it holds at least n items. Callers hold s.mu.
func cloneIf[T any](xs []T, n int) ([]T, bool) {
	if len(xs) < n {
		return nil, false
	}
	return append([]T(nil), xs...), true
}

// waitFor checks ready under the lock each time something is recorded,
// until it succeeds or ctx ends.
func waitFor[T any](ctx context.Context, s *Server, ready func() (T, bool)) (T, error) {
	for {
		s.mu.Lock()
		v, ok := ready()
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return v, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			var zero T
			return zero, fmt.Errorf("waiting for the Slack fake: %w", ctx.Err())
		}
	}
}

// notifyLocked wakes every waiter. Callers hold s.mu.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// record appends a request to the log.
func (s *Server) record(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(r)
	s.notifyLocked()
}

// recordLocked notes a request with the time it was answered. Callers hold s.mu.
func (s *Server) recordLocked(r Request) {
	r.At = time.Now()
	s.requests = append(s.requests, r)
}

// takeFault returns the fault due for a request to channel, if any.
func (s *Server) takeFault(channel string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := []string{""}
	if channel != "" {
		keys = []string{channel, ""}
	}
	for _, k := range keys {
		q := s.faults[k]
		if len(q) == 0 {
			continue
		}
		head := q[0]
		if head.remaining > 0 {
			head.remaining--
			if head.remaining == 0 {
				s.faults[k] = q[1:]
			}
		}
		return head.fault, true
	}
	return Fault{}, false
}

// params is a request's arguments, from a form or a JSON body.
type params struct {
	values map[string]string
	raw    map[string]json.RawMessage
}

// get returns a parameter as a string.
func (p params) get(key string) string { return p.values[key] }

// rawJSON returns a parameter that carries JSON: the form's string value, or
// the JSON body's value as it was.
func (p params) rawJSON(key string) json.RawMessage {
	if v, ok := p.raw[key]; ok {
		if string(v) == "null" {
			return nil
		}
		// A JSON body may also carry blocks/metadata as a JSON string.
		var str string
		if json.Unmarshal(v, &str) == nil {
			return json.RawMessage(str)
		}
		return v
	}
	if v, ok := p.values[key]; ok && v != "" {
		return json.RawMessage(v)
	}
	return nil
}

// parseParams reads a form-encoded or JSON request body.
func parseParams(r *http.Request) (params, error) {
	p := params{values: map[string]string{}, raw: map[string]json.RawMessage{}}
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
	if err != nil {
		return p, fmt.Errorf("reading body: %w", err)
	}
	if mediaType == "application/json" {
		if len(body) == 0 {
			return p, nil
		}
		if err := json.Unmarshal(body, &p.raw); err != nil {
			return p, fmt.Errorf("decoding JSON body: %w", err)
		}
		for k, v := range p.raw {
			var str string
			if json.Unmarshal(v, &str) == nil {
				p.values[k] = str
			} else {
				p.values[k] = string(v)
			}
		}
		return p, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return p, fmt.Errorf("decoding form body: %w", err)
	}
	for k := range form {
		p.values[k] = form.Get(k)
	}
	for k, v := range r.URL.Query() {
		if _, ok := p.values[k]; !ok && len(v) > 0 {
			p.values[k] = v[0]
		}
	}
	return p, nil
}

// handleAPI serves the Web API methods.
func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	method := strings.TrimPrefix(r.URL.Path, "/api/")
	p, err := parseParams(r)
	channel := p.get("channel")
	req := Request{Method: method, Channel: channel}
	if err != nil {
		s.answerAPI(w, req, http.StatusOK, "invalid_form_data", nil)
		return
	}
	if f, ok := s.takeFault(channel); ok {
		s.applyFault(w, r, req, f, true)
		return
	}
	if !s.authorized(r, p) {
		code := "invalid_auth"
		if p.get("token") == "" && r.Header.Get("Authorization") == "" {
			code = "not_authed"
		}
		s.answerAPI(w, req, http.StatusOK, code, nil)
		return
	}
	switch method {
	case "auth.test":
		s.answerAPI(w, req, http.StatusOK, "", map[string]any{
			"url": "https://slackfake.example/", "team": "Slack fake", "user": "taskflow",
			"team_id": "TFAKE0000", "user_id": "UFAKE0000", "bot_id": "BFAKE0000",
		})
	case "chat.postMessage":
		s.postMessage(w, req, p)
	case "chat.update":
		s.update(w, req, p)
	default:
		s.answerAPI(w, req, http.StatusOK, "unknown_method", nil)
	}
}

// authorized checks the bot token, sent as a Bearer header or a token parameter.
func (s *Server) authorized(r *http.Request, p params) bool {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return tok == s.token
	}
	return p.get("token") == s.token
}

// postMessage handles chat.postMessage.
func (s *Server) postMessage(w http.ResponseWriter, req Request, p params) {
	m, code := messageFromParams("chat.postMessage", p)
	if code == "" && req.Channel == "" {
		code = "channel_not_found"
	}
	if code != "" {
		s.answerAPI(w, req, http.StatusOK, code, nil)
		return
	}
	s.mu.Lock()
	if m.ThreadTS != "" {
		if _, ok := s.current[m.ThreadTS]; !ok {
			s.mu.Unlock()
			s.answerAPI(w, req, http.StatusOK, "thread_not_found", nil)
			return
		}
	}
	s.seq++
	micros := s.seq * 100
	m.TS = fmt.Sprintf("%d.%06d", 1700000000+micros/1_000_000, micros%1_000_000)
	s.messages = append(s.messages, m)
	s.current[m.TS] = m
	s.recordLocked(Request{Method: req.Method, Channel: req.Channel, Status: http.StatusOK})
	s.notifyLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"ok": true, "channel": m.Channel, "ts": m.TS, "message": messageJSON(m),
	})
}

// update handles chat.update.
func (s *Server) update(w http.ResponseWriter, req Request, p params) {
	m, code := messageFromParams("chat.update", p)
	m.TS = p.get("ts")
	if code != "" {
		s.answerAPI(w, req, http.StatusOK, code, nil)
		return
	}
	s.mu.Lock()
	old, ok := s.current[m.TS]
	if !ok || old.Channel != m.Channel {
		s.mu.Unlock()
		s.answerAPI(w, req, http.StatusOK, "message_not_found", nil)
		return
	}
	// Slack keeps the metadata and thread of a message updated without them.
	if m.Metadata == nil {
		m.Metadata = old.Metadata
	}
	cur := old
	cur.Text, cur.Blocks, cur.Metadata = m.Text, m.Blocks, m.Metadata
	s.current[m.TS] = cur
	s.updates = append(s.updates, m)
	s.recordLocked(Request{Method: req.Method, Channel: req.Channel, Status: http.StatusOK})
	s.notifyLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"ok": true, "channel": m.Channel, "ts": m.TS, "text": m.Text, "message": messageJSON(cur),
	})
}

// messageFromParams reads and validates a chat message, returning the Slack
// error code for an invalid one.
func messageFromParams(method string, p params) (Message, string) {
	m := Message{
		Method:    method,
		Channel:   p.get("channel"),
		ThreadTS:  p.get("thread_ts"),
		Broadcast: p.get("reply_broadcast") == "true",
		Text:      p.get("text"),
		Blocks:    p.rawJSON("blocks"),
	}
	if meta := p.rawJSON("metadata"); meta != nil {
		var md Metadata
		if err := json.Unmarshal(meta, &md); err != nil || md.EventType == "" {
			return m, "invalid_metadata_format"
		}
		m.Metadata = &md
	}
	if m.Text == "" && len(m.Blocks) == 0 {
		return m, "no_text"
	}
	if textviz.Len(m.Text) > maxTextChars {
		return m, "msg_too_long"
	}
	if len(m.Blocks) > 0 {
		if err := validateBlocks(m.Blocks); err != nil {
			return m, "invalid_blocks"
		}
	}
	return m, ""
}

// textObject is the part of a Block Kit text object the fake checks.
type textObject struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// block is the part of a block the fake checks.
type block struct {
	Type   string        `json:"type"`
	Text   *textObject   `json:"text"`
	Fields []*textObject `json:"fields"`
}

// validateBlocks enforces the Block Kit limits that alert messages could hit.
func validateBlocks(raw json.RawMessage) error {
	var blocks []block
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return fmt.Errorf("decoding blocks: %w", err)
	}
	if len(blocks) > maxBlocks {
		return fmt.Errorf("%d blocks, more than %d", len(blocks), maxBlocks)
	}
	for i, b := range blocks {
		switch b.Type {
		case "header":
			if b.Text == nil || b.Text.Type != "plain_text" || b.Text.Text == "" ||
				textviz.Len(b.Text.Text) > maxHeaderChars {
				return fmt.Errorf("block %d: invalid header", i)
			}
		case "section":
			if b.Text == nil && len(b.Fields) == 0 {
				return fmt.Errorf("block %d: section without text or fields", i)
			}
			if b.Text != nil && (b.Text.Text == "" || textviz.Len(b.Text.Text) > maxSectionChars) {
				return fmt.Errorf("block %d: invalid section text", i)
			}
			if len(b.Fields) > maxFields {
				return fmt.Errorf("block %d: %d fields", i, len(b.Fields))
			}
			for _, f := range b.Fields {
				if f == nil || f.Text == "" || textviz.Len(f.Text) > maxFieldChars {
					return fmt.Errorf("block %d: invalid field", i)
				}
			}
		case "":
			return fmt.Errorf("block %d: no type", i)
		}
	}
	return nil
}

// messageJSON is the message object Slack returns with a post or update.
func messageJSON(m Message) map[string]any {
	msg := map[string]any{"type": "message", "text": m.Text, "ts": m.TS, "bot_id": "BFAKE0000"}
	if m.ThreadTS != "" {
		msg["thread_ts"] = m.ThreadTS
	}
	return msg
}

// handleWebhook serves the incoming webhook.
func (s *Server) handleWebhook(w http.ResponseWriter, r *http.Request) {
	req := Request{Method: "webhook"}
	if f, ok := s.takeFault(""); ok {
		s.applyFault(w, r, req, f, false)
		return
	}
	if r.Method != http.MethodPost {
		s.answerWebhook(w, req, http.StatusMethodNotAllowed, "invalid_method")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
	if err != nil {
		s.answerWebhook(w, req, http.StatusBadRequest, "invalid_payload")
		return
	}
	var payload struct {
		Text   string          `json:"text"`
		Blocks json.RawMessage `json:"blocks"`
	}
	if err := json.Unmarshal(body, &payload); err != nil {
		s.answerWebhook(w, req, http.StatusBadRequest, "invalid_payload")
		return
	}
	if string(payload.Blocks) == "null" {
		payload.Blocks = nil
	}
	if payload.Text == "" && len(payload.Blocks) == 0 {
		s.answerWebhook(w, req, http.StatusBadRequest, "no_text")
		return
	}
	if len(payload.Blocks) > 0 {
		if err := validateBlocks(payload.Blocks); err != nil {
			s.answerWebhook(w, req, http.StatusBadRequest, "invalid_blocks")
			return
		}
	}
	s.mu.Lock()
	s.webhooks = append(s.webhooks, WebhookPost{Text: payload.Text, Blocks: payload.Blocks, Body: body})
	s.recordLocked(Request{Method: req.Method, Status: http.StatusOK})
	s.notifyLocked()
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/html")
	_, _ = io.WriteString(w, "ok")
}

// applyFault answers a request with a programmed fault.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, req Request, f Fault, api bool) {
	switch {
	case f.Hang:
		s.record(req)
		select {
		case <-r.Context().Done():
		case <-s.closing:
			// The client sees a dropped connection, not an empty answer.
			dropConn(w)
		}
		return
	case f.CloseConn:
		s.record(req)
		dropConn(w)
		return
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	status := f.Status
	if !api {
		if status == 0 || status == http.StatusOK {
			status = http.StatusBadRequest
		}
		s.answerWebhook(w, req, status, cmp.Or(f.SlackError, http.StatusText(status)))
		return
	}
	if status == 0 || status == http.StatusOK {
		s.answerAPI(w, req, http.StatusOK, cmp.Or(f.SlackError, "internal_error"), nil)
		return
	}
	s.answerAPI(w, req, status, cmp.Or(f.SlackError, strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")), nil)
}

// dropConn closes the request's connection without an answer.
func dropConn(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	http.Error(w, "connection could not be dropped", http.StatusInternalServerError)
}

// answerAPI records and writes a Web API answer; an empty code means ok.
func (s *Server) answerAPI(w http.ResponseWriter, req Request, status int, code string, extra map[string]any) {
	req.Status, req.Error = status, code
	s.record(req)
	body := map[string]any{"ok": code == ""}
	if code != "" {
		body["error"] = code
	}
	for k, v := range extra {
		body[k] = v
	}
	writeJSON(w, status, body)
}

// answerWebhook records and writes a failed webhook answer: the status with
// the error code as a plain-text body, as Slack does.
func (s *Server) answerWebhook(w http.ResponseWriter, req Request, status int, code string) {
	req.Status, req.Error = status, code
	s.record(req)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, code)
}

// writeJSON writes v as a JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
