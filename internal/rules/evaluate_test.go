package rules

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// at is a point in a test's timeline: the start of watching plus d.
func at(d time.Duration) time.Time {
	return time.Date(2025, time.March, 10, 9, 0, 0, 0, time.UTC).Add(d)
}

func counts(url string, total, allocated, increments int) URLCounts {
	return URLCounts{ExternalURL: url, TotalAllocation: total, Allocated: allocated, CapacityIncrements: increments}
}

func ptr(c URLCounts) *URLCounts { return &c }

// observed is a successful poll.
func observed(status string, urls ...URLCounts) Poll {
	return Poll{Status: status, URLs: urls}
}

// failedPoll is a poll that could not read the study's progress.
func failedPoll(kind FailureKind, msg string) Poll {
	return Poll{Failure: kind, Error: msg}
}

// docsSample is the documented access-details-progress sample: google.com is
// over its allocation, explained by screen-out capacity.
func docsSample() []URLCounts {
	return []URLCounts{
		counts("https://google.com", 10, 12, 3),
		counts("https://bing.com", 10, 4, 0),
	}
}

// summarize writes a transition as "state rule [url] [from→to]" so that
// sequences read as the notifications they cause.
func summarize(t Transition) string {
	parts := []string{string(t.State), string(t.Rule)}
	if t.ExternalURL != "" {
		parts = append(parts, t.ExternalURL)
	}
	if t.Rule == CapacityIncrease && t.Counts != nil {
		parts = append(parts, fmt.Sprintf("%d→%d", t.PreviousCapacityIncrements, t.Counts.CapacityIncrements))
	}
	return strings.Join(parts, " ")
}

func summarizeAll(ts []Transition) []string {
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, summarize(t))
	}
	return out
}

// step is one poll of a sequence and what it must notify.
type step struct {
	after time.Duration // since the sequence started
	poll  Poll
	want  []string // summaries of the expected transitions, in order
	// wantTransitions, when set, must equal the transitions field by field.
	wantTransitions []Transition
	// check, when set, inspects the state and transitions further.
	check func(t *testing.T, next StudyState, got []Transition)
}

// runSequence feeds the polls through Evaluate one after another, carrying
// the state, and checks every step. It returns the final state.
func runSequence(t *testing.T, settings Settings, state StudyState, steps []step) StudyState {
	t.Helper()
	for i, s := range steps {
		next, got := Evaluate(state, s.poll, settings, at(s.after))
		if gotSum := summarizeAll(got); !slices.Equal(gotSum, s.want) {
			t.Fatalf("step %d (+%s): transitions\n got %q\nwant %q", i, s.after, gotSum, s.want)
		}
		if s.wantTransitions != nil && !reflect.DeepEqual(got, s.wantTransitions) {
			t.Fatalf("step %d (+%s): transitions\n got %s\nwant %s", i, s.after, dump(got), dump(s.wantTransitions))
		}
		if s.check != nil {
			s.check(t, next, got)
		}
		checkOpenMatches(t, i, state, next, got)
		state = next
	}
	return state
}

// checkOpenMatches verifies that the Open list follows from the previous one
// and the transitions: firings add, resolutions remove, nothing else changes.
func checkOpenMatches(t *testing.T, i int, prev, next StudyState, got []Transition) {
	t.Helper()
	want := slices.Clone(prev.Open)
	for _, tr := range got {
		switch tr.State {
		case Firing:
			want = append(want, OpenAlert{Rule: tr.Rule, ExternalURL: tr.ExternalURL, Since: tr.Since})
		case Resolved:
			want = slices.DeleteFunc(want, func(a OpenAlert) bool { return a.Rule == tr.Rule && a.ExternalURL == tr.ExternalURL })
		}
	}
	sortOpen := func(a, b OpenAlert) int { return compareAlerts(a.ExternalURL, a.Rule, b.ExternalURL, b.Rule) }
	slices.SortFunc(want, sortOpen)
	if !slices.Equal(next.Open, want) {
		t.Fatalf("step %d: open alerts\n got %+v\nwant %+v", i, next.Open, want)
	}
	if !slices.IsSortedFunc(next.Open, sortOpen) {
		t.Fatalf("step %d: open alerts are not sorted: %+v", i, next.Open)
	}
}

