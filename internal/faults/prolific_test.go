package faults_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// TestProlificFaultsOnOneStudy breaks the progress endpoint of one study
// after a good first poll, while a second study keeps polling and goes over
// its allocation. The faulty study starts over-allocated (one legitimate
// alert) and has a one-second stall threshold, so any fault mistaken for
// data would show as a false over_allocation, over_capacity, capacity or
// stalled transition, or a false resolution. Only poll_failing may follow,
// after POLL_FAILURES_BEFORE_ALERT failed polls (at once for 401), and only
// once; the healthy study alerts exactly once.
func TestProlificFaultsOnOneStudy(t *testing.T) {
	t.Parallel()
	const threshold = 2
	// entry is a 200 reply whose one progress entry has the given fields.
	entry := func(fields string) string {
		return `{"id": "42a9f01f-3cd8-4cf0-b79a-9b2cd50a1e85", "progress": [{"external_url": "https://f.example", ` + fields + `}]}`
	}
	cases := []struct {
		name  string
		fault prolifictest.Fault
		// fires is the number of failed polls that fires poll_failing.
		fires int
		// spacing is the least time between two fetches after a fault.
		spacing time.Duration
		// reason is part of the error recorded for the study.
		reason string
	}{
		// A server error is transient.
		{name: "500", fault: prolifictest.Fault{Status: 500}, fires: threshold, reason: "HTTP 500"},
		// A rate limit without Retry-After backs off on the schedule.
		{name: "429", fault: prolifictest.Fault{Status: 429}, fires: threshold, reason: "HTTP 429"},
		// A rate limit with Retry-After is not fetched again sooner.
		{name: "429 Retry-After", fault: prolifictest.Fault{Status: 429, RetryAfter: "2"}, fires: threshold, spacing: 2 * time.Second, reason: "retry after 2s"},
		// A reply that never comes times out on the client.
		{name: "hang", fault: prolifictest.Fault{Hang: true}, fires: threshold, reason: "deadline exceeded"},
		// A truncated body is malformed, not data.
		{name: "malformed JSON", fault: prolifictest.Fault{Body: prolifictest.BodyMalformedJSON}, fires: threshold, reason: "invalid JSON"},
		// A negative allocation would break the capacity invariant if believed.
		{name: "negative counts", fault: prolifictest.Fault{Body: entry(`"total_allocation": -1, "allocated": 4, "capacity_increments": 0`)}, fires: threshold, reason: "negative"},
		// Counts written as strings would be over capacity if parsed.
		{name: "non-numeric counts", fault: prolifictest.Fault{Body: entry(`"total_allocation": 10, "allocated": "25", "capacity_increments": 0`)}, fires: threshold, reason: "not a number"},
		// An empty list would resolve the open alert if believed.
		{name: "empty progress list", fault: prolifictest.Fault{Body: `{"id": "42a9f01f-3cd8-4cf0-b79a-9b2cd50a1e85", "progress": []}`}, fires: threshold, reason: "no URLs"},
		// A body without the progress key is not an observation.
		{name: "missing progress key", fault: prolifictest.Fault{Body: `{"id": "42a9f01f-3cd8-4cf0-b79a-9b2cd50a1e85", "_links": {}}`}, fires: threshold, reason: "progress is missing"},
		// A rejected token fires at once: waiting will not fix it.
		{name: "401", fault: prolifictest.Fault{Status: 401}, fires: 1, reason: "HTTP 401"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			faulty, healthy := studyID(1), studyID(2)
			r := newRig(t)
			// Faulty: 12 of 10 within 3 screen-out slots, with room left, so
			// over_allocation fires on the first poll and stalled would fire
			// one second later on any second "observation".
			// Each study has its own channel, so Slack's pacing of one channel
			// does not slow the other's alerts.
			r.watch(t, prolifictest.Study{ID: faulty, URLs: counts("https://f.example", 10, 12, 3)}, time.Second, "C0FAULTY")
			r.watch(t, prolifictest.Study{ID: healthy, URLs: counts("https://h.example", 10, 4, 3)}, 0, "C0HEALTHY")
			// The first progress fetch is served normally; every later one fails.
			r.prolific.fake.Fail(faulty, prolifictest.Fault{}, 1)
			r.prolific.fake.Fail(faulty, tc.fault, -1)

			cfg := r.config(t, map[string]string{"POLL_FAILURES_BEFORE_ALERT": strconv.Itoa(threshold)})
			w := startWorker(t, cfg, app.Options{ProlificTimeout: 2 * time.Second})

			// Once the faults have begun, the healthy study goes over its
			// allocation, exactly to its capacity (no over_capacity, no room
			// left so no stall, no new screen-out slots so no capacity event).
			r.prolific.waitRequests(t, faulty, 2, w)
			r.prolific.fake.SetProgress(healthy, counts("https://h.example", 10, 13, 3))

			// One more failed poll than fires poll_failing is recorded, to show
			// that it does not fire again.
			eventually(t, "failed polls of the faulty study", w, func(ctx context.Context) (bool, error) {
				st, err := r.store.GetStudy(ctx, faulty)
				return err == nil && st.ConsecutiveFailures > tc.fires, err
			})
			// The healthy study is still polled.
			r.prolific.waitRequests(t, healthy, r.prolific.fake.Requests(healthy)+1, w)
			r.settle(t, w)
			assertAlive(t, w.app.Addr())
			if code, err := httpStatus(waitCtx(t), w.app.Addr(), "/readyz"); err != nil || code != 200 {
				t.Errorf("GET /readyz = %d, %v; want 200", code, err)
			}

			got := alertsOf(r.slack)
			want := map[string]int{
				faulty + " over_allocation firing https://f.example":  1,
				faulty + " poll_failing firing ":                      1,
				healthy + " over_allocation firing https://h.example": 1,
			}
			if !sameKeys(got, want) {
				t.Errorf("alerts = %+v\nwant exactly %v", got, want)
			}
			for _, o := range r.outbox(t) {
				if o.Rule == "poll_failing" && o.Failures != tc.fires {
					t.Errorf("poll_failing fired after %d failed polls, want %d", o.Failures, tc.fires)
				}
			}
			st, err := r.store.GetStudy(context.Background(), faulty)
			if err != nil || st.LastPollOK || !strings.Contains(st.LastError, tc.reason) {
				t.Errorf("faulty study = %+v, %v; want its last poll failed with an error saying %q", st, err, tc.reason)
			}
			if tc.spacing > 0 {
				arrivals := r.prolific.arrivalsOf(faulty)
				for i := 2; i < len(arrivals); i++ {
					if gap := arrivals[i].Sub(arrivals[i-1]); gap < tc.spacing {
						t.Errorf("fetch %d came %v after a 429 asking for %v", i+1, gap, tc.spacing)
					}
				}
			}
			if t.Failed() {
				t.Logf("logs:\n%s", w)
			}
		})
	}
}

// sameKeys reports whether the alerts announce exactly the transitions in
// want, each as many times as it says.
func sameKeys(got []alert, want map[string]int) bool {
	seen := map[string]int{}
	for _, a := range got {
		seen[a.key()]++
	}
	if len(seen) != len(want) {
		return false
	}
	for k, n := range want {
		if seen[k] != n {
			return false
		}
	}
	return true
}
