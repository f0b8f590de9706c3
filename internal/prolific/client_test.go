package prolific

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// testToken is distinctive so that a leak into an error string is easy to spot.
const testToken = "tok-SECRET-5b7e1c0d9a"

// testStudyID is the id of the documented sample study.
const testStudyID = "60d9aadeb86739de712faee0"

// progressPath is the path Progress requests for testStudyID.
const progressPath = "/api/v1/studies/" + testStudyID + "/access-details-progress/"

// newTestClient returns a client for baseURL with the test token, after
// applying changes to its config.
func newTestClient(t *testing.T, baseURL string, changes ...func(*Config)) *Client {
	t.Helper()
	cfg := Config{BaseURL: baseURL, Token: testToken}
	for _, change := range changes {
		change(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// rawServer replies to every request with the given status, headers and body.
func rawServer(t *testing.T, status int, header map[string]string, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// readTestdata returns a file from testdata.
func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatalf("reading testdata: %v", err)
	}
	return data
}

// assertNoToken fails when the token leaked into an error string.
func assertNoToken(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testToken) {
		t.Errorf("error string contains the token: %q", err.Error())
	}
}

func TestProgressDecodesDocumentedSample(t *testing.T) {
	t.Parallel()
	sample := readTestdata(t, "prolific-access-details-progress.json")
	var gotPath atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath.Store(r.Method + " " + r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(sample)
	}))
	t.Cleanup(srv.Close)

	got, err := newTestClient(t, srv.URL).Progress(t.Context(), testStudyID)
	if err != nil {
		t.Fatalf("Progress: %v", err)
	}
	want := Progress{
		CollectionID: "42a9f01f-3cd8-4cf0-b79a-9b2cd50a1e85",
		URLs: []rules.URLCounts{
			{ExternalURL: "https://google.com", TotalAllocation: 10, Allocated: 12, CapacityIncrements: 3},
			{ExternalURL: "https://bing.com", TotalAllocation: 10, Allocated: 4, CapacityIncrements: 0},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Progress = %+v, want %+v", got, want)
	}
	if p := gotPath.Load(); p != "GET "+progressPath {
		t.Errorf("requested %v, want GET %s", p, progressPath)
	}
}

func TestStudyDecodesDocumentedSample(t *testing.T) {
	t.Parallel()
	srv := rawServer(t, http.StatusOK, nil, string(readTestdata(t, "prolific-study.json")))

	got, err := newTestClient(t, srv.URL).Study(t.Context(), testStudyID)
	if err != nil {
		t.Fatalf("Study: %v", err)
	}
	want := Study{
		ID:                   testStudyID,
		Name:                 "Study about API's",
		InternalName:         "WIT-2021 Study about API's version 2",
		Status:               StatusAwaitingReview,
		TotalAvailablePlaces: 30,
	}
	if got != want {
		t.Errorf("Study = %+v, want %+v", got, want)
	}
}

func TestProgressAgainstFake(t *testing.T) {
	t.Parallel()
	urls := []rules.URLCounts{
		{ExternalURL: "https://a.example/task", TotalAllocation: 10, Allocated: 7, CapacityIncrements: 2},
		{ExternalURL: "https://b.example/task?x=\"q\"", TotalAllocation: 5, Allocated: 0},
	}
	tests := []struct {
		name  string
		float bool
	}{
		// Integers as Prolific usually writes them.
		{name: "integers"},
		// Every count written as 10.0.
		{name: "float numbers", float: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := prolifictest.NewServer(t, testToken)
			fake.SetStudy(prolifictest.Study{ID: testStudyID, Name: "Fake", URLs: urls, FloatNumbers: tt.float})
			c := newTestClient(t, fake.URL())

			got, err := c.Progress(t.Context(), testStudyID)
			if err != nil {
				t.Fatalf("Progress: %v", err)
			}
			if !reflect.DeepEqual(got.URLs, urls) || got.CollectionID == "" {
				t.Errorf("Progress = %+v, want URLs %+v and a collection id", got, urls)
			}
			study, err := c.Study(t.Context(), testStudyID)
			if err != nil {
				t.Fatalf("Study: %v", err)
			}
			if study.ID != testStudyID || study.Name != "Fake" || study.Status != StatusActive || study.TotalAvailablePlaces != 15 {
				t.Errorf("Study = %+v", study)
			}
			if fake.Requests(testStudyID) != 1 || fake.StudyRequests(testStudyID) != 1 {
				t.Errorf("fake counted %d progress and %d study requests, want 1 and 1",
					fake.Requests(testStudyID), fake.StudyRequests(testStudyID))
			}
		})
	}
}