func dump(ts []Transition) string {
	var b strings.Builder
	for _, t := range ts {
		fmt.Fprintf(&b, "\n  %+v", t)
		if t.Counts != nil {
			fmt.Fprintf(&b, " counts=%+v", *t.Counts)
		}
	}
	return b.String()
}

func wantStallSince(d time.Duration) func(*testing.T, StudyState, []Transition) {
	return func(t *testing.T, next StudyState, _ []Transition) {
		t.Helper()
		if !next.StallSince.Equal(at(d)) {
			t.Fatalf("StallSince = %s, want start+%s", next.StallSince, d)
		}
	}
}

func wantReason(i int, reason string) func(*testing.T, StudyState, []Transition) {
	return wantCause(i, CauseCleared, reason)
}

// wantCause checks a transition's typed cause along with its reason.
func wantCause(i int, cause Cause, reason string) func(*testing.T, StudyState, []Transition) {
	return func(t *testing.T, _ StudyState, got []Transition) {
		t.Helper()
		if got[i].Cause != cause || got[i].Reason != reason {
			t.Fatalf("transition %d cause, reason = %q, %q; want %q, %q", i, got[i].Cause, got[i].Reason, cause, reason)
		}
	}
}

func TestEvaluateSequences(t *testing.T) {
	t.Parallel()
	const a, b = "https://a.example", "https://b.example"
	active := func(urls ...URLCounts) Poll { return observed(StatusActive, urls...) }

	tests := []struct {
		name     string
		settings Settings
		steps    []step
	}{
		{
			// The first observation is a baseline: existing capacity increments are not a rise.
			name: "first observation is a baseline",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 3, 2)), want: nil, check: wantStallSince(0)},
			},
		},
		{
			// The documented sample: google.com is over allocation but within capacity, so over_capacity stays quiet.
			name: "docs sample fires over_allocation within capacity only",
			steps: []step{
				{after: 0, poll: active(docsSample()...), wantTransitions: []Transition{{
					Rule:           OverAllocation,
					ExternalURL:    "https://google.com",
					State:          Firing,
					At:             at(0),
					Since:          at(0),
					Counts:         ptr(counts("https://google.com", 10, 12, 3)),
					WithinCapacity: true,
					Reason:         "allocated 12 of 10, within the capacity of 13 that screen-outs added",
				}}, want: []string{"firing over_allocation https://google.com"}},
			},
		},
		{
			// Beyond total + increments both rules fire, the broken invariant first.
			name: "over_capacity fires with over_allocation",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 14, 3)), want: []string{
					"firing over_capacity " + a,
					"firing over_allocation " + a,
				}, check: func(t *testing.T, _ StudyState, got []Transition) {
					if got[1].WithinCapacity {
						t.Fatalf("over_allocation beyond capacity says WithinCapacity")
					}
				}},
			},
		},
		{
			// Over capacity clears while over allocation stays: only over_capacity resolves.
			name: "over_capacity resolves on its own",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 14, 3)), want: []string{"firing over_capacity " + a, "firing over_allocation " + a}},
				{after: time.Hour, poll: active(counts(a, 10, 14, 5)), want: []string{
					"resolved over_capacity " + a,
					"event capacity_increase " + a + " 3→5",
				}, wantTransitions: []Transition{
					{Rule: OverCapacity, ExternalURL: a, State: Resolved, At: at(time.Hour), Since: at(0), Counts: ptr(counts(a, 10, 14, 5)), Reason: "allocated 14 of a capacity of 15"},
					{Rule: CapacityIncrease, ExternalURL: a, State: Event, At: at(time.Hour), Since: at(time.Hour), Counts: ptr(counts(a, 10, 14, 5)), PreviousCapacityIncrements: 3, Reason: "capacity increments rose from 3 to 5"},
				}},
			},
		},
		{
			// An alert fires once per episode, however many polls still show the condition.
			name: "fire once across identical polls",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 11, 0)), want: []string{"firing over_capacity " + a, "firing over_allocation " + a}},
				{after: 5 * time.Minute, poll: active(counts(a, 10, 11, 0)), want: nil},
				{after: 10 * time.Minute, poll: active(counts(a, 10, 11, 0)), want: nil},
			},
		},
		{
			// Fire, resolve, fire again: three notifications across three polls.
			name: "flapping notifies every change",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 11, 1)), want: []string{"firing over_allocation " + a}},
				{after: 5 * time.Minute, poll: active(counts(a, 10, 9, 1)), want: []string{"resolved over_allocation " + a},
					wantTransitions: []Transition{{Rule: OverAllocation, ExternalURL: a, State: Resolved, At: at(5 * time.Minute), Since: at(0), Counts: ptr(counts(a, 10, 9, 1)), WithinCapacity: true, Reason: "allocated 9 of 10"}}},
				{after: 10 * time.Minute, poll: active(counts(a, 10, 11, 1)), want: []string{"firing over_allocation " + a},
					check: func(t *testing.T, next StudyState, got []Transition) {
						if !got[0].Since.Equal(at(10*time.Minute)) || !next.Open[0].Since.Equal(at(10*time.Minute)) {
							t.Fatalf("a new episode must start now, got Since %s, open %+v", got[0].Since, next.Open)
						}
					}},
			},
		},
		{
			// Capacity 0 → 2 → 3 is two rises, each with its from → to.
			name: "capacity rises are events",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: time.Hour, poll: active(counts(a, 10, 5, 2)), want: []string{"event capacity_increase " + a + " 0→2"}},
				{after: 2 * time.Hour, poll: active(counts(a, 10, 5, 2)), want: nil},
				{after: 3 * time.Hour, poll: active(counts(a, 10, 5, 3)), want: []string{"event capacity_increase " + a + " 2→3"}},
			},
		},
		{
			// A decrease in capacity increments is not an event.
			name: "capacity decrease is silent",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 3)), want: nil},
				{after: time.Hour, poll: active(counts(a, 10, 5, 1)), want: nil},
			},
		},
		{
			// A rise is measured against the previous successful observation, across failed polls.
			name: "capacity rise spans failed polls",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 1)), want: nil},
				{after: time.Hour, poll: failedPoll(FailureTransient, "timeout"), want: nil},
				{after: 2 * time.Hour, poll: active(counts(a, 10, 5, 4)), want: []string{"event capacity_increase " + a + " 1→4"}},
			},
		},
		{
			// A URL that appears is a baseline for capacity_increase, and counts as allocation movement.
			name: "URL appears as a baseline",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: time.Hour, poll: active(counts(a, 10, 5, 0), counts(b, 10, 0, 4)), want: nil, check: wantStallSince(time.Hour)},
				{after: 2 * time.Hour, poll: active(counts(a, 10, 5, 0), counts(b, 10, 0, 5)), want: []string{"event capacity_increase " + b + " 4→5"}},
			},
		},
		{
			// A URL that disappears resolves its open alerts with its last known counts.
			name: "URL disappears and its alerts resolve",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0), counts(b, 10, 14, 2)), want: []string{"firing over_capacity " + b, "firing over_allocation " + b}},
				{after: time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"resolved over_capacity " + b, "resolved over_allocation " + b},
					wantTransitions: []Transition{
						{Rule: OverCapacity, ExternalURL: b, State: Resolved, At: at(time.Hour), Since: at(0), Counts: ptr(counts(b, 10, 14, 2)), Cause: CauseURLRemoved, Reason: "the URL is no longer in the study's progress"},
						{Rule: OverAllocation, ExternalURL: b, State: Resolved, At: at(time.Hour), Since: at(0), Counts: ptr(counts(b, 10, 14, 2)), Cause: CauseURLRemoved, Reason: "the URL is no longer in the study's progress"},
					},
					check: wantStallSince(time.Hour)},
			},
		},
		{
			// Stalled fires exactly at the threshold (>=), dated from the last movement.
			name: "stalled fires at the threshold",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"},
					wantTransitions: []Transition{{Rule: Stalled, State: Firing, At: at(6 * time.Hour), Since: at(0), Reason: "no allocation change for 6h while the study is ACTIVE"}}},
				{after: 7 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: nil},
			},
		},
		{
			// One second short of the threshold nothing fires.
			name: "stalled not just before the threshold",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6*time.Hour - time.Second, poll: active(counts(a, 10, 5, 0)), want: nil},
			},
		},
		{
			// The stall clock counts from the last movement, not from the first observation.
			name: "movement restarts the stall clock",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 4 * time.Hour, poll: active(counts(a, 10, 6, 0)), want: nil, check: wantStallSince(4 * time.Hour)},
				{after: 9 * time.Hour, poll: active(counts(a, 10, 6, 0)), want: nil},
				{after: 10 * time.Hour, poll: active(counts(a, 10, 6, 0)), want: []string{"firing stalled"}},
			},
		},
		{
			// A paused study is not stalled, however long allocation stays put.
			name: "stalled not while PAUSED",
			steps: []step{
				{after: 0, poll: observed("PAUSED", counts(a, 10, 5, 0)), want: nil},
				{after: 7 * time.Hour, poll: observed("PAUSED", counts(a, 10, 5, 0)), want: nil},
			},
		},
		{
			// Without a known status the study is not known to be ACTIVE, so it is not stalled.
			name: "stalled not while the status is unknown",
			steps: []step{
				{after: 0, poll: observed("", counts(a, 10, 5, 0)), want: nil},
				{after: 7 * time.Hour, poll: observed("", counts(a, 10, 5, 0)), want: nil},
			},
		},
		{
			// A study whose URLs are all full has nothing left to allocate, so it is not stalled.
			name: "stalled not when every URL is full",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 12, 2), counts(b, 5, 5, 0)), want: []string{"firing over_allocation " + a}},
				{after: 7 * time.Hour, poll: active(counts(a, 10, 12, 2), counts(b, 5, 5, 0)), want: nil},
			},
		},
		{
			// A poll without status keeps the last known one: ACTIVE still counts.
			name: "stalled uses the last known status",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: observed("", counts(a, 10, 5, 0)), want: []string{"firing stalled"},
					check: func(t *testing.T, next StudyState, _ []Transition) {
						if next.Status != StatusActive {
							t.Fatalf("Status = %q, want the last known ACTIVE", next.Status)
						}
					}},
			},
		},
		{
			// Time spent PAUSED does not count: becoming ACTIVE again restarts the stall clock.
			name: "PAUSED to ACTIVE restarts the stall clock",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 5 * time.Hour, poll: observed("PAUSED", counts(a, 10, 5, 0)), want: nil, check: wantStallSince(0)},
				{after: 10 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: nil, check: wantStallSince(10 * time.Hour)},
				{after: 16*time.Hour - time.Second, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 16 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
			},
		},
		{
			// A status first seen as ACTIVE after an unknown one is not a change into ACTIVE.
			name: "unknown to ACTIVE keeps the stall clock",
			steps: []step{
				{after: 0, poll: observed("", counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}, check: wantStallSince(0)},
			},
		},
		{
			// Allocation moving resolves stalled and says how long it stalled.
			name: "stalled resolves when allocation moves",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
				{after: 7*time.Hour + 30*time.Minute, poll: active(counts(a, 10, 6, 0)), want: []string{"resolved stalled"},
					wantTransitions: []Transition{{Rule: Stalled, State: Resolved, At: at(7*time.Hour + 30*time.Minute), Since: at(0), Cause: CauseMoved, Reason: "allocation moved after stalling for 7h30m"}},
					check:           wantStallSince(7*time.Hour + 30*time.Minute)},
			},
		},
		{
			// Pausing a stalled study resolves stalled and names the status.
			name: "stalled resolves when the study is paused",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
				{after: 7 * time.Hour, poll: observed("PAUSED", counts(a, 10, 5, 0)), want: []string{"resolved stalled"},
					check: wantCause(0, CauseInactive, "the study is no longer ACTIVE (status PAUSED)")},
			},
		},
		{
			// A stalled study seen PAUSED only by a failed poll keeps its alert; seen ACTIVE
			// again, its stall clock restarts, so the alert resolves as reactivated.
			name: "stalled resolves when the study becomes active again",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
				{after: 7 * time.Hour, poll: Poll{Failure: FailureTransient, Error: "HTTP 502", Status: "PAUSED"}, want: nil},
				{after: 8 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"resolved stalled"},
					check: wantCause(0, CauseReactivated, "the study became ACTIVE again after being PAUSED")},
			},
		},
		{
			// Losing the last free slot (capacity shrank) resolves stalled: nothing is left to allocate.
			name: "stalled resolves when no room is left",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 10, 2)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 10, 2)), want: []string{"firing stalled"}},
				{after: 7 * time.Hour, poll: active(counts(a, 10, 10, 0)), want: []string{"resolved stalled"},
					check: wantCause(0, CauseFull, "every URL is full")},
			},
		},
		{
			// Hours spent full are not stalling: a larger allocation restarts the stall clock.
			name: "room appearing restarts the stall clock",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 10, 0)), want: nil},
				{after: 8 * time.Hour, poll: active(counts(a, 20, 10, 0)), want: nil, check: wantStallSince(8 * time.Hour)},
				{after: 14*time.Hour - time.Second, poll: active(counts(a, 20, 10, 0)), want: nil},
				{after: 14 * time.Hour, poll: active(counts(a, 20, 10, 0)), want: []string{"firing stalled"}},
			},
		},
		{
			// A screen-out slot on a full URL is room too: the event, but no stalled.
			name: "screen-out slot on a full study does not fire stalled",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 10, 0)), want: nil},
				{after: 8 * time.Hour, poll: active(counts(a, 10, 10, 1)), want: []string{"event capacity_increase " + a + " 0→1"},
					check: wantStallSince(8 * time.Hour)},
			},
		},
		{
			// Failed polls neither fire stalled nor move the stall clock; the next observation decides.
			name: "failed polls never fire stalled",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: failedPoll(FailureTransient, "HTTP 502"), want: nil, check: wantStallSince(0)},
				{after: 7 * time.Hour, poll: failedPoll(FailureTransient, "HTTP 502"), want: nil, check: wantStallSince(0)},
				{after: 8 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"},
					check: func(t *testing.T, _ StudyState, got []Transition) {
						if !got[0].Since.Equal(at(0)) {
							t.Fatalf("stalled Since = %s, want the last movement at the start", got[0].Since)
						}
					}},
			},
		},
		{
			// Failed polls leave a firing stalled alert alone, even when they see another status.
			name: "failed polls never resolve stalled",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
				{after: 7 * time.Hour, poll: Poll{Failure: FailureTransient, Error: "timeout", Status: "PAUSED"}, want: nil,
					check: func(t *testing.T, next StudyState, _ []Transition) {
						if next.Status != "PAUSED" || !next.StallSince.Equal(at(0)) {
							t.Fatalf("after a failed poll: status %q, StallSince %s", next.Status, next.StallSince)
						}
					}},
				{after: 8 * time.Hour, poll: failedPoll(FailureTransient, "timeout"), want: nil},
				{after: 9 * time.Hour, poll: observed("PAUSED", counts(a, 10, 5, 0)), want: []string{"resolved stalled"}},
			},
		},
		{
			// A failed poll that sees the study become ACTIVE again still keeps paused time out of the stall.
			name: "failed poll seeing ACTIVE again restarts the stall clock",
			steps: []step{
				{after: 0, poll: observed("PAUSED", counts(a, 10, 5, 0)), want: nil},
				{after: 10 * time.Hour, poll: Poll{Failure: FailureTransient, Error: "timeout", Status: StatusActive}, want: nil, check: wantStallSince(10 * time.Hour)},
				{after: 11 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 16 * time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
			},
		},
		{
			// A failed poll changes neither the URLs nor the URL alerts.
			name: "failed polls leave URLs and URL alerts alone",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 11, 2)), want: []string{"firing over_allocation " + a}},
				{after: time.Hour, poll: Poll{Failure: FailureTransient, Error: "bad body", URLs: []URLCounts{counts(a, 10, 3, 9)}}, want: nil,
					check: func(t *testing.T, next StudyState, _ []Transition) {
						if !slices.Equal(next.URLs, []URLCounts{counts(a, 10, 11, 2)}) {
							t.Fatalf("URLs changed by a failed poll: %+v", next.URLs)
						}
					}},
			},
		},
		{
			// poll_failing fires at the third failure, not the second, and only once.
			name: "poll_failing after N failures, once",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 1 * time.Minute, poll: failedPoll(FailureTransient, "HTTP 503"), want: nil},
				{after: 2 * time.Minute, poll: failedPoll(FailureTransient, "HTTP 503"), want: nil},
				{after: 3 * time.Minute, poll: failedPoll(FailureTransient, "HTTP 504"), want: []string{"firing poll_failing"},
					wantTransitions: []Transition{{Rule: PollFailing, State: Firing, At: at(3 * time.Minute), Since: at(3 * time.Minute), Failures: 3, Reason: "HTTP 504"}}},
				{after: 4 * time.Minute, poll: failedPoll(FailureTransient, "HTTP 503"), want: nil,
					check: func(t *testing.T, next StudyState, _ []Transition) {
						if next.ConsecutiveFailures != 4 {
							t.Fatalf("ConsecutiveFailures = %d, want 4", next.ConsecutiveFailures)
						}
					}},
				{after: 5 * time.Minute, poll: active(counts(a, 10, 5, 0)), want: []string{"resolved poll_failing"},
					wantTransitions: []Transition{{Rule: PollFailing, State: Resolved, At: at(5 * time.Minute), Since: at(3 * time.Minute), Failures: 4, Reason: "polling works again after 4 failed polls"}},
					check: func(t *testing.T, next StudyState, _ []Transition) {
						if next.ConsecutiveFailures != 0 {
							t.Fatalf("ConsecutiveFailures = %d after a good poll, want 0", next.ConsecutiveFailures)
						}
					}},
			},
		},
		{
			// A good poll between failures resets the count.
			name: "a good poll resets the failure count",
			steps: []step{
				{after: 0, poll: failedPoll(FailureTransient, "timeout"), want: nil},
				{after: 1 * time.Minute, poll: failedPoll(FailureTransient, "timeout"), want: nil},
				{after: 2 * time.Minute, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 3 * time.Minute, poll: failedPoll(FailureTransient, "timeout"), want: nil},
				{after: 4 * time.Minute, poll: failedPoll(FailureTransient, "timeout"), want: nil},
			},
		},
		{
			// A 401/403 fires at once: waiting would not fix a wrong token.
			name: "auth failure fires immediately",
			steps: []step{
				{after: 0, poll: failedPoll(FailureAuth, "HTTP 401: invalid token"), want: []string{"firing poll_failing"},
					wantTransitions: []Transition{{Rule: PollFailing, State: Firing, At: at(0), Since: at(0), Failures: 1, Reason: "HTTP 401: invalid token"}}},
				{after: time.Minute, poll: failedPoll(FailureAuth, "HTTP 401: invalid token"), want: nil},
				{after: 2 * time.Minute, poll: active(counts(a, 10, 5, 0)), want: []string{"resolved poll_failing"},
					check: wantReason(0, "polling works again after 2 failed polls")},
			},
		},
		{
			// A 404 counts like a transient failure.
			name: "not found counts like transient",
			steps: []step{
				{after: 0, poll: failedPoll(FailureNotFound, "HTTP 404"), want: nil},
				{after: 1 * time.Minute, poll: failedPoll(FailureNotFound, "HTTP 404"), want: nil},
				{after: 2 * time.Minute, poll: failedPoll(FailureNotFound, "HTTP 404"), want: []string{"firing poll_failing"}},
			},
		},
		{
			// Zero settings mean the defaults: 3 failures and 6h.
			name: "zero settings use the defaults",
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 5*time.Hour + 59*time.Minute, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: 6 * time.Hour, poll: failedPoll(FailureTransient, "x"), want: nil},
				{after: 6*time.Hour + time.Minute, poll: failedPoll(FailureTransient, "x"), want: nil},
				{after: 6*time.Hour + 2*time.Minute, poll: failedPoll(FailureTransient, "x"), want: []string{"firing poll_failing"}},
				{after: 6*time.Hour + 3*time.Minute, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled", "resolved poll_failing"}},
			},
		},
		{
			// A per-watch override replaces the defaults.
			name:     "settings override the defaults",
			settings: Settings{StallAfter: time.Hour, FailuresBeforeAlert: 1},
			steps: []step{
				{after: 0, poll: active(counts(a, 10, 5, 0)), want: nil},
				{after: time.Hour, poll: active(counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
				{after: 2 * time.Hour, poll: failedPoll(FailureTransient, ""), want: []string{"firing poll_failing"},
					check: wantReason(0, "1 consecutive polls failed")},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runSequence(t, tt.settings, StudyState{}, tt.steps)
		})
	}
}

