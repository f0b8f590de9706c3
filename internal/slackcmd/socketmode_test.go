package slackcmd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// emptyStore is a Store without any watch.
type emptyStore struct{ Store }

func (emptyStore) Studies(context.Context, string) ([]store.Study, error) { return nil, nil }

// noProlific fails every call; the commands used here never reach it.
type noProlific struct{}

func (noProlific) Study(context.Context, string) (prolific.Study, error) {
	return prolific.Study{}, prolific.ErrTransport
}

func (noProlific) Progress(context.Context, string) (prolific.Progress, error) {
	return prolific.Progress{}, prolific.ErrTransport
}

// fakeSocketSlack serves apps.connections.open and the Socket Mode
// WebSocket. Its first connections.open answers invalid_auth, which makes
// the socketmode client give up and RunSocketMode retry.
type fakeSocketSlack struct {
	server *httptest.Server
	opens  atomic.Int64
	conns  chan *websocket.Conn
}

func newFakeSocketSlack(t *testing.T) *fakeSocketSlack {
	t.Helper()
	f := &fakeSocketSlack{conns: make(chan *websocket.Conn, 4)}
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/apps.connections.open", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer xapp-1-test" {
			fmt.Fprint(w, `{"ok":false,"error":"not_authed"}`)
			return
		}
		if f.opens.Add(1) == 1 {
			fmt.Fprint(w, `{"ok":false,"error":"invalid_auth"}`)
			return
		}
		fmt.Fprintf(w, `{"ok":true,"url":"ws://%s/link"}`, r.Host)
	})
	mux.HandleFunc("GET /link", func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		f.conns <- conn
	})
	f.server = httptest.NewServer(mux)
	t.Cleanup(f.server.Close)
	return f
}

// next waits for the client's next WebSocket connection and greets it.
func (f *fakeSocketSlack) next(t *testing.T) *websocket.Conn {
	t.Helper()
	select {
	case conn := <-f.conns:
		if err := conn.WriteJSON(map[string]any{"type": "hello", "num_connections": 1}); err != nil {
			t.Fatal(err)
		}
		return conn
	case <-time.After(30 * time.Second):
		t.Fatal("the client did not connect")
		return nil
	}
}

// ackPayload is the acknowledgement's payload, raw and decoded.
type ackPayload struct {
	raw          json.RawMessage
	ResponseType string `json:"response_type"`
	Text         string `json:"text"`
}

// command sends a slash command envelope and returns the acknowledgement.
func command(t *testing.T, conn *websocket.Conn, envelope, text string) ackPayload {
	t.Helper()
	err := conn.WriteJSON(map[string]any{
		"envelope_id":              envelope,
		"type":                     "slash_commands",
		"accepts_response_payload": true,
		"payload": map[string]string{
			"team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": "/taskflow",
			"text": text, "response_url": "https://hooks.slack.com/commands/T1/1/secret",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var ack struct {
		EnvelopeID string          `json:"envelope_id"`
		Payload    json.RawMessage `json:"payload"`
	}
	if err := conn.ReadJSON(&ack); err != nil {
		t.Fatalf("reading the acknowledgement: %v", err)
	}
	if ack.EnvelopeID != envelope {
		t.Fatalf("acknowledged envelope %q; want %q", ack.EnvelopeID, envelope)
	}
	reply := ackPayload{raw: ack.Payload}
	if err := json.Unmarshal(ack.Payload, &reply); err != nil {
		t.Fatalf("acknowledgement payload %s: %v", ack.Payload, err)
	}
	return reply
}

func TestSocketModeAnswersAndReconnects(t *testing.T) {
	t.Parallel()
	slackAPI := newFakeSocketSlack(t)
	h, err := New(Config{Prolific: noProlific{}, Store: emptyStore{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runSocketMode(ctx, socketConfig{
			appToken: "xapp-1-test", botToken: "xoxb-test", apiURL: slackAPI.server.URL + "/api",
			handler: h, minBackoff: time.Millisecond, maxBackoff: 10 * time.Millisecond,
		})
	}()

	// The first connections.open was refused; the runner retried on its own.
	conn := slackAPI.next(t)
	reply := command(t, conn, "env-1", "list")
	want, err := json.Marshal(h.Execute(context.Background(), slashCommand("list")))
	if err != nil {
		t.Fatal(err)
	}
	if reply.ResponseType != "ephemeral" || string(reply.raw) != string(want) {
		t.Fatalf("socket mode reply %s differs from the HTTP path's %s", reply.raw, want)
	}
	if !strings.Contains(reply.Text, "isn't watching any study") {
		t.Fatalf("list reply %q", reply.Text)
	}

	// Slack drops the connection; the client reconnects by itself.
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	conn = slackAPI.next(t)
	reply = command(t, conn, "env-2", "status nonsense")
	if !strings.Contains(reply.Text, "not a study I can read") {
		t.Fatalf("status reply %q", reply.Text)
	}
	if n := slackAPI.opens.Load(); n < 3 {
		t.Fatalf("apps.connections.open called %d times; want a refused one and two connections", n)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunSocketMode returned %v after its context ended; want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunSocketMode did not return after its context ended")
	}
}

func TestSocketModeNeedsAppToken(t *testing.T) {
	t.Parallel()
	h, err := New(Config{Prolific: noProlific{}, Store: emptyStore{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := RunSocketMode(context.Background(), "xoxb-not-an-app-token", "", "", h, nil); err == nil ||
		strings.Contains(err.Error(), "xoxb-not-an-app-token") {
		t.Fatalf("RunSocketMode with a bot token as app token = %v; want an error naming the variable, not the token", err)
	}
}

func slashCommand(text string) slack.SlashCommand {
	return slack.SlashCommand{TeamID: "T1", ChannelID: "C1", UserID: "U1", Command: "/taskflow", Text: text,
		ResponseURL: "https://hooks.slack.com/commands/T1/1/secret"}
}
