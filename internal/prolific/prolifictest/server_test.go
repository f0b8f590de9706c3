package prolifictest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

const (
	token   = "fake-token"
	studyID = "60d9aadeb86739de712faee0"
)

// setup returns a started fake with one study and a client for it.
func setup(t *testing.T) (*prolifictest.Server, *prolific.Client) {
	t.Helper()
	fake := prolifictest.NewServer(t, token)
	fake.SetStudy(prolifictest.Study{ID: studyID, Name: "S", URLs: []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 5, Allocated: 1}}})
	c, err := prolific.New(prolific.Config{BaseURL: fake.URL(), Token: token, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return fake, c
}

// statusOf returns the HTTP status of a client error, 200 for nil and -1
// for an error without a reply.
func statusOf(err error) int {
	var apiErr *prolific.APIError
	switch {
	case err == nil:
		return 200
	case errors.As(err, &apiErr):
		return apiErr.StatusCode
	}
	return -1
}

func TestFaultQueue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(f *prolifictest.Server)
		want  []int // statuses of successive progress fetches
	}{
		// No faults: every poll succeeds.
		{name: "none", setup: func(*prolifictest.Server) {}, want: []int{200, 200}},
		// A fault used twice, then normal replies.
		{name: "times", setup: func(f *prolifictest.Server) { f.Fail(studyID, prolifictest.Fault{Status: 500}, 2) }, want: []int{500, 500, 200}},
		// Faults for one id are used in order.
		{name: "order", setup: func(f *prolifictest.Server) {
			f.Fail(studyID, prolifictest.Fault{Status: 503}, 1)
			f.Fail(studyID, prolifictest.Fault{Status: 429}, 1)
		}, want: []int{503, 429, 200}},
		// A sticky fault stays.
		{name: "sticky", setup: func(f *prolifictest.Server) { f.Fail(studyID, prolifictest.Fault{Status: 502}, -1) }, want: []int{502, 502, 502}},
		// Per-study faults come before global ones.
		{name: "global after study", setup: func(f *prolifictest.Server) {
			f.Fail("", prolifictest.Fault{Status: 500}, 1)
			f.Fail(studyID, prolifictest.Fault{Status: 403}, 1)
		}, want: []int{403, 500, 200}},
		// A fault for another study does not apply.
		{name: "other study", setup: func(f *prolifictest.Server) { f.Fail("ffffffffffffffffffffffff", prolifictest.Fault{Status: 500}, -1) }, want: []int{200}},
		// A study-endpoint fault leaves progress alone.
		{name: "other endpoint", setup: func(f *prolifictest.Server) {
			f.Fail(studyID, prolifictest.Fault{Endpoint: prolifictest.EndpointStudy, Status: 500}, -1)
		}, want: []int{200, 200}},
		// times == 0 queues nothing.
		{name: "zero times", setup: func(f *prolifictest.Server) { f.Fail(studyID, prolifictest.Fault{Status: 500}, 0) }, want: []int{200}},
		// ClearFaults removes a sticky fault.
		{name: "cleared", setup: func(f *prolifictest.Server) {
			f.Fail(studyID, prolifictest.Fault{Status: 500}, -1)
			f.ClearFaults(studyID)
		}, want: []int{200}},
		// A 200 with a custom body is a malformed reply, not an HTTP error.
		{name: "custom body", setup: func(f *prolifictest.Server) {
			f.Fail(studyID, prolifictest.Fault{Body: `{"progress": [{"external_url": "u", "total_allocation": -1, "allocated": 0}]}`}, 1)
		}, want: []int{-1, 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, c := setup(t)
			tt.setup(fake)
			for i, want := range tt.want {
				_, err := c.Progress(t.Context(), studyID)
				if got := statusOf(err); got != want {
					t.Fatalf("fetch %d: status %d (%v), want %d", i+1, got, err, want)
				}
			}
			if got := fake.Requests(studyID); got != len(tt.want) {
				t.Errorf("Requests = %d, want %d", got, len(tt.want))
			}
		})
	}
}

