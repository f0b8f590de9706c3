package rules

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// The documented defaults, used when a watch and the operator leave a
// threshold unset. They are exported so configuration code can show and
// document the same values the rules apply.
const (
	// DefaultStallAfter is how long allocation may stay unchanged before
	// Stalled fires when Settings.StallAfter is not set.
	DefaultStallAfter = 6 * time.Hour
	// DefaultFailuresBeforeAlert is how many consecutive failed polls fire
	// PollFailing when Settings.FailuresBeforeAlert is not set.
	DefaultFailuresBeforeAlert = 3
)

// WithDefaults returns the settings with every unset threshold replaced by
// its default, so a zero Settings behaves as documented. A negative
// value counts as unset too: a negative stall duration or failure count has
// no sensible meaning and would otherwise fire alerts on every poll.
func (s Settings) WithDefaults() Settings {
	if s.StallAfter <= 0 {
		s.StallAfter = DefaultStallAfter
	}
	if s.FailuresBeforeAlert <= 0 {
		s.FailuresBeforeAlert = DefaultFailuresBeforeAlert
	}
	return s
}

// Evaluate applies one poll of a study to the state the rules remembered
// after the previous poll. It returns the state to remember next and the
// transitions to notify, so that Slack hears about a condition only when it
// starts, ends or, for CapacityIncrease, happens.
//
// Evaluate is pure: it reads no clock (now is the time of the poll), does no
// I/O, never modifies prev or poll (the returned state shares no slices with
// them) and returns the same result for the same arguments. Settings are
// completed with WithDefaults first.
//
// A successful poll is an observation: it decides the URL rules, Stalled and
// the end of PollFailing. A failed poll is not: it only counts towards
// PollFailing and records the study status when one was fetched, leaving
// the URLs, the URL alerts and Stalled exactly as they were.
//
// Transitions come in a stable order, the same order as the returned
// state's Open list: by ExternalURL (study-level transitions, whose
// ExternalURL is "", first), then by rule in the order OverCapacity,
// OverAllocation, CapacityIncrease, Stalled, PollFailing, then resolved
// before firing before event.
func Evaluate(prev StudyState, poll Poll, settings Settings, now time.Time) (StudyState, []Transition) {
	settings = settings.WithDefaults()
	next := StudyState{
		URLs:                slices.Clone(prev.URLs),
		StallSince:          prev.StallSince,
		Status:              cmp.Or(poll.Status, prev.Status),
		ConsecutiveFailures: prev.ConsecutiveFailures,
	}
	e := newEvaluation(prev.Open, now)
	if poll.Failure == FailureNone {
		e.observe(&next, prev, poll, settings)
	} else {
		e.pollFailed(&next, prev, poll, settings)
	}
	next.Open = e.openAlerts()
	return next, e.sortedTransitions()
}

// alertKey identifies an open alert: at most one is open per rule and URL.
type alertKey struct {
	rule Rule
	url  string
}

// evaluation collects the alerts and transitions of one Evaluate call.
type evaluation struct {
	now         time.Time
	open        map[alertKey]OpenAlert
	transitions []Transition
}

func newEvaluation(open []OpenAlert, now time.Time) *evaluation {
	e := &evaluation{now: now, open: make(map[alertKey]OpenAlert, len(open))}
	for _, a := range open {
		e.open[alertKey{a.Rule, a.ExternalURL}] = a
	}
	return e
}

func (e *evaluation) isOpen(rule Rule, url string) (OpenAlert, bool) {
	a, ok := e.open[alertKey{rule, url}]
	return a, ok
}

// fire opens the alert t describes; t.Since must already be set.
func (e *evaluation) fire(t Transition) {
	t.State = Firing
	t.At = e.now
	e.open[alertKey{t.Rule, t.ExternalURL}] = OpenAlert{Rule: t.Rule, ExternalURL: t.ExternalURL, Since: t.Since}
	e.transitions = append(e.transitions, t)
}

// resolve closes the open alert t describes, dating it from when it fired.
func (e *evaluation) resolve(t Transition) {
	k := alertKey{t.Rule, t.ExternalURL}
	t.State = Resolved
	t.At = e.now
	t.Since = e.open[k].Since
	delete(e.open, k)
	e.transitions = append(e.transitions, t)
}

// event records a one-off transition that opens no alert.
func (e *evaluation) event(t Transition) {
	t.State = Event
	t.At = e.now
	t.Since = e.now
	e.transitions = append(e.transitions, t)
}

// pollFailed counts a failed poll towards PollFailing.
func (e *evaluation) pollFailed(next *StudyState, prev StudyState, poll Poll, settings Settings) {
	next.ConsecutiveFailures++
	// The status request can succeed while the progress request fails. If
	// the study became ACTIVE again, the time it spent paused must not count
	// as stalling, and the next observation can no longer see the change, so
	// the stall clock restarts here; nothing else about Stalled moves.
	if becameActive(prev.Status, poll.Status) && !prev.StallSince.IsZero() {
		next.StallSince = e.now
	}
	if _, ok := e.isOpen(PollFailing, ""); ok {
		return
	}
	n := next.ConsecutiveFailures
	if poll.Failure == FailureAuth || n >= settings.FailuresBeforeAlert {
		e.fire(Transition{
			Rule:     PollFailing,
			Since:    e.now,
			Failures: n,
			Reason:   cmp.Or(poll.Error, fmt.Sprintf("%d consecutive polls failed", n)),
		})
	}
}