func TestProgressLenientDecoding(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want []rules.URLCounts
	}{
		// Counts written with a zero fraction.
		{
			name: "whole floats",
			body: `{"id": "c", "progress": [{"external_url": "u", "total_allocation": 10.0, "allocated": 12.0, "capacity_increments": 3.0}]}`,
			want: []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 10, Allocated: 12, CapacityIncrements: 3}},
		},
		// Exponent notation for a whole number.
		{
			name: "exponent",
			body: `{"progress": [{"external_url": "u", "total_allocation": 1e1, "allocated": 0.0e0}]}`,
			want: []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 10}},
		},
		// capacity_increments absent means no screen-out slots.
		{
			name: "missing capacity_increments",
			body: `{"progress": [{"external_url": "u", "total_allocation": 10, "allocated": 4}]}`,
			want: []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 10, Allocated: 4}},
		},
		// capacity_increments null means the same.
		{
			name: "null capacity_increments",
			body: `{"progress": [{"external_url": "u", "total_allocation": 10, "allocated": 4, "capacity_increments": null}]}`,
			want: []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 10, Allocated: 4}},
		},
		// Fields the client does not know are ignored at every level.
		{
			name: "unknown fields",
			body: `{"id": "c", "extra": {"a": [1]}, "progress": [{"external_url": "u", "total_allocation": 1, "allocated": 1, "capacity_increments": 0, "label": "x"}], "_links": {}}`,
			want: []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 1, Allocated: 1}},
		},
		// NUL characters, which Postgres cannot store, are dropped.
		{
			name: "NUL in external_url",
			body: `{"progress": [{"external_url": "https://a.example/\u0000x", "total_allocation": 1, "allocated": 0}]}`,
			want: []rules.URLCounts{{ExternalURL: "https://a.example/x", TotalAllocation: 1}},
		},
		// The collection id may be null.
		{
			name: "null id",
			body: ` {"id": null, "progress": [{"external_url": "u", "total_allocation": 1, "allocated": 0}]} `,
			want: []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := rawServer(t, http.StatusOK, nil, tt.body)
			got, err := newTestClient(t, srv.URL).Progress(t.Context(), testStudyID)
			if err != nil {
				t.Fatalf("Progress: %v", err)
			}
			if !reflect.DeepEqual(got.URLs, tt.want) {
				t.Errorf("URLs = %+v, want %+v", got.URLs, tt.want)
			}
		})
	}
}