func TestStudyChangesBetweenPolls(t *testing.T) {
	t.Parallel()
	fake, c := setup(t)
	ctx := t.Context()

	fake.SetProgress(studyID, []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 5, Allocated: 4}})
	fake.SetStatus(studyID, prolific.StatusPaused)
	if !fake.UpdateStudy(studyID, func(s *prolifictest.Study) { s.URLs[0].CapacityIncrements++ }) {
		t.Fatal("UpdateStudy found no study")
	}
	p, err := c.Progress(ctx, studyID)
	if err != nil || p.URLs[0].Allocated != 4 || p.URLs[0].CapacityIncrements != 1 {
		t.Fatalf("Progress = %+v, %v", p, err)
	}
	st, err := c.Study(ctx, studyID)
	if err != nil || st.Status != prolific.StatusPaused || st.Name != "S" {
		t.Fatalf("Study = %+v, %v", st, err)
	}

	fake.SetNotTaskflow(studyID)
	if _, err := c.Progress(ctx, studyID); !errors.Is(err, prolific.ErrNotFound) {
		t.Fatalf("not Taskflow: %v", err)
	}
	if _, err := c.Study(ctx, studyID); err != nil {
		t.Fatalf("the study itself should remain: %v", err)
	}

	fake.RemoveStudy(studyID)
	if _, err := c.Study(ctx, studyID); !errors.Is(err, prolific.ErrNotFound) {
		t.Fatalf("removed study: %v", err)
	}
	if fake.UpdateStudy(studyID, func(*prolifictest.Study) { t.Error("fn called for a removed study") }) {
		t.Error("UpdateStudy reported a removed study")
	}
}

