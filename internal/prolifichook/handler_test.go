package prolifichook_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/prolifichook"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

const (
	studyID       = "60d9aadeb86739de712faee0"
	unwatchedID   = "60aca280709ee40ec37d4885"
	prolificToken = "test-prolific-token"
)

// t0 is the handler's clock; watches are created an hour later, so their
// first poll is visibly moved by a webhook.
var (
	t0        = time.Date(2026, 11, 3, 14, 0, 0, 0, time.UTC)
	watchedAt = t0.Add(time.Hour)
)

// fakePoller records Trigger calls.
type fakePoller struct{ triggers atomic.Int64 }

func (p *fakePoller) Trigger() { p.triggers.Add(1) }

// testBundle is the handler on real HTTP and Postgres, with the fake
// Prolific API as the sender of signed deliveries.
type testBundle struct {
	store  *store.Store
	dsn    string
	fake   *prolifictest.Server
	poller *fakePoller
	url    string
	secret []byte
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	dsn := storetest.NewDatabaseURL(t)
	s, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	b := &testBundle{store: s, dsn: dsn, poller: &fakePoller{}, secret: []byte("webhook-secret-value")}
	b.fake = prolifictest.NewServer(t, prolificToken)
	b.fake.SetClock(func() time.Time { return t0 })
	b.url = b.serve(t, s)
	_, err = s.AddWatch(context.Background(), store.StudyInfo{ID: studyID, Name: "Hooked", Status: "ACTIVE"},
		store.Watch{ChannelID: "C1"}, watchedAt)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serve starts a handler on st and returns its URL.
func (b *testBundle) serve(t *testing.T, st prolifichook.Store) string {
	t.Helper()
	h, err := prolifichook.New(prolifichook.Config{Secret: b.secret, Store: st, Poller: b.poller, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/prolific", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/webhooks/prolific"
}

// deliver sends a signed delivery as Prolific does and returns the status.
func (b *testBundle) deliver(t *testing.T, eventID, body string) int {
	t.Helper()
	return b.deliverTo(t, b.url, eventID, body)
}

func (b *testBundle) deliverTo(t *testing.T, target, eventID, body string) int {
	t.Helper()
	status, err := b.fake.SendWebhook(context.Background(), target, b.secret, eventID, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return status
}

func event(eventType, id, status string) string {
	if status == "" {
		return fmt.Sprintf(`{"event_type": %q, "resource_id": %q}`, eventType, id)
	}
	return fmt.Sprintf(`{"event_type": %q, "resource_id": %q, "status": %q}`, eventType, id, status)
}

func (b *testBundle) study(t *testing.T) store.Study {
	t.Helper()
	st, err := b.store.GetStudy(context.Background(), studyID)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// untouched fails when the watched study was made due or changed.
func (b *testBundle) untouched(t *testing.T) {
	t.Helper()
	st := b.study(t)
	if !st.NextPollAt.Equal(watchedAt) || st.Status != "ACTIVE" {
		t.Fatalf("study changed: next poll %v, status %q", st.NextPollAt, st.Status)
	}
	if n := b.poller.triggers.Load(); n != 0 {
		t.Fatalf("poller triggered %d times", n)
	}
}

func TestProgressChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if status := b.deliver(t, "evt-1", event(prolific.EventStudyProgressChange, studyID, "")); status != http.StatusOK {
		t.Fatalf("HTTP %d", status)
	}
	st := b.study(t)
	if !st.NextPollAt.Equal(t0) || st.Status != "ACTIVE" {
		t.Fatalf("after progress change: next poll %v status %q; want %v ACTIVE", st.NextPollAt, st.Status, t0)
	}
	if n := b.poller.triggers.Load(); n != 1 {
		t.Fatalf("poller triggered %d times; want 1", n)
	}
}

func TestStatusChangeAndDuplicates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if status := b.deliver(t, "evt-1", event(prolific.EventStudyStatusChange, studyID, "AWAITING REVIEW")); status != http.StatusOK {
		t.Fatalf("HTTP %d", status)
	}
	// The study is due at once; its status is left for that poll to read
	// from Prolific (store tests check it is marked stale), not taken from
	// the webhook.
	st := b.study(t)
	if st.Status != "ACTIVE" || !st.NextPollAt.Equal(t0) {
		t.Fatalf("after status change: status %q next poll %v; want ACTIVE kept and due at %v", st.Status, st.NextPollAt, t0)
	}
	// A retry of the same event, even with another body, is answered and ignored.
	if status := b.deliver(t, "evt-1", event(prolific.EventStudyStatusChange, studyID, "COMPLETED")); status != http.StatusOK {
		t.Fatalf("duplicate: HTTP %d", status)
	}
	if st := b.study(t); st.Status != "ACTIVE" {
		t.Fatalf("duplicate changed the status to %q", st.Status)
	}
	if n := b.poller.triggers.Load(); n != 1 {
		t.Fatalf("poller triggered %d times; want 1 (duplicates do nothing)", n)
	}
	// Without an event id there is no deduplication: both deliveries act.
	for range 2 {
		if status := b.deliver(t, "", event(prolific.EventStudyProgressChange, studyID, "")); status != http.StatusOK {
			t.Fatalf("no event id: HTTP %d", status)
		}
	}
	if n := b.poller.triggers.Load(); n != 3 {
		t.Fatalf("poller triggered %d times; want 3", n)
	}
}

func TestIgnoredAndRefusedDeliveries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		send   func(t *testing.T, b *testBundle) int
		status int
	}{
		// An unwatched study is acknowledged and ignored.
		{"unwatched", func(t *testing.T, b *testBundle) int {
			return b.deliver(t, "evt-u", event(prolific.EventStudyProgressChange, unwatchedID, ""))
		}, http.StatusOK},
		// Unknown event types are acknowledged and ignored.
		{"unknown type", func(t *testing.T, b *testBundle) int {
			return b.deliver(t, "evt-x", event("submission.status.change", studyID, "APPROVED"))
		}, http.StatusOK},
		// A body that is not JSON is a bad request.
		{"malformed JSON", func(t *testing.T, b *testBundle) int {
			return b.deliver(t, "evt-m", `{"event_type": "study.progress.change", "resource_id": `)
		}, http.StatusBadRequest},
		// A known event about something that is not a study id.
		{"bad resource id", func(t *testing.T, b *testBundle) int {
			return b.deliver(t, "evt-r", event(prolific.EventStudyProgressChange, "../../admin", ""))
		}, http.StatusBadRequest},
		// Signed with another secret.
		{"bad signature", func(t *testing.T, b *testBundle) int {
			status, err := b.fake.SendWebhook(context.Background(), b.url, []byte("another secret"), "evt-s",
				[]byte(event(prolific.EventStudyProgressChange, studyID, "")))
			if err != nil {
				t.Fatal(err)
			}
			return status
		}, http.StatusUnauthorized},
		// Correctly signed six minutes ago: a replay.
		{"stale", func(t *testing.T, b *testBundle) int {
			b.fake.SetClock(func() time.Time { return t0.Add(-6 * time.Minute) })
			return b.deliver(t, "evt-t", event(prolific.EventStudyProgressChange, studyID, ""))
		}, http.StatusUnauthorized},
		// No signature headers at all.
		{"unsigned", func(t *testing.T, b *testBundle) int {
			return rawPost(t, b.url, http.Header{}, event(prolific.EventStudyProgressChange, studyID, ""))
		}, http.StatusUnauthorized},
		// A body over the limit.
		{"oversize", func(t *testing.T, b *testBundle) int {
			return b.deliver(t, "evt-o", `{"pad": "`+strings.Repeat("x", 70<<10)+`"}`)
		}, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			if status := tt.send(t, b); status != tt.status {
				t.Fatalf("HTTP %d; want %d", status, tt.status)
			}
			b.untouched(t)
			if _, err := b.store.GetStudy(context.Background(), unwatchedID); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("a webhook created an unwatched study: %v", err)
			}
		})
	}
}

