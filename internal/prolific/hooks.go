package prolific

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Webhook event types the worker subscribes to.
const (
	// EventStudyStatusChange fires when a study's status changes.
	EventStudyStatusChange = "study.status.change"
	// EventStudyProgressChange fires when a study's progress changes.
	EventStudyProgressChange = "study.progress.change"
)

// Subscription asks Prolific to POST one event type to a target URL.
type Subscription struct {
	EventType   string
	TargetURL   string
	WorkspaceID string
}

// SubscriptionResult is a subscription as Prolific stored it.
type SubscriptionResult struct {
	ID          string
	EventType   string
	TargetURL   string
	WorkspaceID string
	IsEnabled   bool
	// HookSecret is the X-Hook-Secret header of the create reply, which
	// ConfirmSubscription needs. It is a credential: never log it.
	HookSecret string
}

// wireSecret is the reply of POST /api/v1/hooks/secrets/.
type wireSecret struct {
	ID          string `json:"id"`
	Value       string `json:"value"`
	WorkspaceID string `json:"workspace_id"`
}

// wireSubscription is one subscription as the hooks API writes it.
type wireSubscription struct {
	ID          string `json:"id"`
	AltID       string `json:"_id"`
	EventType   string `json:"event_type"`
	TargetURL   string `json:"target_url"`
	WorkspaceID string `json:"workspace_id"`
	IsEnabled   *bool  `json:"is_enabled"`
}

// wireSubscriptionReply accepts both documented create replies: the
// subscription itself, or {"results": [...]} listing the workspace's
// subscriptions.
type wireSubscriptionReply struct {
	wireSubscription
	Results []wireSubscription `json:"results"`
}

// CreateWebhookSecret creates (or replaces: Prolific keeps one per
// workspace) the secret that signs webhook deliveries, and returns its
// value. The value is a credential: never log it.
func (c *Client) CreateWebhookSecret(ctx context.Context, workspaceID string) (string, error) {
	const path = "/api/v1/hooks/secrets/"
	payload := map[string]string{}
	if workspaceID = strings.TrimSpace(workspaceID); workspaceID != "" {
		payload["workspace_id"] = workspaceID
	}
	rep, err := c.do(ctx, "POST", path, payload)
	if err != nil {
		return "", err
	}
	var secret wireSecret
	if err := unmarshalObject(rep.body, &secret); err != nil {
		return "", c.malformed("POST "+path, "%v", err)
	}
	if secret.Value == "" {
		return "", c.malformed("POST "+path, "reply has no secret value")
	}
	return secret.Value, nil
}

// CreateSubscription subscribes a target URL to an event type, enabled.
// Prolific then expects ConfirmSubscription with the returned HookSecret
// before it delivers events.
func (c *Client) CreateSubscription(ctx context.Context, sub Subscription) (SubscriptionResult, error) {
	const path = "/api/v1/hooks/subscriptions/"
	if sub.EventType == "" || sub.TargetURL == "" || sub.WorkspaceID == "" {
		return SubscriptionResult{}, errors.New("prolific: a subscription needs an event type, a target URL and a workspace id")
	}
	payload := map[string]any{
		"event_type":   sub.EventType,
		"target_url":   sub.TargetURL,
		"workspace_id": sub.WorkspaceID,
		"is_enabled":   true,
	}
	rep, err := c.do(ctx, "POST", path, payload)
	if err != nil {
		return SubscriptionResult{}, err
	}
	var wire wireSubscriptionReply
	if err := unmarshalObject(rep.body, &wire); err != nil {
		return SubscriptionResult{}, c.malformed("POST "+path, "%v", err)
	}
	found, ok := pickSubscription(wire, sub)
	if !ok {
		return SubscriptionResult{}, c.malformed("POST "+path, "reply has no subscription id")
	}
	result := found.result(sub)
	result.HookSecret = rep.header.Get("X-Hook-Secret")
	return result, nil
}

// ConfirmSubscription confirms a new subscription with the X-Hook-Secret
// its creation returned, which is how Prolific checks the intent to
// subscribe.
func (c *Client) ConfirmSubscription(ctx context.Context, subscriptionID, hookSecret string) (SubscriptionResult, error) {
	if subscriptionID == "" || hookSecret == "" {
		return SubscriptionResult{}, errors.New("prolific: confirming a subscription needs its id and hook secret")
	}
	path := "/api/v1/hooks/subscriptions/" + url.PathEscape(subscriptionID) + "/"
	rep, err := c.do(ctx, "POST", path, map[string]string{"secret": hookSecret})
	if err != nil {
		return SubscriptionResult{}, err
	}
	var wire wireSubscription
	if err := unmarshalObject(rep.body, &wire); err != nil {
		return SubscriptionResult{}, c.malformed("POST "+path, "%v", err)
	}
	result := wire.result(Subscription{})
	if result.ID == "" {
		result.ID = subscriptionID
	}
	return result, nil
}

// Subscribe creates a subscription and confirms it, the two steps Prolific
// needs before it delivers events to the target URL.
func (c *Client) Subscribe(ctx context.Context, sub Subscription) (SubscriptionResult, error) {
	created, err := c.CreateSubscription(ctx, sub)
	if err != nil {
		return SubscriptionResult{}, fmt.Errorf("subscribing to %s: %w", sub.EventType, err)
	}
	if _, err := c.ConfirmSubscription(ctx, created.ID, created.HookSecret); err != nil {
		return SubscriptionResult{}, fmt.Errorf("confirming subscription %s to %s: %w", created.ID, sub.EventType, err)
	}
	return created, nil
}

// pickSubscription finds the created subscription in either reply shape.
func pickSubscription(reply wireSubscriptionReply, asked Subscription) (wireSubscription, bool) {
	if reply.id() != "" {
		return reply.wireSubscription, true
	}
	for i := len(reply.Results) - 1; i >= 0; i-- {
		r := reply.Results[i]
		if r.id() != "" && r.EventType == asked.EventType && r.TargetURL == asked.TargetURL {
			return r, true
		}
	}
	if len(reply.Results) == 1 && reply.Results[0].id() != "" {
		return reply.Results[0], true
	}
	return wireSubscription{}, false
}

// id returns whichever id field the reply used.
func (w wireSubscription) id() string {
	if w.ID != "" {
		return w.ID
	}
	return w.AltID
}

// result converts the wire form, filling fields the reply left out from
// what was asked for.
func (w wireSubscription) result(asked Subscription) SubscriptionResult {
	enabled := true
	if w.IsEnabled != nil {
		enabled = *w.IsEnabled
	}
	return SubscriptionResult{
		ID:          w.id(),
		EventType:   cmp.Or(w.EventType, asked.EventType),
		TargetURL:   cmp.Or(w.TargetURL, asked.TargetURL),
		WorkspaceID: cmp.Or(w.WorkspaceID, asked.WorkspaceID),
		IsEnabled:   enabled,
	}
}