func TestProgressMalformed(t *testing.T) {
	t.Parallel()
	entry := func(fields string) string { return `{"id": "c", "progress": [{` + fields + `}]}` }
	tests := []struct {
		name    string
		body    string
		mention string
	}{
		// A negative count is impossible.
		{name: "negative count", body: entry(`"external_url": "u", "total_allocation": 10, "allocated": -1`), mention: "allocated: negative"},
		// A count as a string is not accepted, even if numeric.
		{name: "string count", body: entry(`"external_url": "u", "total_allocation": "10", "allocated": 1`), mention: "total_allocation: not a number"},
		// A fraction is not a count.
		{name: "fractional count", body: entry(`"external_url": "u", "total_allocation": 10.5, "allocated": 1`), mention: "not a whole number"},
		// allocated must be present.
		{name: "missing allocated", body: entry(`"external_url": "u", "total_allocation": 10`), mention: "allocated: missing"},
		// total_allocation must not be null.
		{name: "null total_allocation", body: entry(`"external_url": "u", "total_allocation": null, "allocated": 1`), mention: "total_allocation: missing"},
		// A boolean is not a count.
		{name: "boolean count", body: entry(`"external_url": "u", "total_allocation": true, "allocated": 1`), mention: "not a number"},
		// A count too large for any real study.
		{name: "huge count", body: entry(`"external_url": "u", "total_allocation": 1e300, "allocated": 1`), mention: "too large"},
		// A negative zero-fraction float.
		{name: "negative float", body: entry(`"external_url": "u", "total_allocation": -2.0, "allocated": 1`), mention: "negative"},
		// Every URL needs its address.
		{name: "empty external_url", body: entry(`"external_url": "", "total_allocation": 1, "allocated": 1`), mention: "external_url: empty"},
		// A missing address too.
		{name: "missing external_url", body: entry(`"total_allocation": 1, "allocated": 1`), mention: "external_url: missing"},
		// Two entries for one URL would confuse per-URL alerts.
		{name: "duplicate url", body: `{"progress": [{"external_url": "u", "total_allocation": 1, "allocated": 1}, {"external_url": "u", "total_allocation": 1, "allocated": 1}]}`, mention: "listed twice"},
		// A Taskflow study always has at least one URL.
		{name: "empty progress", body: `{"id": "c", "progress": []}`, mention: "no URLs"},
		// The progress key is required.
		{name: "missing progress", body: `{"id": "c"}`, mention: "progress is missing"},
		// A null progress list is as bad as a missing one.
		{name: "null progress", body: `{"id": "c", "progress": null}`, mention: "progress is missing"},
		// progress must be a list.
		{name: "progress object", body: `{"progress": {"external_url": "u"}}`, mention: "not a list"},
		// A list entry must be an object.
		{name: "entry not object", body: `{"progress": [7]}`, mention: "progress[0]"},
		// Truncated JSON.
		{name: "malformed JSON", body: prolifictest.BodyMalformedJSON, mention: "invalid JSON"},
		// A body that is valid JSON but not an object.
		{name: "top-level list", body: `[]`, mention: "not a JSON object"},
		// JSON null as the whole body.
		{name: "null body", body: `null`, mention: "not a JSON object"},
		// An empty 200.
		{name: "empty body", body: ``, mention: "empty body"},
		// HTML served with a 200 by a captive proxy.
		{name: "html", body: `<html>login</html>`, mention: "invalid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := rawServer(t, http.StatusOK, nil, tt.body)
			_, err := newTestClient(t, srv.URL).Progress(t.Context(), testStudyID)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Progress error = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.mention) || !strings.Contains(err.Error(), progressPath) {
				t.Errorf("error %q should mention %q and the endpoint", err, tt.mention)
			}
			if Retryable(err) {
				t.Errorf("Retryable(%v) = true, want false", err)
			}
			assertNoToken(t, err)
		})
	}
}

