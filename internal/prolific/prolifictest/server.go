// Package prolifictest is an in-process fake of the Prolific API for tests
// and the demo simulator. It serves the Taskflow progress and study
// endpoints in Prolific's JSON shape, the hooks endpoints that set up
// webhooks, and can deliver signed webhooks; tests change studies between
// polls, inject faults, count requests and wait on them.
//
// Use NewServer(t, token) in tests: it starts a loopback server closed on
// cleanup. A long-lived simulator uses New(token) and either Start (then
// URL) or serves Handler on an address of its choice, and calls Close when
// done. Every method is safe for concurrent use.
package prolifictest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// Endpoint names a group of API endpoints, for faults and request records.
type Endpoint int

// Endpoints. The zero value is EndpointProgress, so a Fault without an
// Endpoint hits the progress fetch, which is what most tests break.
const (
	// EndpointProgress is GET /api/v1/studies/{id}/access-details-progress/.
	EndpointProgress Endpoint = iota
	// EndpointStudy is GET /api/v1/studies/{id}/.
	EndpointStudy
	// EndpointHooks is everything under /api/v1/hooks/.
	EndpointHooks
	// EndpointOther is any path the fake does not serve (replied 404).
	EndpointOther
	// EndpointAll makes a Fault hit every endpoint; it never appears in a Request.
	EndpointAll
)

// String names the endpoint for test failure messages.
func (e Endpoint) String() string {
	switch e {
	case EndpointProgress:
		return "progress"
	case EndpointStudy:
		return "study"
	case EndpointHooks:
		return "hooks"
	case EndpointOther:
		return "other"
	case EndpointAll:
		return "all"
	}
	return "Endpoint(" + strconv.Itoa(int(e)) + ")"
}

// Study is a study as the fake serves it.
type Study struct {
	// ID is the study id; any non-empty string works, though Prolific's
	// are 24 lowercase hex characters.
	ID   string
	Name string
	// InternalName defaults to Name.
	InternalName string
	// Status defaults to "ACTIVE".
	Status string
	// TotalAvailablePlaces defaults to the sum of the URLs' allocations.
	TotalAvailablePlaces int
	// URLs is the progress list. Leaving it empty serves an empty list,
	// which the client treats as malformed.
	URLs []rules.URLCounts
	// NotTaskflow makes the progress endpoint reply 404 as Prolific does
	// for a study without access details, while the study itself exists.
	NotTaskflow bool
	// FloatNumbers writes counts as 10.0 instead of 10, which Prolific may do.
	FloatNumbers bool
	// CollectionID is the progress "id"; it defaults to a uuid derived from ID.
	CollectionID string
}

// Fault replaces the next matching response. The zero Endpoint is
// EndpointProgress; use EndpointAll to hit every endpoint.
type Fault struct {
	Endpoint Endpoint
	// Status is the reply status; 0 means 200.
	Status int
	// Body is the raw reply body. When empty, an error status gets the
	// error body Prolific documents for it (plain text for 502/503/504, as
	// gateways send), and a 2xx status gets the normal reply.
	Body string
	// RetryAfter, when set, is sent verbatim as the Retry-After header.
	RetryAfter string
	// Hang holds the request without replying until the client gives up
	// (its context ends) or the server closes: a timeout.
	Hang bool
}

// BodyMalformedJSON is a truncated progress body, for Fault.Body.
const BodyMalformedJSON = `{"id": "42a9f01f-3cd8-4cf0-b79a-9b2cd50a1e85", "progress": [{"external_url": "https://`

// Request records one request the fake handled.
type Request struct {
	Endpoint Endpoint
	// StudyID is the id in the path, "" for hooks and unknown paths.
	StudyID string
	Method  string
	Path    string
	// Status is the reply status, 0 for a hanging request.
	Status int
}

// WebhookSecret is a secret created through the hooks API.
type WebhookSecret struct {
	ID          string
	Value       string
	WorkspaceID string
}