func TestEvaluateStalledResolvesWhenThresholdGrows(t *testing.T) {
	t.Parallel()
	const a = "https://a.example"
	state := runSequence(t, Settings{}, StudyState{}, []step{
		{after: 0, poll: observed(StatusActive, counts(a, 10, 5, 0)), want: nil},
		{after: 6 * time.Hour, poll: observed(StatusActive, counts(a, 10, 5, 0)), want: []string{"firing stalled"}},
	})
	runSequence(t, Settings{StallAfter: 12 * time.Hour}, state, []step{
		{after: 7 * time.Hour, poll: observed(StatusActive, counts(a, 10, 5, 0)), want: []string{"resolved stalled"},
			check: wantCause(0, CauseBelowThreshold, "allocation has been unchanged for 7h, less than the stall threshold of 12h")},
	})
}

func TestSettingsWithDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   Settings
		want Settings
	}{
		// Unset thresholds take the documented defaults.
		{"zero", Settings{}, Settings{StallAfter: 6 * time.Hour, FailuresBeforeAlert: 3}},
		// Set thresholds are kept.
		{"set", Settings{StallAfter: time.Hour, FailuresBeforeAlert: 5}, Settings{StallAfter: time.Hour, FailuresBeforeAlert: 5}},
		// One set threshold does not hide the other's default.
		{"partial", Settings{FailuresBeforeAlert: 1}, Settings{StallAfter: 6 * time.Hour, FailuresBeforeAlert: 1}},
		// Negative thresholds are meaningless and count as unset.
		{"negative", Settings{StallAfter: -time.Hour, FailuresBeforeAlert: -1}, Settings{StallAfter: 6 * time.Hour, FailuresBeforeAlert: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Fatalf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func cloneState(s StudyState) StudyState {
	s.URLs = slices.Clone(s.URLs)
	s.Open = slices.Clone(s.Open)
	return s
}

func TestEvaluateDoesNotMutateInputs(t *testing.T) {
	t.Parallel()
	const a, b, c = "https://a.example", "https://b.example", "https://c.example"
	tests := []struct {
		name string
		prev StudyState
		poll Poll
	}{
		// A successful poll that resolves, fires and reorders must leave its inputs alone.
		{
			name: "successful poll",
			prev: StudyState{
				URLs:       []URLCounts{counts(c, 10, 12, 0), counts(a, 10, 5, 0), counts(b, 10, 14, 1)},
				StallSince: at(0),
				Status:     StatusActive,
				Open: []OpenAlert{
					{Rule: PollFailing, Since: at(time.Hour)},
					{Rule: OverAllocation, ExternalURL: c, Since: at(0)},
					{Rule: OverCapacity, ExternalURL: c, Since: at(0)},
				},
				ConsecutiveFailures: 3,
			},
			poll: observed(StatusActive, counts(b, 10, 14, 5), counts(a, 10, 12, 0)),
		},
		// A failed poll that fires poll_failing must leave its inputs alone.
		{
			name: "failed poll",
			prev: StudyState{
				URLs:                []URLCounts{counts(b, 10, 5, 0), counts(a, 10, 12, 0)},
				StallSince:          at(0),
				Status:              "PAUSED",
				Open:                []OpenAlert{{Rule: OverAllocation, ExternalURL: a, Since: at(0)}},
				ConsecutiveFailures: 2,
			},
			poll: Poll{Failure: FailureTransient, Error: "timeout", Status: StatusActive, URLs: []URLCounts{counts(a, 1, 1, 1)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			prevCopy, pollCopy := cloneState(tt.prev), tt.poll
			pollCopy.URLs = slices.Clone(tt.poll.URLs)

			next, got := Evaluate(tt.prev, tt.poll, Settings{}, at(7*time.Hour))
			if len(got) == 0 {
				t.Fatal("the case should cause transitions")
			}
			if !reflect.DeepEqual(tt.prev, prevCopy) {
				t.Fatalf("prev changed:\n got %+v\nwant %+v", tt.prev, prevCopy)
			}
			if !reflect.DeepEqual(tt.poll, pollCopy) {
				t.Fatalf("poll changed:\n got %+v\nwant %+v", tt.poll, pollCopy)
			}
			// The returned state must not share memory with the inputs.
			for i := range next.URLs {
				next.URLs[i].Allocated = -1
			}
			for i := range next.Open {
				next.Open[i].Rule = "scribbled"
			}
			for _, tr := range got {
				if tr.Counts != nil {
					tr.Counts.Allocated = -1
				}
			}
			if !reflect.DeepEqual(tt.prev, prevCopy) || !reflect.DeepEqual(tt.poll, pollCopy) {
				t.Fatal("the result shares memory with the inputs")
			}
		})
	}
}

func TestEvaluateDeterministicOrder(t *testing.T) {
	t.Parallel()
	const a, b, c = "https://a.example", "https://b.example", "https://c.example"
	prev := StudyState{
		URLs:                []URLCounts{counts(a, 10, 12, 0), counts(b, 10, 5, 0), counts(c, 10, 5, 1)},
		StallSince:          at(0),
		Status:              StatusActive,
		ConsecutiveFailures: 5,
		Open: []OpenAlert{
			{Rule: PollFailing, Since: at(time.Hour)},
			{Rule: OverAllocation, ExternalURL: a, Since: at(0)},
			{Rule: OverCapacity, ExternalURL: a, Since: at(0)},
		},
	}
	urls := []URLCounts{counts(c, 10, 14, 2), counts(b, 10, 5, 3), counts(a, 10, 5, 0)}
	want := []string{
		"resolved poll_failing",
		"resolved over_capacity " + a,
		"resolved over_allocation " + a,
		"event capacity_increase " + b + " 0→3",
		"firing over_capacity " + c,
		"firing over_allocation " + c,
		"event capacity_increase " + c + " 1→2",
	}
	// Every order of the URLs in the poll, evaluated repeatedly (map order
	// varies between runs), gives the same transitions in the same order.
	orders := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	var first StudyState
	for i, order := range orders {
		poll := observed(StatusActive, urls[order[0]], urls[order[1]], urls[order[2]])
		for range 20 {
			next, got := Evaluate(prev, poll, Settings{}, at(2*time.Hour))
			if sum := summarizeAll(got); !slices.Equal(sum, want) {
				t.Fatalf("order %v: transitions\n got %q\nwant %q", order, sum, want)
			}
			if i == 0 {
				first = next
			}
			if !reflect.DeepEqual(next.Open, first.Open) {
				t.Fatalf("order %v: open alerts %+v, want %+v", order, next.Open, first.Open)
			}
		}
	}
	wantOpen := []OpenAlert{
		{Rule: OverCapacity, ExternalURL: c, Since: at(2 * time.Hour)},
		{Rule: OverAllocation, ExternalURL: c, Since: at(2 * time.Hour)},
	}
	if !reflect.DeepEqual(first.Open, wantOpen) {
		t.Fatalf("open alerts %+v, want %+v", first.Open, wantOpen)
	}
}

func BenchmarkEvaluate(b *testing.B) {
	urls := []URLCounts{
		counts("https://a.example", 100, 40, 2),
		counts("https://b.example", 100, 105, 10),
		counts("https://c.example", 50, 50, 0),
	}
	prev, _ := Evaluate(StudyState{}, observed(StatusActive, urls...), Settings{}, at(0))
	poll := observed(StatusActive, urls...)
	b.ReportAllocs()
	for b.Loop() {
		Evaluate(prev, poll, Settings{}, at(time.Hour))
	}
}