// observe applies a successful poll: it ends PollFailing, evaluates the URL
// rules and decides Stalled.
func (e *evaluation) observe(next *StudyState, prev StudyState, poll Poll, settings Settings) {
	if _, ok := e.isOpen(PollFailing, ""); ok {
		e.resolve(Transition{
			Rule:     PollFailing,
			Failures: prev.ConsecutiveFailures,
			Reason:   pollingWorksAgain(prev.ConsecutiveFailures),
		})
	}
	next.ConsecutiveFailures = 0
	// A non-nil slice records that an observation was made, even of a study
	// without URLs.
	next.URLs = append(make([]URLCounts, 0, len(poll.URLs)), poll.URLs...)

	before := indexByURL(prev.URLs)
	after := indexByURL(poll.URLs)
	for _, url := range slices.Sorted(maps.Keys(after)) {
		counts := after[url]
		e.overCapacity(counts)
		e.overAllocation(counts)
		if was, seen := before[url]; seen && counts.CapacityIncrements > was.CapacityIncrements {
			e.event(Transition{
				Rule:                       CapacityIncrease,
				ExternalURL:                url,
				Counts:                     &counts,
				PreviousCapacityIncrements: was.CapacityIncrements,
				Reason:                     fmt.Sprintf("capacity increments rose from %d to %d", was.CapacityIncrements, counts.CapacityIncrements),
			})
		}
	}
	for _, a := range slices.Collect(maps.Values(e.open)) {
		if a.ExternalURL == "" {
			continue
		}
		if _, present := after[a.ExternalURL]; present {
			continue
		}
		t := Transition{Rule: a.Rule, ExternalURL: a.ExternalURL, Cause: CauseURLRemoved, Reason: "the URL is no longer in the study's progress"}
		if last, ok := before[a.ExternalURL]; ok {
			t.Counts = &last
		}
		e.resolve(t)
	}

	moved := allocationMoved(before, after)
	reactivated := becameActive(prev.Status, poll.Status)
	// Time spent with every URL full is not stalling: nothing could be
	// allocated. When room appears again (a larger allocation, a
	// screen-out slot), the stall clock starts from then.
	roomAppeared := !hasRoom(prev.URLs) && hasRoom(poll.URLs)
	if prev.StallSince.IsZero() || moved || reactivated || roomAppeared {
		next.StallSince = e.now
	}
	e.stalled(*next, prev.Status, poll.URLs, moved, reactivated, settings)
}

// overCapacity fires while the documented invariant allocated ≤
// total_allocation + capacity_increments is broken.
func (e *evaluation) overCapacity(c URLCounts) {
	_, open := e.isOpen(OverCapacity, c.ExternalURL)
	switch broken := c.Allocated > c.Capacity(); {
	case broken && !open:
		e.fire(Transition{
			Rule:        OverCapacity,
			ExternalURL: c.ExternalURL,
			Since:       e.now,
			Counts:      &c,
			Reason:      fmt.Sprintf("allocated %d of a capacity of %d (%d + %d from screen-outs)", c.Allocated, c.Capacity(), c.TotalAllocation, c.CapacityIncrements),
		})
	case !broken && open:
		e.resolve(Transition{
			Rule:        OverCapacity,
			ExternalURL: c.ExternalURL,
			Counts:      &c,
			Reason:      fmt.Sprintf("allocated %d of a capacity of %d", c.Allocated, c.Capacity()),
		})
	}
}

// overAllocation fires while a URL has more participants than its
// allocation, and says whether screen-out capacity explains them.
func (e *evaluation) overAllocation(c URLCounts) {
	_, open := e.isOpen(OverAllocation, c.ExternalURL)
	switch over := c.Allocated > c.TotalAllocation; {
	case over && !open:
		within := c.Allocated <= c.Capacity()
		reason := fmt.Sprintf("allocated %d of %d, beyond the capacity of %d", c.Allocated, c.TotalAllocation, c.Capacity())
		if within {
			reason = fmt.Sprintf("allocated %d of %d, within the capacity of %d that screen-outs added", c.Allocated, c.TotalAllocation, c.Capacity())
		}
		e.fire(Transition{
			Rule:           OverAllocation,
			ExternalURL:    c.ExternalURL,
			Since:          e.now,
			Counts:         &c,
			WithinCapacity: within,
			Reason:         reason,
		})
	case !over && open:
		e.resolve(Transition{
			Rule:           OverAllocation,
			ExternalURL:    c.ExternalURL,
			Counts:         &c,
			WithinCapacity: c.Allocated <= c.Capacity(),
			Reason:         fmt.Sprintf("allocated %d of %d", c.Allocated, c.TotalAllocation),
		})
	}
}

