package faults_test

import (
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/poller"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// TestSIGTERMDuringACycle sends SIGTERM to a worker process while one
// study's progress request hangs. The process exits 0 within the bound that
// applies and leaves the database consistent: no study or outbox message
// still leased, no observation ahead of its study's recorded poll, no alert
// without its notification, nothing left to send. A new process then
// polls every study at once, and nothing is notified twice.
//
// The bound: on SIGTERM the HTTP server drains (at most 10 s) while the
// poller claims nothing new and lets in-flight polls finish for
// poller.DefaultShutdownGrace (20 s) before cancelling them, and the
// dispatcher finishes sends already under way (each bounded by the Slack
// client's 30 s timeout, none here as Slack is healthy). These run side by
// side, so the worker exits within the poll grace; here the hanging fetch
// ends earlier, at the Prolific client's 15 s timeout, as a failed poll.
func TestSIGTERMDuringACycle(t *testing.T) {
	t.Parallel()
	const margin = 10 * time.Second
	over, steady, hanging := studyID(1), studyID(2), studyID(3)
	r := newRig(t)
	r.watch(t, prolifictest.Study{ID: over, URLs: counts("https://o.example", 10, 12, 3)}, 0, "C0OVER")
	r.watch(t, prolifictest.Study{ID: steady, URLs: counts("https://s.example", 10, 4, 3)}, 0, "C0STEADY")
	r.watch(t, prolifictest.Study{ID: hanging, URLs: counts("https://h.example", 10, 4, 3)}, 0, "C0HANGING")
	// The hanging study answers its first fetch, then never again.
	r.prolific.fake.Fail(hanging, prolifictest.Fault{}, 1)
	r.prolific.fake.Fail(hanging, prolifictest.Fault{Hang: true}, -1)

	first := startProcess(t, r.env(nil))
	if _, err := r.slack.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatalf("no alert: %v\nlogs:\n%s", err, first)
	}
	r.prolific.waitRequests(t, hanging, 2, first)

	took := first.terminate(t, poller.DefaultShutdownGrace+margin)
	t.Logf("exited %v after SIGTERM", took)
	if first.logs.count("worker stopped") != 1 {
		t.Errorf("the worker did not log its orderly stop\nlogs:\n%s", first)
	}

	checks := []struct {
		what  string
		query string
	}{
		// A study still leased would wait out its lease before another replica polls it.
		{"studies still leased", `SELECT count(*) FROM studies WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL`},
		// A message still claimed would wait out its claim before another replica sends it.
		{"outbox messages still claimed", `SELECT count(*) FROM outbox WHERE claim_owner IS NOT NULL OR claimed_until IS NOT NULL`},
		// Shutdown waits for the dispatcher, and Slack was healthy.
		{"outbox messages not delivered", `SELECT count(*) FROM outbox WHERE sent_at IS NULL`},
		// An observation is written in the same transaction as its study's poll outcome.
		{"observations newer than their study's last poll", `
			SELECT count(*) FROM observations o JOIN studies s ON s.id = o.study_id
			WHERE s.last_polled_at IS NULL OR o.observed_at > s.last_polled_at`},
		// A study whose last poll succeeded has its first observation.
		{"polled studies without an observation", `
			SELECT count(*) FROM studies s
			WHERE s.last_poll_ok AND NOT EXISTS (SELECT 1 FROM observations o WHERE o.study_id = s.id)`},
		// An alert is opened in the same transaction as its notification.
		{"alerts without their firing notification", `
			SELECT count(*) FROM alerts a
			WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = a.id AND o.state = 'firing')`},
		// The rule state says a study is failing only with a failed poll recorded.
		{"failure counts without a failed last poll", `
			SELECT count(*) FROM studies WHERE consecutive_failures > 0 AND last_poll_ok`},
	}
	for _, c := range checks {
		if n := r.queryInt(t, c.query); n != 0 {
			t.Errorf("%s: %d", c.what, n)
		}
	}

	// Another worker takes every study over at once, the hanging one included.
	r.prolific.fake.ClearFaults(hanging)
	before := map[string]int{}
	for _, id := range []string{over, steady, hanging} {
		before[id] = r.prolific.fake.Requests(id)
	}
	second := startProcess(t, r.env(nil))
	for id, n := range before {
		r.prolific.waitRequests(t, id, n+1, second)
	}
	r.prolific.waitRequests(t, over, before[over]+2, second)
	r.settle(t, second)
	second.terminate(t, poller.DefaultShutdownGrace+margin)
	if got := alertsOf(r.slack); !sameKeys(got, map[string]int{over + " over_allocation firing https://o.example": 1}) {
		t.Errorf("alerts = %+v, want the over-allocation once", got)
	}
	if t.Failed() {
		t.Logf("first worker:\n%s\nsecond worker:\n%s", first, second)
	}
}