// Subscription is a webhook subscription created through the hooks API.
type Subscription struct {
	ID          string
	EventType   string
	TargetURL   string
	WorkspaceID string
	IsEnabled   bool
	// Confirmed is set once the client confirmed with HookSecret; only
	// confirmed, enabled subscriptions receive Emit deliveries.
	Confirmed  bool
	HookSecret string
}

// Delivery is the outcome of one webhook POST made by Emit.
type Delivery struct {
	SubscriptionID string
	TargetURL      string
	EventID        string
	// StatusCode is the receiver's reply status, 0 when Err is set.
	StatusCode int
	Err        error
}

// Cleaner is the part of testing.TB that NewServer needs, so this package
// does not import testing into the demo binary.
type Cleaner interface {
	Cleanup(func())
}

// studyEntry is a study with its replies encoded once per change, so the
// hot path only copies bytes.
type studyEntry struct {
	study        Study
	progressBody []byte
	studyBody    []byte
}

// queuedFault is a Fault with its remaining uses (negative: until cleared).
type queuedFault struct {
	fault     Fault
	remaining int
}

// Server is the fake Prolific API.
type Server struct {
	auth atomic.Pointer[string]
	now  atomic.Pointer[func() time.Time]

	mu      sync.RWMutex
	studies map[string]*studyEntry

	faultsMu   sync.Mutex
	faults     map[string][]*queuedFault
	faultsLive atomic.Int64

	progressCounts sync.Map
	studyCounts    sync.Map
	total          atomic.Int64
	observer       atomic.Pointer[func(Request)]

	waitMu  sync.Mutex
	waitCh  chan struct{}
	waiters atomic.Int64

	hooksMu sync.Mutex
	secrets []WebhookSecret
	subs    []Subscription

	delivery *http.Client

	lifeMu    sync.Mutex
	ts        *httptest.Server
	closing   chan struct{}
	closeOnce sync.Once
}

// New returns a fake that is not listening yet. Requests must carry
// "Authorization: Token <token>"; an empty token disables the check.
func New(token string) *Server {
	s := &Server{
		studies:  make(map[string]*studyEntry),
		faults:   make(map[string][]*queuedFault),
		waitCh:   make(chan struct{}),
		delivery: &http.Client{Timeout: 10 * time.Second},
		closing:  make(chan struct{}),
	}
	s.SetToken(token)
	s.SetClock(time.Now)
	return s
}

// NewServer returns a fake listening on loopback, closed when c cleans up.
func NewServer(c Cleaner, token string) *Server {
	s := New(token)
	s.Start()
	c.Cleanup(s.Close)
	return s
}

// Start begins serving on a loopback port; see URL. Starting twice is a no-op.
func (s *Server) Start() {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.ts == nil {
		s.ts = httptest.NewServer(s)
	}
}

// URL is the base URL to give the client, "" before Start.
func (s *Server) URL() string {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.ts == nil {
		return ""
	}
	return s.ts.URL
}

// Close releases hanging requests and stops the server. It is idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
	s.lifeMu.Lock()
	ts := s.ts
	s.lifeMu.Unlock()
	if ts != nil {
		ts.Close()
	}
}

// Handler serves the fake API, for a simulator listening on its own address.
func (s *Server) Handler() http.Handler { return s }

// SetToken changes the expected token, e.g. to simulate a revoked one.
func (s *Server) SetToken(token string) {
	expected := ""
	if token != "" {
		expected = "Token " + token
	}
	s.auth.Store(&expected)
}

// SetClock sets the clock used to timestamp webhook deliveries.
func (s *Server) SetClock(now func() time.Time) {
	s.now.Store(&now)
}

// SetStudy adds or replaces a study.
func (s *Server) SetStudy(st Study) {
	entry := newStudyEntry(st)
	s.mu.Lock()
	s.studies[entry.study.ID] = entry
	s.mu.Unlock()
}

// UpdateStudy changes a study in place under the server's lock, so a
// simulator can read and bump counts atomically. It reports whether the
// study exists; fn is not called when it does not.
func (s *Server) UpdateStudy(id string, fn func(*Study)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	entry, ok := s.studies[id]
	if !ok {
		return false
	}
	st := cloneStudy(entry.study)
	fn(&st)
	st.ID = id
	s.studies[id] = newStudyEntry(st)
	return true
}