// stalled decides the Stalled rule from a successful observation; next
// already carries this poll's status and stall clock.
func (e *evaluation) stalled(next StudyState, prevStatus string, urls []URLCounts, moved, reactivated bool, settings Settings) {
	room := hasRoom(urls)
	unchanged := e.now.Sub(next.StallSince)
	active := next.Status == StatusActive
	stalled := active && room && unchanged >= settings.StallAfter

	a, open := e.isOpen(Stalled, "")
	switch {
	case stalled && !open:
		e.fire(Transition{
			Rule:   Stalled,
			Since:  next.StallSince,
			Reason: fmt.Sprintf("no allocation change for %s while the study is ACTIVE", textviz.Duration(unchanged)),
		})
	case !stalled && open:
		t := Transition{Rule: Stalled}
		switch {
		case moved:
			t.Cause = CauseMoved
			t.Reason = fmt.Sprintf("allocation moved after stalling for %s", textviz.Duration(e.now.Sub(a.Since)))
		case !active:
			t.Cause = CauseInactive
			t.Reason = fmt.Sprintf("the study is no longer ACTIVE (status %s)", cmp.Or(next.Status, "unknown"))
		case !room:
			t.Cause = CauseFull
			t.Reason = "every URL is full"
		case reactivated:
			t.Cause = CauseReactivated
			t.Reason = fmt.Sprintf("the study became ACTIVE again after being %s", prevStatus)
		default:
			t.Cause = CauseBelowThreshold
			t.Reason = fmt.Sprintf("allocation has been unchanged for %s, less than the stall threshold of %s", textviz.Duration(unchanged), textviz.Duration(settings.StallAfter))
		}
		e.resolve(t)
	}
}

// openAlerts lists the open alerts in transition order.
func (e *evaluation) openAlerts() []OpenAlert {
	open := slices.Collect(maps.Values(e.open))
	slices.SortFunc(open, func(a, b OpenAlert) int {
		return compareAlerts(a.ExternalURL, a.Rule, b.ExternalURL, b.Rule)
	})
	return open
}

// sortedTransitions returns the transitions in the order Evaluate documents.
func (e *evaluation) sortedTransitions() []Transition {
	slices.SortFunc(e.transitions, func(a, b Transition) int {
		return cmp.Or(
			compareAlerts(a.ExternalURL, a.Rule, b.ExternalURL, b.Rule),
			cmp.Compare(stateRank(a.State), stateRank(b.State)),
		)
	})
	return e.transitions
}

func compareAlerts(urlA string, ruleA Rule, urlB string, ruleB Rule) int {
	return cmp.Or(
		cmp.Compare(urlA, urlB),
		cmp.Compare(ruleRank(ruleA), ruleRank(ruleB)),
		cmp.Compare(ruleA, ruleB),
	)
}

// ruleRank puts the most severe URL rule first; rules it does not know sort
// last, by name, so alerts stored by a newer version still order
// deterministically.
func ruleRank(r Rule) int {
	switch r {
	case OverCapacity:
		return 0
	case OverAllocation:
		return 1
	case CapacityIncrease:
		return 2
	case Stalled:
		return 3
	case PollFailing:
		return 4
	default:
		return 5
	}
}

func stateRank(s TransitionState) int {
	switch s {
	case Resolved:
		return 0
	case Firing:
		return 1
	default:
		return 2
	}
}

// indexByURL maps each external URL to its counts; should a URL be listed
// twice, the last entry wins.
func indexByURL(urls []URLCounts) map[string]URLCounts {
	m := make(map[string]URLCounts, len(urls))
	for _, c := range urls {
		m[c.ExternalURL] = c
	}
	return m
}

// hasRoom reports whether some URL can still take participants.
func hasRoom(urls []URLCounts) bool {
	return slices.ContainsFunc(urls, func(c URLCounts) bool { return c.Allocated < c.Capacity() })
}

// allocationMoved reports whether any URL's allocated differs between two
// observations; a URL added or removed counts as movement.
func allocationMoved(before, after map[string]URLCounts) bool {
	if len(before) != len(after) {
		return true
	}
	for url, c := range after {
		if was, ok := before[url]; !ok || was.Allocated != c.Allocated {
			return true
		}
	}
	return false
}

// becameActive reports a change into ACTIVE from another known status. A
// change from an unknown status is not one: the study may have been ACTIVE
// all along.
func becameActive(prevStatus, pollStatus string) bool {
	return pollStatus == StatusActive && prevStatus != "" && prevStatus != StatusActive
}

func pollingWorksAgain(failures int) string {
	switch failures {
	case 0:
		return "polling works again"
	case 1:
		return "polling works again after 1 failed poll"
	default:
		return fmt.Sprintf("polling works again after %d failed polls", failures)
	}
}
