package prolific

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

func TestWebhookSetupAgainstFake(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	c := newTestClient(t, fake.URL())
	ctx := t.Context()

	secret, err := c.CreateWebhookSecret(ctx, "ws-1")
	if err != nil {
		t.Fatalf("CreateWebhookSecret: %v", err)
	}
	secrets := fake.Secrets()
	if len(secrets) != 1 || secrets[0].Value != secret || secrets[0].WorkspaceID != "ws-1" {
		t.Fatalf("fake secrets = %+v, client got %q", secrets, secret)
	}

	want := Subscription{EventType: EventStudyStatusChange, TargetURL: "https://watch.example/webhooks/prolific", WorkspaceID: "ws-1"}
	created, err := c.CreateSubscription(ctx, want)
	if err != nil {
		t.Fatalf("CreateSubscription: %v", err)
	}
	// A second subscription makes the documented list reply hold two entries.
	other := want
	other.EventType = EventStudyProgressChange
	createdOther, err := c.CreateSubscription(ctx, other)
	if err != nil {
		t.Fatalf("CreateSubscription: %v", err)
	}
	subs := fake.Subscriptions()
	if len(subs) != 2 || created.ID != subs[0].ID || createdOther.ID != subs[1].ID {
		t.Fatalf("created %q and %q, fake holds %+v", created.ID, createdOther.ID, subs)
	}
	if created.EventType != want.EventType || created.TargetURL != want.TargetURL || created.WorkspaceID != "ws-1" || !created.IsEnabled {
		t.Errorf("created = %+v", created)
	}
	if created.HookSecret == "" || created.HookSecret != subs[0].HookSecret {
		t.Errorf("HookSecret not taken from the X-Hook-Secret header")
	}

	confirmed, err := c.ConfirmSubscription(ctx, created.ID, created.HookSecret)
	if err != nil {
		t.Fatalf("ConfirmSubscription: %v", err)
	}
	if confirmed.ID != created.ID || !confirmed.IsEnabled || !fake.Subscriptions()[0].Confirmed {
		t.Errorf("confirmed = %+v, fake = %+v", confirmed, fake.Subscriptions()[0])
	}

	_, err = c.ConfirmSubscription(ctx, createdOther.ID, "wrong")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Detail, "Invalid secret") {
		t.Errorf("confirming with a wrong secret: %v", err)
	}
}

func TestCreateSubscriptionErrors(t *testing.T) {
	t.Parallel()
	fake := prolifictest.NewServer(t, testToken)
	c := newTestClient(t, fake.URL())

	// The fake, like Prolific, wants a secret before a subscription.
	_, err := c.CreateSubscription(t.Context(), Subscription{EventType: EventStudyStatusChange, TargetURL: "https://x.example/", WorkspaceID: "ws"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Detail, "secret") {
		t.Fatalf("subscribing without a secret: %v", err)
	}
	// Missing fields are refused before any request.
	before := fake.TotalRequests()
	if _, err := c.CreateSubscription(t.Context(), Subscription{EventType: EventStudyStatusChange}); err == nil {
		t.Error("CreateSubscription without target and workspace succeeded")
	}
	if fake.TotalRequests() != before {
		t.Error("an invalid subscription reached the API")
	}
}

func TestCreateSubscriptionReplyShapes(t *testing.T) {
	t.Parallel()
	asked := Subscription{EventType: EventStudyStatusChange, TargetURL: "https://w.example/hook", WorkspaceID: "ws"}
	tests := []struct {
		name    string
		status  int
		body    string
		wantID  string
		wantErr bool
	}{
		// The subscription itself, with 200.
		{name: "object", status: 200, body: `{"id": "s1", "event_type": "study.status.change", "target_url": "https://w.example/hook", "is_enabled": true}`, wantID: "s1"},
		// An object using _id.
		{name: "underscore id", status: 201, body: `{"_id": "s2"}`, wantID: "s2"},
		// The documented list, picking the entry that matches the request.
		{name: "results", status: 201, body: `{"results": [{"id": "old", "event_type": "study.status.change", "target_url": "https://other.example/"}, {"id": "s3", "event_type": "study.status.change", "target_url": "https://w.example/hook"}]}`, wantID: "s3"},
		// A one-entry list whose fields were left out.
		{name: "single result", status: 201, body: `{"results": [{"id": "s4"}]}`, wantID: "s4"},
		// No id anywhere.
		{name: "no id", status: 201, body: `{"results": []}`, wantErr: true},
		// Not JSON.
		{name: "not json", status: 201, body: `created`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var sent map[string]any
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != "/api/v1/hooks/subscriptions/" {
					w.WriteHeader(http.StatusNotFound)
					return
				}
				_ = json.NewDecoder(r.Body).Decode(&sent)
				w.Header().Set("X-Hook-Secret", "hook-secret")
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			}))
			t.Cleanup(srv.Close)

			got, err := newTestClient(t, srv.URL).CreateSubscription(t.Context(), asked)
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("error = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateSubscription: %v", err)
			}
			if got.ID != tt.wantID || got.HookSecret != "hook-secret" || got.TargetURL != asked.TargetURL {
				t.Errorf("result = %+v, want id %q", got, tt.wantID)
			}
			if sent["is_enabled"] != true || sent["event_type"] != asked.EventType || sent["workspace_id"] != "ws" {
				t.Errorf("request body = %v", sent)
			}
		})
	}
}

func TestCreateWebhookSecretMalformed(t *testing.T) {
	t.Parallel()
	srv := rawServer(t, http.StatusCreated, nil, `{"id": "x", "value": ""}`)
	if _, err := newTestClient(t, srv.URL).CreateWebhookSecret(t.Context(), "ws"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("error = %v, want ErrMalformed", err)
	}
}