func TestServedShape(t *testing.T) {
	t.Parallel()
	fake, _ := setup(t)
	req, _ := http.NewRequest(http.MethodGet, fake.URL()+"/api/v1/studies/"+studyID+"/access-details-progress/", nil)
	req.Header.Set("Authorization", "Token "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		ID       string           `json:"id"`
		Progress []map[string]any `json:"progress"`
		Links    struct {
			Self struct {
				Href string `json:"href"`
			} `json:"self"`
		} `json:"_links"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Content-Type") != "application/json" || len(body.ID) != 36 || len(body.Progress) != 1 || body.Links.Self.Href == "" {
		t.Errorf("reply %s %+v", resp.Header.Get("Content-Type"), body)
	}
	if len(body.Progress[0]) != 4 {
		t.Errorf("progress entry has fields %v, want the four documented ones", body.Progress[0])
	}
}

func TestAuthAndTokenChange(t *testing.T) {
	t.Parallel()
	fake, c := setup(t)
	if _, err := c.Progress(t.Context(), studyID); err != nil {
		t.Fatalf("Progress: %v", err)
	}
	fake.SetToken("rotated")
	_, err := c.Progress(t.Context(), studyID)
	var apiErr *prolific.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Title != "Unauthorized" {
		t.Fatalf("after rotation: %v", err)
	}
}

func TestHangIsReleasedByClose(t *testing.T) {
	t.Parallel()
	fake := prolifictest.New(token)
	fake.Start()
	fake.Fail("", prolifictest.Fault{Endpoint: prolifictest.EndpointAll, Hang: true}, -1)
	hanging := make(chan struct{})
	fake.OnRequest(func(r prolifictest.Request) {
		if r.Status == 0 {
			close(hanging)
		}
	})
	done := make(chan error, 1)
	go func() {
		resp, err := http.Get(fake.URL() + "/api/v1/studies/" + studyID + "/")
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-hanging
	fake.Close()
	fake.Close()
	<-done
}

func TestWaitAndObserve(t *testing.T) {
	t.Parallel()
	fake, c := setup(t)
	var mu sync.Mutex
	var seen []prolifictest.Request
	fake.OnRequest(func(r prolifictest.Request) {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
	})

	const polls = 20
	go func() {
		for range polls {
			_, _ = c.Progress(context.Background(), studyID)
		}
	}()
	if err := fake.Wait(t.Context(), func() bool { return fake.Requests(studyID) >= polls }); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := fake.Wait(ctx, func() bool { return false }); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait on a cancelled context = %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(seen) < polls || seen[0].Endpoint != prolifictest.EndpointProgress || seen[0].StudyID != studyID || seen[0].Status != 200 {
		t.Errorf("observed %d requests, first %+v", len(seen), seen[0])
	}
	fake.ResetRequests()
	if fake.Requests(studyID) != 0 || fake.TotalRequests() != 0 {
		t.Error("ResetRequests left counts")
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	fake, c := setup(t)
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = fmt.Sprintf("%024x", i)
		fake.SetProgress(ids[i], []rules.URLCounts{{ExternalURL: "https://a.example", TotalAllocation: 9}})
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i, id := range ids {
				if (i+w)%7 == 0 {
					fake.UpdateStudy(id, func(s *prolifictest.Study) { s.URLs[0].Allocated++ })
					fake.Fail(id, prolifictest.Fault{Status: 500}, 1)
				}
				_, err := c.Progress(context.Background(), id)
				if err != nil && !errors.Is(err, prolific.ErrServer) {
					t.Errorf("Progress(%s): %v", id, err)
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for _, id := range ids {
		total += fake.Requests(id)
	}
	if total != 8*len(ids) {
		t.Errorf("counted %d progress requests, want %d", total, 8*len(ids))
	}
}

func TestEmitDeliversSignedWebhooks(t *testing.T) {
	t.Parallel()
	fake, c := setup(t)
	now := time.Unix(1_700_000_000, 0)
	fake.SetClock(func() time.Time { return now })

	type delivery struct {
		eventID string
		err     error
		event   prolific.WebhookEvent
	}
	received := make(chan delivery, 4)
	var secret []byte
	var secretMu sync.Mutex
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		secretMu.Lock()
		key := secret
		secretMu.Unlock()
		d := delivery{eventID: r.Header.Get(prolific.HeaderWebhookEventID)}
		d.err = prolific.VerifyWebhook(key, r.Header.Get(prolific.HeaderWebhookTimestamp), r.Header.Get(prolific.HeaderWebhookSignature), body, now, time.Minute)
		if d.err == nil {
			d.event, d.err = prolific.ParseWebhookEvent(body)
		}
		received <- d
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(receiver.Close)

	ctx := t.Context()
	value, err := c.CreateWebhookSecret(ctx, "ws")
	if err != nil {
		t.Fatal(err)
	}
	secretMu.Lock()
	secret = []byte(value)
	secretMu.Unlock()
	sub, err := c.CreateSubscription(ctx, prolific.Subscription{EventType: prolific.EventStudyStatusChange, TargetURL: receiver.URL, WorkspaceID: "ws"})
	if err != nil {
		t.Fatal(err)
	}
	if got := fake.Emit(ctx, prolific.EventStudyStatusChange, studyID, "PAUSED"); len(got) != 0 {
		t.Fatalf("an unconfirmed subscription received %d deliveries", len(got))
	}
	if _, err := c.ConfirmSubscription(ctx, sub.ID, sub.HookSecret); err != nil {
		t.Fatal(err)
	}
	if got := fake.Emit(ctx, prolific.EventStudyProgressChange, studyID, ""); len(got) != 0 {
		t.Fatalf("another event type received %d deliveries", len(got))
	}

	deliveries := fake.Emit(ctx, prolific.EventStudyStatusChange, studyID, "PAUSED")
	if len(deliveries) != 1 || deliveries[0].Err != nil || deliveries[0].StatusCode != http.StatusNoContent {
		t.Fatalf("deliveries = %+v", deliveries)
	}
	d := <-received
	want := prolific.WebhookEvent{ResourceID: studyID, EventType: prolific.EventStudyStatusChange, Status: "PAUSED"}
	if d.err != nil || d.event != want || d.eventID != deliveries[0].EventID || d.eventID == "" {
		t.Errorf("received %+v, want %+v with event id %q", d, want, deliveries[0].EventID)
	}
}