// upsert changes a study, creating an ACTIVE one first when it is unknown.
func (s *Server) upsert(id string, fn func(*Study)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Study{ID: id}
	if entry, ok := s.studies[id]; ok {
		st = cloneStudy(entry.study)
	}
	fn(&st)
	s.studies[id] = newStudyEntry(st)
}

// SetProgress replaces a study's URL counts, creating the study if needed.
func (s *Server) SetProgress(id string, urls []rules.URLCounts) {
	s.upsert(id, func(st *Study) { st.URLs = slices.Clone(urls) })
}

// SetStatus changes a study's status, creating the study if needed.
func (s *Server) SetStatus(id, status string) {
	s.upsert(id, func(st *Study) { st.Status = status })
}

// SetNotTaskflow makes a study's progress endpoint reply 404 while the
// study itself stays, creating the study if needed.
func (s *Server) SetNotTaskflow(id string) {
	s.upsert(id, func(st *Study) { st.NotTaskflow = true })
}

// RemoveStudy deletes a study; both endpoints then reply 404.
func (s *Server) RemoveStudy(id string) {
	s.mu.Lock()
	delete(s.studies, id)
	s.mu.Unlock()
}

// Study returns a copy of a study as currently served.
func (s *Server) Study(id string) (Study, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	entry, ok := s.studies[id]
	if !ok {
		return Study{}, false
	}
	return cloneStudy(entry.study), true
}

// StudyIDs lists the served studies in id order.
func (s *Server) StudyIDs() []string {
	s.mu.RLock()
	ids := make([]string, 0, len(s.studies))
	for id := range s.studies {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	slices.Sort(ids)
	return ids
}

// Fail queues a fault for requests about study id ("" for every request,
// hooks included), used for the next times matching requests; times < 0
// keeps it until ClearFaults. Faults for an id are used in the order
// queued and before the global ones.
func (s *Server) Fail(id string, f Fault, times int) {
	if times == 0 {
		return
	}
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	if len(s.faults[id]) == 0 {
		s.faultsLive.Add(1)
	}
	s.faults[id] = append(s.faults[id], &queuedFault{fault: f, remaining: times})
}

// ClearFaults drops the faults queued for id ("" clears the global ones).
func (s *Server) ClearFaults(id string) {
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	if len(s.faults[id]) > 0 {
		s.faultsLive.Add(-1)
	}
	delete(s.faults, id)
}

// nextFault takes the first queued fault matching the request, if any.
func (s *Server) nextFault(id string, ep Endpoint) (Fault, bool) {
	if s.faultsLive.Load() == 0 {
		return Fault{}, false
	}
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	keys := []string{id, ""}
	if id == "" {
		keys = keys[1:]
	}
	for _, key := range keys {
		queue := s.faults[key]
		for i, qf := range queue {
			if qf.fault.Endpoint != EndpointAll && qf.fault.Endpoint != ep {
				continue
			}
			if qf.remaining > 0 {
				qf.remaining--
				if qf.remaining == 0 {
					queue = slices.Delete(queue, i, i+1)
					if len(queue) == 0 {
						delete(s.faults, key)
						s.faultsLive.Add(-1)
					} else {
						s.faults[key] = queue
					}
				}
			}
			return qf.fault, true
		}
	}
	return Fault{}, false
}

// Requests counts progress fetches for a study, whatever their outcome.
func (s *Server) Requests(id string) int { return loadCount(&s.progressCounts, id) }

// StudyRequests counts study-object fetches for a study.
func (s *Server) StudyRequests(id string) int { return loadCount(&s.studyCounts, id) }

// TotalRequests counts every request, hooks and unknown paths included.
func (s *Server) TotalRequests() int { return int(s.total.Load()) }

// ResetRequests sets every counter back to zero.
func (s *Server) ResetRequests() {
	for _, m := range []*sync.Map{&s.progressCounts, &s.studyCounts} {
		m.Range(func(key, _ any) bool {
			m.Delete(key)
			return true
		})
	}
	s.total.Store(0)
}

// OnRequest sets a function called for every request once its reply is
// decided and before it is written (for a hanging request, before it
// hangs). It runs on the request's goroutine, so it must be quick and
// safe for concurrent use; nil removes it.
func (s *Server) OnRequest(fn func(Request)) {
	if fn == nil {
		s.observer.Store(nil)
		return
	}
	s.observer.Store(&fn)
}

// Wait blocks until cond returns true, re-checking it after every request
// the fake handles, or until ctx ends. Tests use it to wait for polls
// instead of sleeping.
func (s *Server) Wait(ctx context.Context, cond func() bool) error {
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	for {
		s.waitMu.Lock()
		ch := s.waitCh
		s.waitMu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the fake Prolific API: %w", ctx.Err())
		}
	}
}