func rawPost(t *testing.T, target string, header http.Header, body string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestStoreDownAsksForRetry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	broken, err := store.Open(context.Background(), b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	broken.Close()
	brokenURL := b.serve(t, broken)
	body := event(prolific.EventStudyStatusChange, studyID, "PAUSED")

	if status := b.deliverTo(t, brokenURL, "evt-1", body); status != http.StatusServiceUnavailable {
		t.Fatalf("store down: HTTP %d; want 503", status)
	}
	b.untouched(t)
	// Prolific retries the same event once the database is back; it must act.
	if status := b.deliver(t, "evt-1", body); status != http.StatusOK {
		t.Fatalf("retry: HTTP %d", status)
	}
	if st := b.study(t); !st.NextPollAt.Equal(t0) {
		t.Fatalf("retry was swallowed: next poll %v", st.NextPollAt)
	}
	if n := b.poller.triggers.Load(); n != 1 {
		t.Fatalf("poller triggered %d times; want 1", n)
	}
}

func TestSubscriptionDeliveryEndToEnd(t *testing.T) {
	t.Parallel()
	s := storetest.New(t)
	fake := prolifictest.NewServer(t, prolificToken)
	client, err := prolific.New(prolific.Config{BaseURL: fake.URL(), Token: prolificToken})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	secret, err := client.CreateWebhookSecret(ctx, "ws1")
	if err != nil {
		t.Fatal(err)
	}
	poller := &fakePoller{}
	h, err := prolifichook.New(prolifichook.Config{Secret: []byte(secret), Store: s, Poller: poller})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	sub, err := client.CreateSubscription(ctx, prolific.Subscription{
		EventType: prolific.EventStudyStatusChange, TargetURL: srv.URL + "/webhooks/prolific", WorkspaceID: "ws1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.ConfirmSubscription(ctx, sub.ID, sub.HookSecret); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddWatch(ctx, store.StudyInfo{ID: studyID}, store.Watch{ChannelID: "C1"}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	deliveries := fake.Emit(ctx, prolific.EventStudyStatusChange, studyID, "COMPLETED")
	if len(deliveries) != 1 || deliveries[0].Err != nil || deliveries[0].StatusCode != http.StatusOK {
		t.Fatalf("deliveries %+v; want one answered 200", deliveries)
	}
	st, err := s.GetStudy(ctx, studyID)
	if err != nil || st.NextPollAt.After(time.Now()) || poller.triggers.Load() != 1 {
		t.Fatalf("after delivery: %+v, %v, %d triggers; want the study due and the poller triggered", st, err, poller.triggers.Load())
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  prolifichook.Config
	}{
		{"no secret", prolifichook.Config{Store: &fuzzStore{}}},                                  // unsigned webhooks are never accepted
		{"no store", prolifichook.Config{Secret: []byte("s")}},                                   // the store is required
		{"negative", prolifichook.Config{Secret: []byte("s"), Store: &fuzzStore{}, MaxSkew: -1}}, // limits are checked
	}
	for _, tt := range tests {
		if _, err := prolifichook.New(tt.cfg); err == nil {
			t.Errorf("%s: New accepted an invalid config", tt.name)
		}
	}
}

// fuzzStore is an in-memory Store that fails on demand.
type fuzzStore struct {
	fail bool
	seen map[string]bool
}

func (s *fuzzStore) PollSoon(_ context.Context, id, _ string, _ time.Time) (bool, error) {
	if s.fail {
		return false, errors.New("database is down")
	}
	return id == studyID, nil
}

func (s *fuzzStore) PollSoonOnce(ctx context.Context, eventID, id, status string, now time.Time) (store.WebhookOutcome, error) {
	if s.fail {
		return store.WebhookOutcome{}, errors.New("database is down")
	}
	if s.seen[eventID] {
		return store.WebhookOutcome{Duplicate: true}, nil
	}
	s.seen[eventID] = true
	watched, err := s.PollSoon(ctx, id, status, now)
	return store.WebhookOutcome{Watched: watched}, err
}

// FuzzWebhookHandler sends arbitrary bodies and headers through the
// handler, signed correctly or not. It must never panic, never answer 5xx
// unless the store failed, and only act on verified deliveries.
func FuzzWebhookHandler(f *testing.F) {
	secret := []byte("fuzz-secret")
	f.Add([]byte(event(prolific.EventStudyProgressChange, studyID, "")), "evt-1", uint8(0), int64(0), false)
	f.Add([]byte(event(prolific.EventStudyStatusChange, studyID, "PAUSED")), "", uint8(0), int64(30), false)
	f.Add([]byte(event(prolific.EventStudyStatusChange, studyID, "PAUSED")), "evt-2", uint8(0), int64(0), true)
	f.Add([]byte(event(prolific.EventStudyProgressChange, unwatchedID, "")), "evt-3", uint8(0), int64(-299), false)
	f.Add([]byte(event("other", studyID, "")), "evt-4", uint8(0), int64(0), false)
	f.Add([]byte(`{"resource_id": null}`), "evt-5", uint8(0), int64(0), false)
	f.Add([]byte(`[1, 2, 3]`), "evt-6", uint8(0), int64(0), false)
	f.Add([]byte(`{"event_type": "study.progress.change", "resource_id": "`+studyID+`"`), "x", uint8(0), int64(0), false)
	f.Add([]byte(event(prolific.EventStudyProgressChange, studyID, "")), "evt-7", uint8(1), int64(0), false)
	f.Add([]byte(event(prolific.EventStudyProgressChange, studyID, "")), "evt-8", uint8(2), int64(0), false)
	f.Add([]byte(event(prolific.EventStudyProgressChange, studyID, "")), "evt-9", uint8(0), int64(301), false)
	f.Add([]byte{}, "", uint8(0), int64(-1<<62), false)
	f.Add([]byte(event(prolific.EventStudyProgressChange, studyID, "")), "evt-10", uint8(3), int64(0), false)

	f.Fuzz(func(t *testing.T, body []byte, eventID string, signMode uint8, skewSeconds int64, storeFails bool) {
		st := &fuzzStore{fail: storeFails, seen: map[string]bool{}}
		poller := &fakePoller{}
		h, err := prolifichook.New(prolifichook.Config{Secret: secret, Store: st, Poller: poller, Now: func() time.Time { return t0 }})
		if err != nil {
			t.Fatal(err)
		}
		// Keep the timestamp a plausible unix time in seconds, so that
		// "fresh" is exactly |skew| <= 300.
		skewSeconds %= 1_000_000_000
		timestamp := strconv.FormatInt(t0.Unix()+skewSeconds, 10)
		req := httptest.NewRequest(http.MethodPost, "/webhooks/prolific", strings.NewReader(string(body)))
		switch signMode % 4 {
		case 0: // signed as Prolific signs
			req.Header.Set(prolific.HeaderWebhookTimestamp, timestamp)
			req.Header.Set(prolific.HeaderWebhookSignature, prolific.SignWebhook(secret, timestamp, body))
		case 1: // signed with another secret
			req.Header.Set(prolific.HeaderWebhookTimestamp, timestamp)
			req.Header.Set(prolific.HeaderWebhookSignature, prolific.SignWebhook([]byte("wrong"), timestamp, body))
		case 3: // a correct signature over a timestamp that is not a time
			req.Header.Set(prolific.HeaderWebhookTimestamp, "not-a-time")
			req.Header.Set(prolific.HeaderWebhookSignature, prolific.SignWebhook(secret, "not-a-time", body))
		}
		if eventID != "" && !strings.ContainsAny(eventID, "\r\n\x00") {
			req.Header.Set(prolific.HeaderWebhookEventID, eventID)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		code := rec.Code
		switch code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestEntityTooLarge:
		case http.StatusServiceUnavailable:
			if !storeFails {
				t.Fatalf("503 although the store works")
			}
		default:
			t.Fatalf("unexpected HTTP %d", code)
		}
		verified := signMode%4 == 0 && skewSeconds >= -300 && skewSeconds <= 300 && len(body) <= int(prolifichook.DefaultMaxBodyBytes)
		if !verified && code != http.StatusUnauthorized && code != http.StatusRequestEntityTooLarge {
			t.Fatalf("unverified delivery answered %d", code)
		}
		if verified && code == http.StatusUnauthorized {
			t.Fatalf("verified delivery refused")
		}
		if n := poller.triggers.Load(); n != 0 && (code != http.StatusOK || storeFails) {
			t.Fatalf("poller triggered %d times for a delivery answered %d", n, code)
		}
	})
}

func TestHandlerRefusesImplausibleInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		eventID string
		body    string
	}{
		// An event id too long to store cannot be deduplicated: 400 ends Prolific's retries.
		{"long event id", strings.Repeat("e", 300), `{"event_type":"study.progress.change","resource_id":"0123456789abcdef01234567"}`},
		// A status that is no Prolific status is not stored.
		{"huge status", "evt-1", `{"event_type":"study.status.change","resource_id":"0123456789abcdef01234567","status":"` + strings.Repeat("X", 5000) + `"}`},
		// Lower-case or punctuated text is not a status either.
		{"odd status", "evt-2", `{"event_type":"study.status.change","resource_id":"0123456789abcdef01234567","status":"<b>paused</b>"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, err := prolifichook.New(prolifichook.Config{Secret: []byte("s"), Store: refusingStore{t}})
			if err != nil {
				t.Fatal(err)
			}
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			req := httptest.NewRequest(http.MethodPost, "/webhooks/prolific", strings.NewReader(tt.body))
			req.Header.Set(prolific.HeaderWebhookTimestamp, ts)
			req.Header.Set(prolific.HeaderWebhookSignature, prolific.SignWebhook([]byte("s"), ts, []byte(tt.body)))
			req.Header.Set(prolific.HeaderWebhookEventID, tt.eventID)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusBadRequest {
				t.Errorf("status = %d, want 400", rec.Code)
			}
		})
	}
}

// refusingStore fails the test if the handler reaches the database.
type refusingStore struct{ t *testing.T }

func (s refusingStore) PollSoon(context.Context, string, string, time.Time) (bool, error) {
	s.t.Error("PollSoon called for a refused delivery")
	return false, nil
}

func (s refusingStore) PollSoonOnce(context.Context, string, string, string, time.Time) (store.WebhookOutcome, error) {
	s.t.Error("PollSoonOnce called for a refused delivery")
	return store.WebhookOutcome{}, nil
}
