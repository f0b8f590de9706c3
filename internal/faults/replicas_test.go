package faults_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// replicaPhases is what the moving studies go through, phasePolls polls
// each: normal; over the allocation and the capacity (two alerts fire);
// screen-out slots added (a capacity event, over_capacity resolves); back
// under the allocation (over_allocation resolves).
var replicaPhases = [][]rules.URLCounts{
	counts("https://r.example", 10, 5, 0),
	counts("https://r.example", 10, 11, 0),
	counts("https://r.example", 10, 11, 2),
	counts("https://r.example", 10, 8, 2),
}

const phasePolls = 3

// TestReplicasPollOncePerTickAndDeliverOnce runs three workers on one
// database for twenty ticks of a one-second schedule while fifteen studies
// move through alerts. Each study is polled once per tick, give or take
// one at the edges of the measured window, never by two replicas at once,
// and every transition the store recorded reaches its channel exactly once.
func TestReplicasPollOncePerTickAndDeliverOnce(t *testing.T) {
	t.Parallel()
	const (
		studies  = 15
		replicas = 3
		ticks    = 20
	)
	r := newRig(t)
	var ids []string
	offset := map[string]int{}
	for i := range studies {
		id := studyID(i)
		ids = append(ids, id)
		offset[id] = i
		r.watch(t, prolifictest.Study{ID: id, URLs: replicaPhases[phase(0, i)]}, 0, fmt.Sprintf("C0REPLICA%02d", i))
	}
	fake := r.prolific.fake
	// After its n-th fetch a study moves to the counts of phase(n): the
	// fake already chose this fetch's reply, so the next poll sees them.
	fake.OnRequest(func(req prolifictest.Request) {
		if req.Endpoint != prolifictest.EndpointProgress {
			return
		}
		n := fake.Requests(req.StudyID)
		fake.UpdateStudy(req.StudyID, func(st *prolifictest.Study) { st.URLs = replicaPhases[phase(n, offset[req.StudyID])] })
	})

	cfg := r.config(t, nil)
	var workers []*worker
	for range replicas {
		workers = append(workers, startWorker(t, cfg, app.Options{}))
	}
	logs := joinedLogs(workers)
	// Warm-up: every replica is running and every study has been polled twice.
	for _, id := range ids {
		r.prolific.waitRequests(t, id, 2, logs)
	}
	from := time.Now()
	r.prolific.waitRequests(t, ids[0], fake.Requests(ids[0])+ticks, logs)
	to := time.Now()
	// The studies stop moving; once each was polled twice more no new
	// transition can come, and the outbox drains.
	fake.OnRequest(nil)
	seen := map[string]int{}
	for _, id := range ids {
		seen[id] = fake.Requests(id)
	}
	for _, id := range ids {
		r.prolific.waitRequests(t, id, seen[id]+2, logs)
	}
	r.settle(t, logs)
	for _, w := range workers {
		if err := w.stop(); err != nil {
			t.Errorf("worker stopped with %v", err)
		}
	}

	// Ticks fall on whole seconds (robfig/cron rounds @every 1s). The poll
	// for tick k arrives at k plus a few milliseconds, so counting the
	// arrivals in [first+0.5s, last+0.5s) counts one poll per tick in
	// between. Only the edges can be off: the first tick's poll counts too
	// if it was half a second late (+1), the last one's does not if it was
	// (-1). Two polls for one tick would add one per occurrence and break
	// the upper bound, however loaded the machine.
	//
	// The lower bound counts only the ticks that ran: a machine stalled
	// for seconds by other work skips those ticks on every replica, by
	// design (cycles never overlap). A tick ran when some study's poll
	// arrived in its second; a study left out while the others were polled
	// falls below that count. A loaded machine may spread one cycle's polls
	// over a second boundary, so it gets one more of slack there.
	first := from.Truncate(time.Second).Add(time.Second)
	last := to.Truncate(time.Second)
	window := int(last.Sub(first) / time.Second)
	lo, hi := first.Add(time.Second/2), last.Add(time.Second/2)
	inWindow := func(id string) []time.Time {
		var in []time.Time
		for _, at := range r.prolific.arrivalsOf(id) {
			if !at.Before(lo) && at.Before(hi) {
				in = append(in, at)
			}
		}
		return in
	}
	ran := map[int64]bool{}
	for _, id := range ids {
		for _, at := range inWindow(id) {
			ran[int64(at.Sub(lo)/time.Second)] = true
		}
	}
	for _, id := range ids {
		polls := len(inWindow(id))
		if polls > window+1 {
			t.Errorf("study %s polled %d times in %d ticks: more than once per tick", id, polls, window)
		}
		if polls < len(ran)-2 {
			t.Errorf("study %s polled %d times in the %d ticks that ran (of %d): left out", id, polls, len(ran), window)
		}
	}
	if len(ran) < window {
		t.Logf("%d of %d ticks ran; the machine was stalled for the others", len(ran), window)
	}
	if both := r.prolific.overlapping(); len(both) > 0 {
		t.Errorf("studies fetched by two replicas at once: %v", both)
	}

	// Every recorded transition reached its channel exactly once.
	rows := r.outbox(t)
	recorded := map[string]int{}
	for _, o := range rows {
		if !o.Sent || o.Failed || o.Claimed {
			t.Errorf("outbox %d = %+v, want delivered", o.ID, o)
		}
		recorded[o.Channel+" "+o.key()]++
	}
	delivered := map[string]int{}
	for _, a := range alertsOf(r.slack) {
		delivered[a.Channel+" "+a.key()]++
	}
	for k, n := range recorded {
		if delivered[k] != n {
			t.Errorf("%s: recorded %d times, delivered %d times", k, n, delivered[k])
		}
	}
	for k, n := range delivered {
		if recorded[k] == 0 {
			t.Errorf("%s: delivered %d times, never recorded", k, n)
		}
	}
	// The store recorded each alert's life once: per study and rule the
	// notifications alternate firing, resolved, firing, … and match the
	// alerts table.
	lastState := map[string]string{}
	firing, resolved, events := 0, 0, 0
	for _, o := range rows {
		k := o.StudyID + " " + o.Rule
		switch o.State {
		case "firing":
			firing++
			if lastState[k] == "firing" {
				t.Errorf("%s fired twice without resolving (outbox %d)", k, o.ID)
			}
		case "resolved":
			resolved++
			if lastState[k] != "firing" {
				t.Errorf("%s resolved without firing (outbox %d)", k, o.ID)
			}
		case "event":
			events++
		}
		lastState[k] = o.State
	}
	if n := r.queryInt(t, `SELECT count(*) FROM alerts`); n != firing {
		t.Errorf("%d alerts, %d firing notifications", n, firing)
	}
	if n := r.queryInt(t, `SELECT count(*) FROM alerts WHERE resolved_at IS NOT NULL`); n != resolved {
		t.Errorf("%d resolved alerts, %d resolved notifications", n, resolved)
	}
	if firing < 2*studies || resolved < 2*studies || events < studies {
		t.Errorf("only %d firing, %d resolved, %d events: the studies did not move as planned", firing, resolved, events)
	}
	for i, w := range workers {
		t.Logf("replica %d recorded %d polls", i+1, w.logs.count("polled study"))
	}
	t.Logf("%d ticks, %d notifications (%d firing, %d resolved, %d events)", window, len(rows), firing, resolved, events)
	if t.Failed() {
		t.Logf("logs:\n%s", logs)
	}
}

// phase is the phase a study with offset is in after n fetches.
func phase(n, offset int) int { return (n + offset) / phasePolls % len(replicaPhases) }

// joinedLogs shows the logs of several workers one after another.
type joinedLogs []*worker

func (j joinedLogs) String() string {
	var s string
	for i, w := range j {
		s += fmt.Sprintf("--- replica %d\n%s", i+1, w)
	}
	return s
}