// wake re-runs the conditions of waiting Wait calls.
func (s *Server) wake() {
	if s.waiters.Load() == 0 {
		return
	}
	s.waitMu.Lock()
	close(s.waitCh)
	s.waitCh = make(chan struct{})
	s.waitMu.Unlock()
}

// Secrets lists the webhook secrets created, oldest first.
func (s *Server) Secrets() []WebhookSecret {
	s.hooksMu.Lock()
	defer s.hooksMu.Unlock()
	return slices.Clone(s.secrets)
}

// Subscriptions lists the webhook subscriptions created, oldest first.
func (s *Server) Subscriptions() []Subscription {
	s.hooksMu.Lock()
	defer s.hooksMu.Unlock()
	return slices.Clone(s.subs)
}

// response is a reply decided before it is written.
type response struct {
	status     int
	body       []byte
	retryAfter string
	hookSecret string
	hang       bool
}

// ServeHTTP serves the fake API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep, id, rest := route(r.URL.Path)
	s.total.Add(1)
	switch ep {
	case EndpointProgress:
		counter(&s.progressCounts, id).Add(1)
	case EndpointStudy:
		counter(&s.studyCounts, id).Add(1)
	}

	resp := s.decide(r, ep, id, rest)

	if fn := s.observer.Load(); fn != nil {
		(*fn)(Request{Endpoint: ep, StudyID: id, Method: r.Method, Path: r.URL.Path, Status: resp.status})
	}
	s.wake()

	if resp.hang {
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType(resp.body))
	if resp.retryAfter != "" {
		h.Set("Retry-After", resp.retryAfter)
	}
	if resp.hookSecret != "" {
		h.Set("X-Hook-Secret", resp.hookSecret)
	}
	w.WriteHeader(resp.status)
	_, _ = w.Write(resp.body)
}

// decide computes the reply: a fault if one is queued, then the auth
// check, then the endpoint itself.
func (s *Server) decide(r *http.Request, ep Endpoint, id, rest string) response {
	if f, ok := s.nextFault(id, ep); ok {
		if resp, ok := faultResponse(f); ok {
			return resp
		}
	}
	if expected := *s.auth.Load(); expected != "" {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(expected)) != 1 {
			return errorResponse(http.StatusUnauthorized)
		}
	}
	switch ep {
	case EndpointProgress, EndpointStudy:
		if r.Method != http.MethodGet {
			return errorResponse(http.StatusMethodNotAllowed)
		}
		return s.studyResponse(ep, id)
	case EndpointHooks:
		return s.hooksResponse(r, rest)
	}
	return errorResponse(http.StatusNotFound)
}

// studyResponse serves the pre-encoded progress or study body.
func (s *Server) studyResponse(ep Endpoint, id string) response {
	s.mu.RLock()
	entry, ok := s.studies[id]
	s.mu.RUnlock()
	switch {
	case ep == EndpointProgress && (!ok || entry.study.NotTaskflow):
		return response{status: http.StatusNotFound, body: []byte(notTaskflowBody)}
	case !ok:
		return errorResponse(http.StatusNotFound)
	case ep == EndpointProgress:
		return response{status: http.StatusOK, body: entry.progressBody}
	default:
		return response{status: http.StatusOK, body: entry.studyBody}
	}
}