func TestBodySizeLimit(t *testing.T) {
	t.Parallel()
	sample := readTestdata(t, "prolific-access-details-progress.json")
	srv := rawServer(t, http.StatusOK, nil, string(sample))
	tests := []struct {
		name    string
		limit   int64
		wantErr bool
	}{
		// A body exactly at the limit is read whole.
		{name: "at limit", limit: int64(len(sample))},
		// One byte over is refused, not truncated.
		{name: "over limit", limit: int64(len(sample)) - 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newTestClient(t, srv.URL, func(cfg *Config) { cfg.MaxBodyBytes = tt.limit })
			_, err := c.Progress(t.Context(), testStudyID)
			if tt.wantErr != (err != nil) {
				t.Fatalf("Progress error = %v, want error: %v", err, tt.wantErr)
			}
			if tt.wantErr && (!errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "exceeds")) {
				t.Errorf("error = %v, want ErrMalformed about the size", err)
			}
		})
	}
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	now := time.Date(2015, 10, 21, 7, 27, 0, 0, time.UTC)
	sentinels := []error{ErrUnauthorized, ErrNotFound, ErrRateLimited, ErrServer, ErrMalformed}
	tests := []struct {
		name       string
		fault      prolifictest.Fault
		notTask    bool
		want       error
		status     int
		code       string
		title      string
		detail     string
		retryAfter time.Duration
		retryable  bool
	}{
		// A rejected token.
		{name: "401", fault: prolifictest.Fault{Status: 401}, want: ErrUnauthorized, status: 401, code: "140001", title: "Unauthorized", detail: "Invalid token."},
		// A token without access to the study.
		{name: "403", fault: prolifictest.Fault{Status: 403}, want: ErrUnauthorized, status: 403, code: "140003", title: "Forbidden"},
		// The documented 404 of a study that is not a Taskflow study.
		{name: "404 not taskflow", notTask: true, want: ErrNotFound, status: 404, code: "140100", title: "Not found", detail: "No access details collection for this study."},
		// The fixture body served verbatim.
		{name: "404 fixture body", fault: prolifictest.Fault{Status: 404, Body: "FIXTURE"}, want: ErrNotFound, status: 404, code: "140100", title: "Not found", detail: "No access details collection for this study."},
		// Throttled without a Retry-After header.
		{name: "429 without Retry-After", fault: prolifictest.Fault{Status: 429}, want: ErrRateLimited, status: 429, code: "140029", title: "Too many requests", retryable: true},
		// Throttled with Retry-After in seconds.
		{name: "429 Retry-After seconds", fault: prolifictest.Fault{Status: 429, RetryAfter: "30"}, want: ErrRateLimited, status: 429, code: "140029", retryAfter: 30 * time.Second, retryable: true},
		// Throttled with Retry-After as an HTTP-date a minute after the injected now.
		{name: "429 Retry-After date", fault: prolifictest.Fault{Status: 429, RetryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"}, want: ErrRateLimited, status: 429, code: "140029", retryAfter: time.Minute, retryable: true},
		// A JSON 500.
		{name: "500", fault: prolifictest.Fault{Status: 500}, want: ErrServer, status: 500, code: "140500", title: "Internal Server Error", retryable: true},
		// A gateway's HTML page is reduced to its text.
		{name: "502 html", fault: prolifictest.Fault{Status: 502}, want: ErrServer, status: 502, detail: "502 Bad Gateway 502 Bad Gateway", retryable: true},
		// Plain text with Retry-After.
		{name: "503 plain text", fault: prolifictest.Fault{Status: 503, Body: "upstream connect error\n", RetryAfter: "5"}, want: ErrServer, status: 503, detail: "upstream connect error", retryAfter: 5 * time.Second, retryable: true},
		// The {"message", "detail"} shape with a field-error object.
		{name: "message shape", fault: prolifictest.Fault{Status: 400, Body: `{"message": "Invalid request", "detail": {"workspace_id": ["This field is required."], "b": "x"}}`}, status: 400, title: "Invalid request", detail: "b: x; workspace_id: This field is required."},
		// A list detail and a textual error_code.
		{name: "list detail", fault: prolifictest.Fault{Status: 400, Body: `{"error": {"status": 400, "error_code": "E_BAD", "title": "Bad request", "detail": ["first", "second"]}}`}, status: 400, code: "E_BAD", title: "Bad request", detail: "first; second"},
		// Django's bare {"detail"} shape.
		{name: "detail only", fault: prolifictest.Fault{Status: 409, Body: `{"detail": "Conflict here."}`}, status: 409, detail: "Conflict here."},
		// Unknown JSON is kept compact.
		{name: "unknown json", fault: prolifictest.Fault{Status: 422, Body: "{\"oops\": \n 1}"}, status: 422, detail: `{"oops":1}`},
		// An empty error body falls back to the status text.
		{name: "empty body", fault: prolifictest.Fault{Status: 418, Body: " "}, status: 418},
		// A server echoing the token must not leak it.
		{name: "echoed token", fault: prolifictest.Fault{Status: 400, Body: `{"error": {"title": "Bad header", "detail": "got Token ` + testToken + `"}}`}, status: 400, title: "Bad header", detail: "got Token [redacted]"},
		// Plain text echoing the token.
		{name: "echoed token text", fault: prolifictest.Fault{Status: 500, Body: "Authorization: Token " + testToken}, want: ErrServer, status: 500, detail: "Authorization: Token [redacted]", retryable: true},
	}
	fixture404 := string(readTestdata(t, "prolific-error-404.json"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := prolifictest.NewServer(t, testToken)
			fake.SetProgress(testStudyID, []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 1}})
			if tt.notTask {
				fake.SetNotTaskflow(testStudyID)
			}
			if tt.fault.Status != 0 {
				f := tt.fault
				if f.Body == "FIXTURE" {
					f.Body = fixture404
				}
				fake.Fail(testStudyID, f, 1)
			}
			c := newTestClient(t, fake.URL(), func(cfg *Config) { cfg.Now = func() time.Time { return now } })

			_, err := c.Progress(t.Context(), testStudyID)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("Progress error = %v, want *APIError", err)
			}
			for _, s := range sentinels {
				if got := errors.Is(err, s); got != (s == tt.want) {
					t.Errorf("errors.Is(err, %v) = %v", s, got)
				}
			}
			if apiErr.StatusCode != tt.status || apiErr.RetryAfter != tt.retryAfter || apiErr.Code != tt.code {
				t.Errorf("status %d, retry after %s, code %q; want %d, %s, %q",
					apiErr.StatusCode, apiErr.RetryAfter, apiErr.Code, tt.status, tt.retryAfter, tt.code)
			}
			if tt.title != "" && apiErr.Title != tt.title {
				t.Errorf("Title = %q, want %q", apiErr.Title, tt.title)
			}
			if tt.detail != "" && apiErr.Detail != tt.detail {
				t.Errorf("Detail = %q, want %q", apiErr.Detail, tt.detail)
			}
			if apiErr.Endpoint != "GET "+progressPath {
				t.Errorf("Endpoint = %q", apiErr.Endpoint)
			}
			if RetryAfter(err) != tt.retryAfter {
				t.Errorf("RetryAfter(err) = %s, want %s", RetryAfter(err), tt.retryAfter)
			}
			if Retryable(err) != tt.retryable {
				t.Errorf("Retryable = %v, want %v", Retryable(err), tt.retryable)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", tt.status)) {
				t.Errorf("error %q does not name the status", err)
			}
			assertNoToken(t, err)
		})
	}
}

