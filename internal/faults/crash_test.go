package faults_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/taskflow-watch/taskflow-watch/internal/notify/slackfake"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// TestCrashBetweenCommitAndSend kills the worker process with SIGKILL after
// a transition was committed to the outbox but before Slack accepted it,
// then starts a new process with a healthy Slack: the message arrives
// exactly once, and the restart does not fire the alert again.
//
// How soon the new process sends depends on how the old one left the
// message: after a failed attempt it is due at its retry time (the
// dispatcher's backoff, one to two seconds after a first attempt); with an
// attempt still in flight it stays claimed for the claim lease
// (notify.DefaultLease, two minutes), which the test fast-forwards in the
// database rather than waiting out.
func TestCrashBetweenCommitAndSend(t *testing.T) {
	t.Parallel()
	const channel = "C0CRASH"
	id := studyID(1)

	t.Run("send failing", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.watch(t, prolifictest.Study{ID: id, URLs: counts("https://c.example", 10, 12, 3)}, 0, channel)
		// Slack cannot be reached at all: every attempt is refused.
		refused := fmt.Sprintf("http://127.0.0.1:%d/api/", freePort(t))
		first := startProcess(t, r.env(map[string]string{"SLACK_API_URL": refused}))
		eventually(t, "a refused delivery attempt", first, func(ctx context.Context) (bool, error) {
			rows, err := r.outboxRows(ctx)
			return err == nil && len(rows) == 1 && rows[0].Attempts >= 1 && rows[0].LastError != "" && !rows[0].Claimed, err
		})
		first.kill(t)
		if rows := r.outbox(t); len(rows) != 1 || rows[0].Sent || rows[0].Failed {
			t.Fatalf("outbox after the crash = %+v, want one undelivered message", rows)
		}

		polled := r.prolific.fake.Requests(id)
		second := startProcess(t, r.env(nil))
		if _, err := r.slack.WaitMessages(waitCtx(t), 1); err != nil {
			t.Fatalf("not delivered after the restart: %v\nlogs:\n%s", err, second)
		}
		// The new process polls on without firing the alert again.
		r.prolific.waitRequests(t, id, polled+2, second)
		r.settle(t, second)
		assertAlive(t, second.addr)
		second.terminate(t, waitLimit)
		assertDeliveredOnce(t, r, id+" over_allocation firing https://c.example")
	})

	t.Run("send in flight", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.watch(t, prolifictest.Study{ID: id, URLs: counts("https://c.example", 10, 12, 3)}, 0, channel)
		// Slack takes the request and never answers.
		r.slack.FailNext(channel, slackfake.Fault{Hang: true}, 1)
		first := startProcess(t, r.env(nil))
		if _, err := r.slack.WaitRequests(waitCtx(t), 1); err != nil {
			t.Fatalf("no delivery attempt: %v\nlogs:\n%s", err, first)
		}
		first.kill(t)
		if rows := r.outbox(t); len(rows) != 1 || rows[0].Sent || !rows[0].Claimed {
			t.Fatalf("outbox after the crash = %+v, want one message still claimed by the dead process", rows)
		}

		polled := r.prolific.fake.Requests(id)
		second := startProcess(t, r.env(nil))
		// While the dead process's claim holds, the new one leaves the
		// message alone (a live but slow replica must not be doubled).
		r.prolific.waitRequests(t, id, polled+2, second)
		if reqs := r.slack.Requests(); len(reqs) != 1 {
			t.Fatalf("Slack saw %d requests while the claim held, want only the hung one: %+v", len(reqs), reqs)
		}
		// Two minutes pass, as far as the claim is concerned.
		if _, err := r.db.Exec(context.Background(), `UPDATE outbox SET claimed_until = now() - interval '1 second' WHERE claim_owner IS NOT NULL`); err != nil {
			t.Fatal(err)
		}
		if _, err := r.slack.WaitMessages(waitCtx(t), 1); err != nil {
			t.Fatalf("not delivered after the claim expired: %v\nlogs:\n%s", err, second)
		}
		r.settle(t, second)
		second.terminate(t, waitLimit)
		assertDeliveredOnce(t, r, id+" over_allocation firing https://c.example")
		if rows := r.outbox(t); rows[0].Attempts != 2 {
			t.Errorf("attempts = %d, want 2 (the hung one and the delivery)", rows[0].Attempts)
		}
	})
}

// assertDeliveredOnce checks that Slack holds exactly one alert, the
// transition key, and that the outbox holds it once, delivered.
func assertDeliveredOnce(t *testing.T, r *rig, key string) {
	t.Helper()
	if got := alertsOf(r.slack); len(got) != 1 || got[0].key() != key {
		t.Errorf("alerts = %+v, want exactly %q once", got, key)
	}
	if rows := r.outbox(t); len(rows) != 1 || !rows[0].Sent || rows[0].Claimed {
		t.Errorf("outbox = %+v, want the one message, delivered", rows)
	}
}