// route splits a path into its endpoint, study id and, for hooks, the
// path below /api/v1/hooks/. A missing trailing slash is tolerated.
func route(path string) (ep Endpoint, id, rest string) {
	if rest, ok := strings.CutPrefix(path, "/api/v1/hooks/"); ok {
		return EndpointHooks, "", rest
	}
	tail, ok := strings.CutPrefix(path, "/api/v1/studies/")
	if !ok {
		return EndpointOther, "", ""
	}
	id, sub, _ := strings.Cut(tail, "/")
	switch {
	case id == "":
		return EndpointOther, "", ""
	case sub == "":
		return EndpointStudy, id, ""
	case sub == "access-details-progress/" || sub == "access-details-progress":
		return EndpointProgress, id, ""
	}
	return EndpointOther, "", ""
}

// faultResponse turns a fault into a reply; false means "serve normally"
// (a 2xx fault without a body).
func faultResponse(f Fault) (response, bool) {
	if f.Hang {
		return response{hang: true}, true
	}
	status := f.Status
	if status == 0 {
		status = http.StatusOK
	}
	if f.Body == "" && status < 300 {
		return response{}, false
	}
	resp := response{status: status, body: []byte(f.Body), retryAfter: f.RetryAfter}
	if f.Body == "" {
		resp.body = errorResponse(status).body
	}
	return resp, true
}

// notTaskflowBody is Prolific's documented 404 for a study without access
// details.
const notTaskflowBody = `{"error": {"status": 404, "error_code": 140100, "title": "Not found", "detail": "No access details collection for this study."}}`

// errorResponse is the reply Prolific (or the gateway in front of it)
// gives for an error status.
func errorResponse(status int) response {
	var code int
	var title, detail string
	switch status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		text := strconv.Itoa(status) + " " + http.StatusText(status)
		body := "<html><head><title>" + text + "</title></head><body><h1>" + text + "</h1></body></html>\n"
		return response{status: status, body: []byte(body)}
	case http.StatusUnauthorized:
		code, title, detail = 140001, "Unauthorized", "Invalid token."
	case http.StatusForbidden:
		code, title, detail = 140003, "Forbidden", "You do not have permission to perform this action."
	case http.StatusNotFound:
		code, title, detail = 140100, "Not found", "Not found."
	case http.StatusMethodNotAllowed:
		code, title, detail = 140005, "Method not allowed", "Method not allowed."
	case http.StatusTooManyRequests:
		code, title, detail = 140029, "Too many requests", "Request was throttled."
	default:
		code, title, detail = 140000+status, http.StatusText(status), "The server could not handle the request."
	}
	return response{status: status, body: encodeError(status, code, title, detail)}
}

// encodeError writes the documented {"error": {...}} shape.
func encodeError(status, code int, title string, detail any) []byte {
	body, err := json.Marshal(map[string]any{"error": map[string]any{
		"status": status, "error_code": code, "title": title, "detail": detail,
	}})
	if err != nil {
		panic(fmt.Sprintf("prolifictest: encoding an error body: %v", err))
	}
	return body
}

// contentType guesses the reply type from its first byte, as the real API
// sends JSON and its gateways HTML or text.
func contentType(body []byte) string {
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '['):
		return "application/json"
	case len(trimmed) > 0 && trimmed[0] == '<':
		return "text/html; charset=utf-8"
	}
	return "text/plain; charset=utf-8"
}

// counter returns the request counter of id, creating it on first use.
func counter(m *sync.Map, id string) *atomic.Int64 {
	if c, ok := m.Load(id); ok {
		return c.(*atomic.Int64)
	}
	c, _ := m.LoadOrStore(id, new(atomic.Int64))
	return c.(*atomic.Int64)
}