func TestErrorTextIsTruncated(t *testing.T) {
	t.Parallel()
	srv := rawServer(t, http.StatusInternalServerError, nil, strings.Repeat("é", 5000))
	_, err := newTestClient(t, srv.URL).Progress(t.Context(), testStudyID)
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error = %v, want *APIError", err)
	}
	if n := len([]rune(apiErr.Detail)); n != maxErrorText+1 || !strings.HasSuffix(apiErr.Detail, "…") {
		t.Errorf("Detail has %d runes, want %d ending in an ellipsis", n, maxErrorText+1)
	}
}

func TestWrongTokenAgainstFake(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, "the-right-token")
	fake.SetProgress(testStudyID, []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 1}})
	c := newTestClient(t, fake.URL())

	_, err := c.Progress(t.Context(), testStudyID)
	if !errors.Is(err, ErrUnauthorized) || Classify(err) != rules.FailureAuth {
		t.Fatalf("error = %v (kind %q), want ErrUnauthorized", err, Classify(err))
	}
	_, err = c.Study(t.Context(), testStudyID)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Study error = %v, want ErrUnauthorized", err)
	}
	assertNoToken(t, err)
}

func TestRequestHeaders(t *testing.T) {
	t.Parallel()
	headers := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		headers <- r.Header.Clone()
		_, _ = w.Write([]byte(`{"progress": [{"external_url": "u", "total_allocation": 1, "allocated": 0}]}`))
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv.URL, func(cfg *Config) { cfg.UserAgent = "taskflow-watch/test" })

	if _, err := c.Progress(t.Context(), testStudyID); err != nil {
		t.Fatalf("Progress: %v", err)
	}
	h := <-headers
	if got := h.Get("Authorization"); got != "Token "+testToken {
		t.Errorf("Authorization = %q", got)
	}
	if got := h.Get("Accept"); got != "application/json" {
		t.Errorf("Accept = %q", got)
	}
	if got := h.Get("User-Agent"); got != "taskflow-watch/test" {
		t.Errorf("User-Agent = %q", got)
	}
}

func TestTimeoutAgainstHangingServer(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	fake.SetProgress(testStudyID, []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 1}})
	fake.Fail(testStudyID, prolifictest.Fault{Hang: true}, 1)
	c := newTestClient(t, fake.URL(), func(cfg *Config) { cfg.Timeout = 50 * time.Millisecond })

	_, err := c.Progress(t.Context(), testStudyID)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrTransport) {
		t.Fatalf("error = %v, want DeadlineExceeded wrapped in ErrTransport", err)
	}
	if !Retryable(err) || Classify(err) != rules.FailureTransient {
		t.Errorf("Retryable = %v, Classify = %q; want true, transient", Retryable(err), Classify(err))
	}
	assertNoToken(t, err)

	// The fault was used once: the next poll succeeds.
	if _, err := c.Progress(t.Context(), testStudyID); err != nil {
		t.Errorf("second Progress: %v", err)
	}
}

