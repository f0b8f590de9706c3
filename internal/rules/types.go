// Package rules decides which alerts a Taskflow study's poll opens, resolves or
// reports. It is pure: every function takes the previous state, this poll's
// outcome and the current time, and returns the next state and the
// transitions to notify. Nothing here reads a clock or does I/O, so the rule
// semantics can be pinned down by table tests alone.
package rules

import "time"

// Rule names one alert rule. The values are part of the Slack message
// metadata contract (event_payload.rule) and are stored in Postgres.
type Rule string

// The alert rules (README.md, "What it alerts on").
const (
	// OverAllocation: a URL's allocated exceeds its total_allocation.
	OverAllocation Rule = "over_allocation"
	// OverCapacity: a URL's allocated exceeds total_allocation + capacity_increments.
	OverCapacity Rule = "over_capacity"
	// CapacityIncrease: a URL's capacity_increments rose since the previous observation.
	CapacityIncrease Rule = "capacity_increase"
	// Stalled: no URL's allocated changed for at least the stall-after duration.
	Stalled Rule = "stalled"
	// PollFailing: the study could not be polled several times in a row (or auth failed).
	PollFailing Rule = "poll_failing"
)

// TransitionState says what a transition does to an alert. The values are
// part of the Slack message metadata contract (event_payload.state).
type TransitionState string

// Transition states.
const (
	Firing   TransitionState = "firing"
	Resolved TransitionState = "resolved"
	Event    TransitionState = "event"
)

// Cause says why an alert resolved, so that a message can word the
// resolution right without parsing Reason. It is stored with the transition
// in the outbox; transitions stored before it existed read as CauseCleared.
type Cause string

// Resolution causes.
const (
	// CauseCleared: the condition no longer holds.
	CauseCleared Cause = ""
	// CauseURLRemoved: the URL left the study's progress list; the
	// transition's Counts are the last ones seen, not current ones.
	CauseURLRemoved Cause = "url_removed"
	// CauseMoved: Stalled ended because allocation moved.
	CauseMoved Cause = "moved"
	// CauseInactive: Stalled ended because the study left ACTIVE.
	CauseInactive Cause = "inactive"
	// CauseFull: Stalled ended because every URL is full.
	CauseFull Cause = "full"
	// CauseReactivated: Stalled ended because the study became ACTIVE again,
	// which restarts the stall clock.
	CauseReactivated Cause = "reactivated"
	// CauseBelowThreshold: Stalled ended because the stall threshold now
	// exceeds how long allocation has been unchanged (a watch raised it).
	CauseBelowThreshold Cause = "below_threshold"
)

// StatusActive is the Prolific study status in which recruitment runs. Other
// statuses are kept as data; only ACTIVE gates the stalled rule.
const StatusActive = "ACTIVE"

// URLCounts is one external URL's allocation as Prolific reported it.
type URLCounts struct {
	ExternalURL        string `json:"external_url"`
	TotalAllocation    int    `json:"total_allocation"`
	Allocated          int    `json:"allocated"`
	CapacityIncrements int    `json:"capacity_increments"`
}

// Capacity is the most participants the URL may legitimately receive:
// its allocation plus the slots that screen-outs added.
func (c URLCounts) Capacity() int { return c.TotalAllocation + c.CapacityIncrements }

// OpenAlert is an alert that has fired and not yet resolved. At most one is
// open per (rule, external URL) of a study; ExternalURL is "" for study-level rules.
type OpenAlert struct {
	Rule        Rule      `json:"rule"`
	ExternalURL string    `json:"external_url"`
	Since       time.Time `json:"since"`
}

// StudyState is everything the rules remember about a study between polls.
// The store persists it; the rules only read and return it.
type StudyState struct {
	// URLs is the last successful observation, nil before the first one.
	URLs []URLCounts
	// StallSince is when allocation last moved, when the first observation
	// was made, or when the study last became ACTIVE, whichever is latest.
	// Zero before the first observation.
	StallSince time.Time
	// Status is the last known Prolific study status ("" when unknown).
	Status string
	// ConsecutiveFailures counts failed polls since the last successful one.
	ConsecutiveFailures int
	// Open lists the alerts currently firing.
	Open []OpenAlert
}

// Bounds of a stall-after threshold, wherever it is set (STALL_AFTER, a
// watch's stall=, --stall-after). Polls run every few minutes, so a shorter
// threshold would fire on noise; a longer one is no longer an alert.
const (
	MinStallAfter = 15 * time.Minute
	MaxStallAfter = 30 * 24 * time.Hour
)

// Settings are the thresholds that apply to one study.
type Settings struct {
	// StallAfter is how long allocation may stay unchanged before Stalled fires.
	StallAfter time.Duration
	// FailuresBeforeAlert is how many consecutive failed polls fire PollFailing.
	FailuresBeforeAlert int
}

// FailureKind classifies a failed poll for the PollFailing rule.
type FailureKind string

// Failure kinds.
const (
	// FailureNone means the poll succeeded.
	FailureNone FailureKind = ""
	// FailureTransient covers timeouts, 429, 5xx, malformed bodies and the like.
	FailureTransient FailureKind = "transient"
	// FailureAuth is a 401/403: the token is wrong, so PollFailing fires at once.
	FailureAuth FailureKind = "auth"
	// FailureNotFound is a 404: the study is gone or no longer a Taskflow study.
	FailureNotFound FailureKind = "not_found"
)

// Poll is the outcome of one poll of a study.
type Poll struct {
	// Failure is FailureNone for a successful poll.
	Failure FailureKind
	// Error describes a failed poll in words for the alert message.
	Error string
	// URLs is the observed progress of a successful poll.
	URLs []URLCounts
	// Status is the study status seen by this poll ("" when not fetched).
	Status string
}

// Transition is one change to notify: an alert firing or resolving, or a
// one-off event. It is stored in the outbox as JSON and rendered for Slack.
type Transition struct {
	Rule        Rule            `json:"rule"`
	ExternalURL string          `json:"external_url"`
	State       TransitionState `json:"state"`
	// At is the time of the poll that caused the transition.
	At time.Time `json:"at"`
	// Since is when the alert started firing (for firing: when the condition
	// began, for resolved: when it fired); for Stalled it is when allocation last moved.
	Since time.Time `json:"since"`
	// Counts is the URL's allocation at the transition (URL-level rules only).
	Counts *URLCounts `json:"counts,omitempty"`
	// PreviousCapacityIncrements is the value before a CapacityIncrease event.
	PreviousCapacityIncrements int `json:"previous_capacity_increments,omitempty"`
	// WithinCapacity says, for OverAllocation, whether screen-out capacity explains it.
	WithinCapacity bool `json:"within_capacity,omitempty"`
	// Failures is the consecutive failure count for PollFailing.
	Failures int `json:"failures,omitempty"`
	// Reason explains the transition in words (the poll error, why an alert resolved).
	Reason string `json:"reason,omitempty"`
	// Cause says why a resolved alert resolved (CauseCleared otherwise).
	Cause Cause `json:"cause,omitempty"`
}