// loadCount reads a counter without creating it.
func loadCount(m *sync.Map, id string) int {
	if c, ok := m.Load(id); ok {
		return int(c.(*atomic.Int64).Load())
	}
	return 0
}

// cloneStudy copies a study so callers cannot alias the served URLs.
func cloneStudy(st Study) Study {
	st.URLs = slices.Clone(st.URLs)
	return st
}

// newStudyEntry fills defaults and encodes both replies.
func newStudyEntry(st Study) *studyEntry {
	st = cloneStudy(st)
	if st.Status == "" {
		st.Status = rules.StatusActive
	}
	if st.InternalName == "" {
		st.InternalName = st.Name
	}
	if st.CollectionID == "" {
		st.CollectionID = derivedUUID(st.ID)
	}
	return &studyEntry{study: st, progressBody: encodeProgress(st), studyBody: encodeStudy(st)}
}

// encodeProgress writes the access-details-progress reply in Prolific's shape.
func encodeProgress(st Study) []byte {
	var b bytes.Buffer
	b.Grow(160 + 120*len(st.URLs))
	b.WriteString(`{"id": `)
	writeJSONString(&b, st.CollectionID)
	b.WriteString(`, "progress": [`)
	for i, u := range st.URLs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`{"external_url": `)
		writeJSONString(&b, u.ExternalURL)
		b.WriteString(`, "total_allocation": `)
		writeCount(&b, u.TotalAllocation, st.FloatNumbers)
		b.WriteString(`, "allocated": `)
		writeCount(&b, u.Allocated, st.FloatNumbers)
		b.WriteString(`, "capacity_increments": `)
		writeCount(&b, u.CapacityIncrements, st.FloatNumbers)
		b.WriteString(`}`)
	}
	b.WriteString(`], "_links": {"self": {"href": `)
	writeJSONString(&b, "https://api.prolific.com/api/v1/studies/"+st.ID+"/access-details-progress/")
	b.WriteString(`, "title": "Current"}}}`)
	return b.Bytes()
}

// wireStudy mirrors the documented study object, extra fields included so
// the client is exercised against a realistic reply.
type wireStudy struct {
	ID                      string   `json:"id"`
	Name                    string   `json:"name"`
	InternalName            string   `json:"internal_name"`
	Description             string   `json:"description"`
	ExternalStudyURL        string   `json:"external_study_url"`
	ProlificIDOption        string   `json:"prolific_id_option"`
	TotalAvailablePlaces    int      `json:"total_available_places"`
	EstimatedCompletionTime int      `json:"estimated_completion_time"`
	MaximumAllowedTime      int      `json:"maximum_allowed_time"`
	Reward                  int      `json:"reward"`
	DeviceCompatibility     []string `json:"device_compatibility"`
	Filters                 []string `json:"filters"`
	FilterSetID             *string  `json:"filter_set_id"`
	Status                  string   `json:"status"`
	StudyLabels             []string `json:"study_labels"`
	IsCustomScreening       bool     `json:"is_custom_screening"`
}

// encodeStudy writes the study reply.
func encodeStudy(st Study) []byte {
	places := st.TotalAvailablePlaces
	if places == 0 {
		for _, u := range st.URLs {
			places += u.TotalAllocation
		}
	}
	body, err := json.Marshal(wireStudy{
		ID:                      st.ID,
		Name:                    st.Name,
		InternalName:            st.InternalName,
		Description:             "A Taskflow study served by the fake Prolific API.",
		ExternalStudyURL:        "https://example.com/task?participant={{%PROLIFIC_PID%}}",
		ProlificIDOption:        "url_parameters",
		TotalAvailablePlaces:    places,
		EstimatedCompletionTime: 5,
		MaximumAllowedTime:      25,
		Reward:                  100,
		DeviceCompatibility:     []string{"desktop"},
		Filters:                 []string{},
		Status:                  st.Status,
		StudyLabels:             []string{"other"},
	})
	if err != nil {
		panic(fmt.Sprintf("prolifictest: encoding a study: %v", err))
	}
	return body
}