func TestCallerCancellationIsNotRetryable(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	fake.SetProgress(testStudyID, []rules.URLCounts{{ExternalURL: "u", TotalAllocation: 1}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	_, err := newTestClient(t, fake.URL()).Progress(ctx, testStudyID)
	if !errors.Is(err, context.Canceled) || Retryable(err) {
		t.Fatalf("error = %v (retryable %v), want a non-retryable Canceled", err, Retryable(err))
	}
}

func TestConnectionErrorIsRetryable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()

	_, err := newTestClient(t, url).Progress(t.Context(), testStudyID)
	if !errors.Is(err, ErrTransport) || !Retryable(err) {
		t.Fatalf("error = %v, want a retryable ErrTransport", err)
	}
	assertNoToken(t, err)
}

func TestStudyMalformed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
	}{
		// A study without an id is not a study.
		{name: "missing id", body: `{"name": "x", "status": "ACTIVE"}`},
		// The status must be text.
		{name: "numeric status", body: `{"id": "x", "status": 3}`},
		// Places must be a count.
		{name: "string places", body: `{"id": "x", "total_available_places": "30"}`},
		// Not JSON at all.
		{name: "not json", body: `Service Unavailable`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := rawServer(t, http.StatusOK, nil, tt.body)
			_, err := newTestClient(t, srv.URL).Study(t.Context(), testStudyID)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Study error = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestStudyKeepsUnknownStatus(t *testing.T) {
	t.Parallel()
	srv := rawServer(t, http.StatusOK, nil, `{"id": "x", "status": "ON HOLD", "total_available_places": 30.0}`)
	got, err := newTestClient(t, srv.URL).Study(t.Context(), testStudyID)
	if err != nil {
		t.Fatalf("Study: %v", err)
	}
	if got.Status != "ON HOLD" || got.TotalAvailablePlaces != 30 {
		t.Errorf("Study = %+v", got)
	}
}

// Names, statuses and error texts reach Postgres, which refuses NUL
// characters; the client drops them so that such a study can still be recorded.
func TestNULCharactersAreDropped(t *testing.T) {
	t.Parallel()
	srv := rawServer(t, http.StatusOK, nil, `{"id": "x", "name": "Pilot\u0000 survey", "status": "ACTIVE\u0000"}`)
	got, err := newTestClient(t, srv.URL).Study(t.Context(), testStudyID)
	if err != nil {
		t.Fatalf("Study: %v", err)
	}
	if got.Name != "Pilot survey" || got.Status != "ACTIVE" {
		t.Errorf("Study = %+v", got)
	}
	srv = rawServer(t, http.StatusInternalServerError, nil, `{"error": {"title": "bad\u0000", "detail": "\u0000down"}}`)
	_, err = newTestClient(t, srv.URL).Progress(t.Context(), testStudyID)
	if err == nil || strings.ContainsRune(err.Error(), 0) {
		t.Errorf("Progress error = %q, want one without NUL", err)
	}
}

func TestStudyNotFoundAgainstFake(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	c := newTestClient(t, fake.URL())
	_, err := c.Study(t.Context(), testStudyID)
	if !errors.Is(err, ErrNotFound) || Classify(err) != rules.FailureNotFound {
		t.Fatalf("Study error = %v, want ErrNotFound", err)
	}
	_, err = c.Progress(t.Context(), testStudyID)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Progress error = %v, want ErrNotFound", err)
	}
}

func TestStudyIDIsEscaped(t *testing.T) {
	t.Parallel()
	paths := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.EscapedPath()
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv.URL+"/prefix/")

	if _, err := c.Progress(t.Context(), "a/../b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Progress error = %v, want ErrNotFound", err)
	}
	if got, want := <-paths, "/prefix/api/v1/studies/a%2F..%2Fb/access-details-progress/"; got != want {
		t.Errorf("path = %q, want %q", got, want)
	}
	if _, err := c.Progress(t.Context(), " "); err == nil {
		t.Error("Progress with an empty id succeeded")
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		// The defaults fill everything but the token.
		{name: "defaults", cfg: Config{Token: testToken}},
		// A base URL with a path prefix.
		{name: "path prefix", cfg: Config{BaseURL: "http://127.0.0.1:9/prolific/", Token: testToken}},
		// No token.
		{name: "missing token", cfg: Config{BaseURL: "https://api.prolific.com"}, wantErr: true},
		// A token that would break the header.
		{name: "token with newline", cfg: Config{Token: "abc\ndef"}, wantErr: true},
		// A relative URL.
		{name: "relative url", cfg: Config{BaseURL: "api.prolific.com", Token: testToken}, wantErr: true},
		// Another scheme.
		{name: "ftp url", cfg: Config{BaseURL: "ftp://api.prolific.com", Token: testToken}, wantErr: true},
		// Credentials in the URL.
		{name: "userinfo", cfg: Config{BaseURL: "https://u:p@api.prolific.com", Token: testToken}, wantErr: true},
		// A query string.
		{name: "query", cfg: Config{BaseURL: "https://api.prolific.com?x=1", Token: testToken}, wantErr: true},
		// A negative timeout.
		{name: "negative timeout", cfg: Config{Token: testToken, Timeout: -time.Second}, wantErr: true},
		// A negative body limit.
		{name: "negative limit", cfg: Config{Token: testToken, MaxBodyBytes: -1}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New error = %v, want error: %v", err, tt.wantErr)
			}
			assertNoToken(t, err)
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2015, 10, 21, 7, 28, 0, 0, time.UTC)
	tests := []struct {
		name  string
		value string
		want  time.Duration
	}{
		// Absent.
		{name: "empty", value: "", want: 0},
		// Whole seconds.
		{name: "seconds", value: "120", want: 2 * time.Minute},
		// Fractional seconds, leniently.
		{name: "fraction", value: "1.5", want: 1500 * time.Millisecond},
		// A negative delay means nothing.
		{name: "negative", value: "-3", want: 0},
		// A future HTTP-date.
		{name: "date", value: "Wed, 21 Oct 2015 07:28:10 GMT", want: 10 * time.Second},
		// A past HTTP-date.
		{name: "past date", value: "Wed, 21 Oct 2015 07:00:00 GMT", want: 0},
		// Garbage.
		{name: "garbage", value: "soon", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := parseRetryAfter(tt.value, now); got != tt.want {
				t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.value, got, tt.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want rules.FailureKind
	}{
		// Success.
		{name: "nil", err: nil, want: rules.FailureNone},
		// 403 is an auth failure.
		{name: "forbidden", err: &APIError{StatusCode: 403}, want: rules.FailureAuth},
		// 404 wrapped by a caller.
		{name: "wrapped 404", err: fmt.Errorf("polling: %w", &APIError{StatusCode: 404}), want: rules.FailureNotFound},
		// A malformed body is transient.
		{name: "malformed", err: fmt.Errorf("%w: x", ErrMalformed), want: rules.FailureTransient},
		// So is a 400.
		{name: "bad request", err: &APIError{StatusCode: 400}, want: rules.FailureTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify = %q, want %q", got, tt.want)
			}
		})
	}
}

// BenchmarkProgressAgainstFake measures a bare fetch loop over 2,000
// studies of three URLs each, at the parallelism of the benchmark.
func BenchmarkProgressAgainstFake(b *testing.B) {
	fake := prolifictest.NewServer(b, testToken)
	ids := make([]string, 2000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%024x", i)
		fake.SetProgress(ids[i], []rules.URLCounts{
			{ExternalURL: "https://a.example/" + ids[i], TotalAllocation: 100, Allocated: i % 100},
			{ExternalURL: "https://b.example/" + ids[i], TotalAllocation: 100, Allocated: 3, CapacityIncrements: 1},
			{ExternalURL: "https://c.example/" + ids[i], TotalAllocation: 50, Allocated: 50},
		})
	}
	c, err := New(Config{BaseURL: fake.URL(), Token: testToken})
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[int(next.Add(1))%len(ids)]
			if _, err := c.Progress(context.Background(), id); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