// writeJSONString writes s as a JSON string.
func writeJSONString(b *bytes.Buffer, s string) {
	encoded, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("prolifictest: encoding a string: %v", err))
	}
	b.Write(encoded)
}

// writeCount writes n, as 10.0 in float mode.
func writeCount(b *bytes.Buffer, n int, float bool) {
	b.WriteString(strconv.Itoa(n))
	if float {
		b.WriteString(".0")
	}
}

// derivedUUID makes a stable uuid-shaped collection id from a study id.
func derivedUUID(seed string) string {
	sum := sha256.Sum256([]byte("collection:" + seed))
	h := hex.EncodeToString(sum[:16])
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32]
}

// randomHex returns n random bytes as hex, for ids shaped like Prolific's.
func randomHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

// maxHookBody bounds a hooks request body.
const maxHookBody = 64 << 10

// hooksResponse serves the secret and subscription endpoints.
func (s *Server) hooksResponse(r *http.Request, rest string) response {
	if r.Method != http.MethodPost {
		return errorResponse(http.StatusMethodNotAllowed)
	}
	var fields map[string]any
	data, err := io.ReadAll(io.LimitReader(r.Body, maxHookBody))
	if err != nil || json.Unmarshal(data, &fields) != nil {
		return badRequest("Invalid JSON body.")
	}
	str := func(k string) string {
		v, _ := fields[k].(string)
		return v
	}
	switch {
	case rest == "secrets/" || rest == "secrets":
		return s.createSecret(str("workspace_id"))
	case rest == "subscriptions/" || rest == "subscriptions":
		enabled := true
		if v, ok := fields["is_enabled"].(bool); ok {
			enabled = v
		}
		return s.createSubscription(Subscription{
			EventType: str("event_type"), TargetURL: str("target_url"), WorkspaceID: str("workspace_id"), IsEnabled: enabled,
		})
	case strings.HasPrefix(rest, "subscriptions/"):
		id := strings.TrimSuffix(strings.TrimPrefix(rest, "subscriptions/"), "/")
		return s.confirmSubscription(id, str("secret"))
	}
	return errorResponse(http.StatusNotFound)
}

// badRequest is a 400 in the documented shape; detail may be an object of
// field errors, as Prolific's validation replies are.
func badRequest(detail any) response {
	return response{status: http.StatusBadRequest, body: encodeError(http.StatusBadRequest, 140400, "Bad request", detail)}
}

// createSecret creates or replaces a workspace's secret.
func (s *Server) createSecret(workspaceID string) response {
	secret := WebhookSecret{ID: randomHex(12), Value: rand.Text() + rand.Text(), WorkspaceID: workspaceID}
	s.hooksMu.Lock()
	s.secrets = append(s.secrets, secret)
	s.hooksMu.Unlock()
	body, _ := json.Marshal(map[string]string{"id": secret.ID, "value": secret.Value, "workspace_id": secret.WorkspaceID})
	return response{status: http.StatusCreated, body: body}
}

// wireSubscription is a subscription in the hooks API's shape.
type wireSubscription struct {
	ID          string `json:"id"`
	EventType   string `json:"event_type"`
	TargetURL   string `json:"target_url"`
	WorkspaceID string `json:"workspace_id"`
	IsEnabled   bool   `json:"is_enabled"`
}

// toWire converts a stored subscription to its reply shape.
func (sub Subscription) toWire() wireSubscription {
	return wireSubscription{ID: sub.ID, EventType: sub.EventType, TargetURL: sub.TargetURL, WorkspaceID: sub.WorkspaceID, IsEnabled: sub.IsEnabled}
}

// createSubscription validates and stores a subscription and replies, as
// documented, with the workspace's subscriptions and an X-Hook-Secret.
func (s *Server) createSubscription(sub Subscription) response {
	missing := map[string][]string{}
	for field, v := range map[string]string{"event_type": sub.EventType, "target_url": sub.TargetURL, "workspace_id": sub.WorkspaceID} {
		if v == "" {
			missing[field] = []string{"This field is required."}
		}
	}
	if len(missing) > 0 {
		return badRequest(missing)
	}
	s.hooksMu.Lock()
	defer s.hooksMu.Unlock()
	if _, ok := s.secretLocked(sub.WorkspaceID); !ok {
		return badRequest("Create a secret for this workspace before subscribing.")
	}
	sub.ID = randomHex(12)
	sub.HookSecret = rand.Text()
	s.subs = append(s.subs, sub)
	var results []wireSubscription
	for _, existing := range s.subs {
		if existing.WorkspaceID == sub.WorkspaceID {
			results = append(results, existing.toWire())
		}
	}
	body, _ := json.Marshal(map[string]any{"results": results})
	return response{status: http.StatusCreated, body: body, hookSecret: sub.HookSecret}
}

// confirmSubscription checks the hook secret and enables the subscription.
func (s *Server) confirmSubscription(id, secret string) response {
	s.hooksMu.Lock()
	defer s.hooksMu.Unlock()
	for i := range s.subs {
		sub := &s.subs[i]
		if sub.ID != id {
			continue
		}
		if secret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(sub.HookSecret)) != 1 {
			return badRequest(map[string][]string{"secret": {"Invalid secret."}})
		}
		sub.Confirmed, sub.IsEnabled = true, true
		body, _ := json.Marshal(sub.toWire())
		return response{status: http.StatusOK, body: body}
	}
	return errorResponse(http.StatusNotFound)
}

// secretLocked returns a workspace's current secret; hooksMu must be held.
func (s *Server) secretLocked(workspaceID string) (string, bool) {
	for i := len(s.secrets) - 1; i >= 0; i-- {
		if s.secrets[i].WorkspaceID == workspaceID {
			return s.secrets[i].Value, true
		}
	}
	return "", false
}

// Emit delivers an event, as Prolific would, to every confirmed and
// enabled subscription of its type, signed with the subscription
// workspace's current secret. status is left out of the payload when "".
// Each subscription gets its own X-Event-ID.
func (s *Server) Emit(ctx context.Context, eventType, resourceID, status string) []Delivery {
	type target struct {
		sub    Subscription
		secret string
	}
	var targets []target
	s.hooksMu.Lock()
	for _, sub := range s.subs {
		if sub.EventType == eventType && sub.Confirmed && sub.IsEnabled {
			secret, _ := s.secretLocked(sub.WorkspaceID)
			targets = append(targets, target{sub: sub, secret: secret})
		}
	}
	s.hooksMu.Unlock()

	payload := map[string]string{"event_type": eventType, "resource_id": resourceID}
	if status != "" {
		payload["status"] = status
	}
	body, _ := json.Marshal(payload)
	deliveries := make([]Delivery, 0, len(targets))
	for _, t := range targets {
		d := Delivery{SubscriptionID: t.sub.ID, TargetURL: t.sub.TargetURL, EventID: randomHex(16)}
		d.StatusCode, d.Err = s.SendWebhook(ctx, t.sub.TargetURL, []byte(t.secret), d.EventID, body)
		deliveries = append(deliveries, d)
	}
	return deliveries
}

// SendWebhook POSTs one signed delivery with the given event id and raw
// body, timestamped by the server's clock, and returns the receiver's
// status. Tests use it to replay an event or send a chosen payload.
func (s *Server) SendWebhook(ctx context.Context, targetURL string, secret []byte, eventID string, body []byte) (int, error) {
	timestamp := strconv.FormatInt((*s.now.Load())().Unix(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, targetURL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("building webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Prolific-Request-Timestamp", timestamp)
	req.Header.Set("X-Prolific-Request-Signature", sign(secret, timestamp, body))
	if eventID != "" {
		req.Header.Set("X-Event-ID", eventID)
	}
	resp, err := s.delivery.Do(req)
	if err != nil {
		return 0, fmt.Errorf("delivering webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}

// sign is base64(HMAC-SHA256(secret, timestamp + body)), as Prolific signs.
// It mirrors prolific.SignWebhook so this package does not import the
// client, which keeps the client's own tests free to import this one.
func sign(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write(body)
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
