package notify

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

const testStudyID = "60aca280709ee40ec37d4885"

var testAt = time.Date(2025, 3, 4, 12, 5, 0, 0, time.UTC)

// googleCounts is the documented sample's over-allocated URL: 12 allocated of
// 10, explained by 3 screen-out slots.
func googleCounts() *rules.URLCounts {
	return &rules.URLCounts{ExternalURL: "https://google.com", TotalAllocation: 10, Allocated: 12, CapacityIncrements: 3}
}

// urlAlert is a URL-level alert on the sample study.
func urlAlert(rule rules.Rule, state rules.TransitionState, counts *rules.URLCounts, lasted time.Duration) Alert {
	return Alert{
		StudyID:   testStudyID,
		StudyName: "Study about API's",
		Transition: rules.Transition{
			Rule: rule, State: state, ExternalURL: "https://google.com",
			At: testAt, Since: testAt.Add(-lasted), Counts: counts,
		},
	}
}

// studyAlert is a study-level alert on the sample study.
func studyAlert(rule rules.Rule, state rules.TransitionState, lasted time.Duration) Alert {
	return Alert{
		StudyID:    testStudyID,
		StudyName:  "Study about API's",
		Transition: rules.Transition{Rule: rule, State: state, At: testAt, Since: testAt.Add(-lasted)},
	}
}

// blocksJSON marshals blocks the way slack-go sends them.
func blocksJSON(t *testing.T, blocks []slack.Block) string {
	t.Helper()
	b, err := json.Marshal(blocks)
	if err != nil {
		t.Fatalf("marshalling blocks: %v", err)
	}
	return string(b)
}

// blockTexts decodes marshalled blocks into every text they hold, keyed by
// the kind of place it sits in, so limits can be checked per kind.
func blockTexts(t *testing.T, blocks []slack.Block) map[string][]string {
	t.Helper()
	var decoded []struct {
		Type     string                  `json:"type"`
		Text     *struct{ Text string }  `json:"text"`
		Fields   []struct{ Text string } `json:"fields"`
		Elements []struct{ Text string } `json:"elements"`
	}
	if err := json.Unmarshal([]byte(blocksJSON(t, blocks)), &decoded); err != nil {
		t.Fatalf("decoding blocks: %v", err)
	}
	out := map[string][]string{}
	for _, b := range decoded {
		if b.Text != nil {
			out[b.Type] = append(out[b.Type], b.Text.Text)
		}
		for _, f := range b.Fields {
			out["field"] = append(out["field"], f.Text)
		}
		for _, e := range b.Elements {
			out["context"] = append(out["context"], e.Text)
		}
	}
	return out
}

// checkLimits fails when a message breaks a Slack limit or holds invalid UTF-8.
func checkLimits(t *testing.T, r Rendered) {
	t.Helper()
	if len(r.Blocks) == 0 || len(r.Blocks) > 50 {
		t.Errorf("got %d blocks, want 1..50", len(r.Blocks))
	}
	if !utf8.ValidString(r.Text) {
		t.Errorf("text is not valid UTF-8")
	}
	limits := map[string]int{"header": 150, "section": 3000, "field": 2000, "context": 3000}
	for kind, texts := range blockTexts(t, r.Blocks) {
		for _, s := range texts {
			if n := textviz.Len(s); n == 0 || n > limits[kind] {
				t.Errorf("%s text has %d characters (UTF-16 units), want 1..%d", kind, n, limits[kind])
			}
			if !utf8.ValidString(s) {
				t.Errorf("%s text is not valid UTF-8: %q", kind, s)
			}
		}
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	beyond := &rules.URLCounts{ExternalURL: "https://google.com", TotalAllocation: 10, Allocated: 14, CapacityIncrements: 3}
	within := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), 2*time.Hour+5*time.Minute)
	within.Transition.WithinCapacity = true
	increase := urlAlert(rules.CapacityIncrease, rules.Event, googleCounts(), 0)
	increase.Transition.PreviousCapacityIncrements = 2
	stalledResolved := func(cause rules.Cause, reason string) Alert {
		a := studyAlert(rules.Stalled, rules.Resolved, 7*time.Hour)
		a.Transition.Cause, a.Transition.Reason = cause, reason
		return a
	}
	urlGone := urlAlert(rules.OverAllocation, rules.Resolved, &rules.URLCounts{TotalAllocation: 10, Allocated: 14, CapacityIncrements: 2}, time.Hour)
	urlGone.Transition.Cause = rules.CauseURLRemoved
	urlGone.Transition.Reason = "the URL is no longer in the study's progress"
	failing := studyAlert(rules.PollFailing, rules.Firing, 15*time.Minute)
	failing.Transition.Failures = 3
	failing.Transition.Reason = "prolific: 503 Service Unavailable"

	tests := []struct {
		name       string
		alert      Alert
		wantText   []string
		wantBlocks []string
		wantBar    bool
	}{
		{
			// Screen-outs explain the over-allocation: the documented google.com sample.
			name:       "over allocation within capacity",
			alert:      within,
			wantText:   []string{"Over allocation on https://google.com in “Study about API's”: 12 allocated of 10 (capacity 13 with 3 screen-out slots) — within screen-out capacity."},
			wantBlocks: []string{"12 allocated of 10", "within screen-out capacity", "2h5m"},
			wantBar:    true,
		},
		{
			// Screen-outs do not explain it.
			name:       "over allocation beyond capacity",
			alert:      urlAlert(rules.OverAllocation, rules.Firing, beyond, time.Hour),
			wantText:   []string{"🔴 Over allocation", "14 allocated of 10 (capacity 13 with 3 screen-out slots) — beyond screen-out capacity."},
			wantBlocks: []string{"14 allocated of 10", "beyond screen-out capacity", "1h"},
			wantBar:    true,
		},
		{
			// Resolution says what the numbers are now and how long it lasted.
			name:       "over allocation resolved",
			alert:      urlAlert(rules.OverAllocation, rules.Resolved, &rules.URLCounts{TotalAllocation: 20, Allocated: 12, CapacityIncrements: 3}, 2*time.Hour+5*time.Minute),
			wantText:   []string{"✅ Resolved: over allocation on https://google.com in “Study about API's”: now 12 allocated of 20 (capacity 23), lasted 2h5m."},
			wantBlocks: []string{"✅ Resolved: Over allocation — Study about API's", "12 of 20", "2h5m", "Lasted"},
			wantBar:    true,
		},
		{
			// The invariant is broken: how far over the capacity.
			name:       "over capacity firing",
			alert:      urlAlert(rules.OverCapacity, rules.Firing, beyond, 30*time.Minute),
			wantText:   []string{"🚨 Over capacity on https://google.com", "14 allocated, 1 over capacity 13 (10 + 3 screen-out slots)."},
			wantBlocks: []string{"14 of 10", "30m"},
			wantBar:    true,
		},
		{
			// Back within capacity.
			name:       "over capacity resolved",
			alert:      urlAlert(rules.OverCapacity, rules.Resolved, &rules.URLCounts{TotalAllocation: 10, Allocated: 13, CapacityIncrements: 3}, 3*time.Hour),
			wantText:   []string{"✅ Resolved: over capacity on https://google.com", "now 13 allocated of 10 (capacity 13), lasted 3h."},
			wantBlocks: []string{"13 of 10", "3h"},
			wantBar:    true,
		},
		{
			// A capacity rise is a one-off event with from → to.
			name:       "capacity increase event",
			alert:      increase,
			wantText:   []string{"📈 Capacity increased on https://google.com", "capacity increments 2 → 3 (capacity now 13, 12 allocated)."},
			wantBlocks: []string{"2 → 3", "Capacity increments"},
			wantBar:    true,
		},
		{
			// Stalled says for how long nothing moved.
			name:       "stalled firing",
			alert:      studyAlert(rules.Stalled, rules.Firing, 6*time.Hour+10*time.Minute),
			wantText:   []string{"Stalled: “Study about API's” — no allocation change for 6h10m."},
			wantBlocks: []string{"No allocation change for 6h10m"},
		},
		{
			// A URL that left the study resolves with the numbers last seen, not as if they were current.
			name:       "URL left the study",
			alert:      urlGone,
			wantText:   []string{"✅ Resolved: over allocation on https://google.com in “Study about API's”: last seen 14 allocated of 10 (capacity 12), lasted 1h — the URL is no longer in the study's progress."},
			wantBlocks: []string{"The URL left the study: last seen 14 allocated of 10 (capacity 12), lasted 1h."},
			wantBar:    true,
		},
		{
			// Stalled resolved by movement says how long it stalled and why it cleared.
			name:       "stalled resolved by movement",
			alert:      stalledResolved(rules.CauseMoved, "allocation moved after stalling for 7h"),
			wantText:   []string{"✅ Resolved: “Study about API's” is no longer stalled, lasted 7h — allocation moved after stalling for 7h."},
			wantBlocks: []string{"Allocation is moving again, lasted 7h.", "*Reason:* allocation moved after stalling for 7h"},
		},
		{
			// A paused study is not said to be moving again.
			name:       "stalled resolved by pausing",
			alert:      stalledResolved(rules.CauseInactive, "the study is no longer ACTIVE (status PAUSED)"),
			wantText:   []string{"is no longer stalled, lasted 7h — the study is no longer ACTIVE (status PAUSED)."},
			wantBlocks: []string{"The study is no longer active, lasted 7h."},
		},
		{
			// Nothing left to allocate.
			name:       "stalled resolved by filling up",
			alert:      stalledResolved(rules.CauseFull, "every URL is full"),
			wantBlocks: []string{"Every URL is full, lasted 7h."},
		},
		{
			// The study came back to ACTIVE: the clock restarted.
			name:       "stalled resolved by reactivation",
			alert:      stalledResolved(rules.CauseReactivated, "the study became ACTIVE again after being PAUSED"),
			wantBlocks: []string{"The study is active again, so the stall clock restarted, lasted 7h."},
		},
		{
			// A watch raised the threshold past the time without change.
			name:       "stalled resolved by a longer threshold",
			alert:      stalledResolved(rules.CauseBelowThreshold, "allocation has been unchanged for 7h, less than the stall threshold of 12h"),
			wantBlocks: []string{"Allocation has been unchanged for less than the stall threshold now set, lasted 7h."},
		},
		{
			// A resolution stored before causes existed gets the plain statement.
			name:       "stalled resolved without a cause",
			alert:      stalledResolved(rules.CauseCleared, "allocation moved again"),
			wantBlocks: []string{"No longer stalled, lasted 7h."},
		},
		{
			// Poll failures give the count and the last error.
			name:       "poll failing firing",
			alert:      failing,
			wantText:   []string{"⚠️ Polling “Study about API's” is failing: 3 consecutive failures — prolific: 503 Service Unavailable."},
			wantBlocks: []string{"3 consecutive failures", "prolific: 503 Service Unavailable", "Failing for*\n15m"},
		},
		{
			// Polling recovered.
			name:       "poll failing resolved",
			alert:      studyAlert(rules.PollFailing, rules.Resolved, 15*time.Minute),
			wantText:   []string{"✅ Resolved: polling “Study about API's” works again, lasted 15m."},
			wantBlocks: []string{"Polling Prolific works again, lasted 15m."},
		},
		{
			// A condition shorter than a minute is not "0m".
			name:       "resolved within a minute",
			alert:      studyAlert(rules.PollFailing, rules.Resolved, 20*time.Second),
			wantText:   []string{"lasted 20s."},
			wantBlocks: []string{"20s"},
		},
		{
			// A condition shorter than a second reads as under a minute.
			name:       "resolved at once",
			alert:      studyAlert(rules.PollFailing, rules.Resolved, 0),
			wantText:   []string{"lasted under a minute."},
			wantBlocks: []string{"just now"},
		},
		{
			// A rule this version does not know still renders.
			name:       "unknown rule",
			alert:      studyAlert("quota_exceeded", rules.Firing, time.Minute),
			wantText:   []string{"Quota exceeded in “Study about API's”"},
			wantBlocks: []string{"quota_exceeded"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := Render(tt.alert)
			for _, want := range tt.wantText {
				if !strings.Contains(r.Text, want) {
					t.Errorf("text %q does not contain %q", r.Text, want)
				}
			}
			blocks := blocksJSON(t, r.Blocks)
			for _, want := range tt.wantBlocks {
				if !strings.Contains(blocks, jsonFragment(want)) {
					t.Errorf("blocks do not contain %q:\n%s", want, blocks)
				}
			}
			for _, want := range []string{
				jsonFragment("<https://app.prolific.com/researcher/workspaces/studies/" + testStudyID + "|Study about API's>"),
				"Study `" + testStudyID + "`",
				"Rule `" + string(tt.alert.Transition.Rule) + "`",
			} {
				if !strings.Contains(blocks, want) {
					t.Errorf("blocks do not contain %q:\n%s", want, blocks)
				}
			}
			hasURL := strings.Contains(blocks, jsonFragment("<https://google.com|https://google.com>"))
			if wantURL := tt.alert.Transition.ExternalURL != ""; hasURL != wantURL {
				t.Errorf("external URL shown = %v for rule %s", hasURL, tt.alert.Transition.Rule)
			}
			if got := strings.Contains(blocks, "▓"); got != tt.wantBar {
				t.Errorf("progress bar shown = %v, want %v", got, tt.wantBar)
			}
			checkLimits(t, r)
		})
	}
}

// jsonFragment is s as it appears inside a JSON string.
func jsonFragment(s string) string {
	b, _ := json.Marshal(s)
	return strings.TrimSuffix(strings.TrimPrefix(string(b), `"`), `"`)
}

func TestRenderLimitsAndEscaping(t *testing.T) {
	t.Parallel()
	long := func(unit string) string { return strings.Repeat(unit, 10_000/utf8.RuneCountInString(unit)) }
	tests := []struct {
		name      string
		studyName string
		url       string
		reason    string
	}{
		{name: "ascii name of 10,000 characters", studyName: long("a"), url: "https://google.com"},
		{name: "accented name cut on a rune boundary", studyName: long("é"), url: "https://google.com"},
		{name: "emoji name cut on a rune boundary", studyName: long("🙂"), url: "https://google.com"},
		{name: "markup characters that expand when escaped", studyName: long("&<>"), url: "https://x.test/?" + long("&"), reason: long("<&>")},
		{name: "URL of 10,000 characters", studyName: "Short", url: "https://example.com/" + long("p")},
		{name: "newlines and invalid UTF-8", studyName: "line one\nline two\xff\xfe", url: "https://example.com/\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, a := range []Alert{
				urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour),
				urlAlert(rules.OverCapacity, rules.Resolved, googleCounts(), time.Hour),
				studyAlert(rules.PollFailing, rules.Firing, time.Hour),
			} {
				a.StudyName = tt.studyName
				a.Transition.ExternalURL = tt.url
				a.Transition.Reason = tt.reason
				r := Render(a)
				checkLimits(t, r)
				checkLimits(t, RenderResolvedOriginal(a, a))
				if strings.ContainsAny(stripMarkup(r.Text), "<>") {
					t.Errorf("text has unescaped markup: %.200q", r.Text)
				}
				if strings.Contains(r.Text, "\n") && !strings.Contains(tt.studyName, "\n") {
					t.Errorf("text has a line break: %.200q", r.Text)
				}
			}
		})
	}
}

// stripMarkup removes what Render itself writes as mrkdwn markup, leaving
// only text that came from the alert.
func stripMarkup(s string) string {
	return strings.NewReplacer("&lt;", "", "&gt;", "", "&amp;", "").Replace(s)
}

func TestRenderEscapesUserText(t *testing.T) {
	t.Parallel()
	a := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour)
	a.StudyName = "A & B <!channel> <https://evil.test|click>"
	a.Transition.ExternalURL = "https://example.com/?a=1&b=<2>|x"
	r := Render(a)
	blocks := blocksJSON(t, r.Blocks)
	texts := blockTexts(t, r.Blocks)
	mrkdwn := strings.Join(append(append(texts["section"], texts["field"]...), texts["context"]...), "\n")
	for _, raw := range []string{"<!channel>", "<https://evil.test"} {
		if strings.Contains(r.Text, raw) || strings.Contains(mrkdwn, raw) {
			t.Errorf("user text %q reached mrkdwn unescaped", raw)
		}
	}
	for _, want := range []string{
		"A &amp; B &lt;!channel&gt; &lt;https://evil.test|click&gt;",
		"<https://example.com/?a=1&amp;b=&lt;2&gt;%7Cx|https://example.com/?a=1&amp;b=&lt;2&gt;|x>",
	} {
		if !strings.Contains(blocks, jsonFragment(want)) {
			t.Errorf("blocks do not contain %q:\n%s", want, blocks)
		}
	}
	if !strings.Contains(r.Text, "A &amp; B &lt;!channel&gt;") {
		t.Errorf("text %q does not escape the study name", r.Text)
	}
	header := blockTexts(t, r.Blocks)["header"][0]
	if !strings.Contains(header, "A & B <!channel>") {
		t.Errorf("header %q should show the plain-text name unescaped", header)
	}
}

func TestRenderLinksOnlyWebURLs(t *testing.T) {
	t.Parallel()
	a := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour)
	a.Transition.ExternalURL = "javascript:alert(1)"
	blocks := blocksJSON(t, Render(a).Blocks)
	if strings.Contains(blocks, jsonFragment("<javascript:")) {
		t.Errorf("a non-web URL became a link:\n%s", blocks)
	}
	if !strings.Contains(blocks, "javascript:alert(1)") {
		t.Errorf("the URL is not shown as text:\n%s", blocks)
	}
}

func TestRenderResolvedOriginal(t *testing.T) {
	t.Parallel()
	firing := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), 0)
	resolved := urlAlert(rules.OverAllocation, rules.Resolved,
		&rules.URLCounts{TotalAllocation: 20, Allocated: 12, CapacityIncrements: 3}, 2*time.Hour+5*time.Minute)
	r := RenderResolvedOriginal(firing, resolved)
	for _, want := range []string{"✅ Resolved, lasted 2h5m", "12 allocated of 10", "Study about API's"} {
		if !strings.Contains(r.Text, want) {
			t.Errorf("text %q does not contain %q", r.Text, want)
		}
	}
	blocks := blocksJSON(t, r.Blocks)
	for _, want := range []string{
		"~Over allocation on https://google.com",
		"*When fired*\\n12 allocated of 10 (capacity 13)",
		"*At resolution*\\n12 allocated of 20 (capacity 23)",
		"*Lasted*\\n2h5m",
		"resolved",
	} {
		if !strings.Contains(blocks, want) {
			t.Errorf("blocks do not contain %q:\n%s", want, blocks)
		}
	}
	checkLimits(t, r)

	// A URL that left the study shows its last counts as such.
	resolved.Transition.Cause = rules.CauseURLRemoved
	blocks = blocksJSON(t, RenderResolvedOriginal(firing, resolved).Blocks)
	if want := "*Last seen*\\n12 allocated of 20 (capacity 23)"; !strings.Contains(blocks, want) {
		t.Errorf("blocks do not contain %q:\n%s", want, blocks)
	}
}

func TestMetadata(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		alert Alert
		want  map[string]any
	}{
		{
			// URL rules carry their external URL.
			name:  "url rule",
			alert: urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour),
			want:  map[string]any{"study_id": testStudyID, "rule": "over_allocation", "external_url": "https://google.com", "state": "firing"},
		},
		{
			// Events use the event state.
			name:  "event",
			alert: urlAlert(rules.CapacityIncrease, rules.Event, googleCounts(), 0),
			want:  map[string]any{"study_id": testStudyID, "rule": "capacity_increase", "external_url": "https://google.com", "state": "event"},
		},
		{
			// Study rules carry "" even if a URL slipped into the transition.
			name: "study rule",
			alert: func() Alert {
				a := studyAlert(rules.Stalled, rules.Resolved, time.Hour)
				a.Transition.ExternalURL = "https://google.com"
				return a
			}(),
			want: map[string]any{"study_id": testStudyID, "rule": "stalled", "external_url": "", "state": "resolved"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Metadata(tt.alert)
			if got.EventType != "taskflow_alert" {
				t.Errorf("event type = %q, want taskflow_alert", got.EventType)
			}
			if !maps.Equal(got.EventPayload, tt.want) {
				t.Errorf("payload = %v, want %v", got.EventPayload, tt.want)
			}
		})
	}
}

func TestAlertJSON(t *testing.T) {
	t.Parallel()
	a := urlAlert(rules.OverAllocation, rules.Firing, googleCounts(), time.Hour)
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatalf("marshalling: %v", err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatalf("unmarshalling: %v", err)
	}
	for _, k := range []string{"study_id", "study_name", "transition"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("JSON %s has no key %q", b, k)
		}
	}
	var back Alert
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if back.Transition.Counts == nil || *back.Transition.Counts != *a.Transition.Counts || !back.Transition.At.Equal(a.Transition.At) {
		t.Errorf("round trip = %+v, want %+v", back, a)
	}
}

func TestHumanDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		d    time.Duration
		want string
	}{
		{name: "zero", d: 0, want: "just now"},                                // Nothing to measure.
		{name: "under a second", d: 900 * time.Millisecond, want: "just now"}, // Nothing worth a number.
		{name: "under a minute", d: 59 * time.Second, want: "59s"},            // Seconds, not rounded up to 1m.
		{name: "negative from clock skew", d: -time.Hour, want: "just now"},   // Never "-1h".
		{name: "minutes", d: 45 * time.Minute, want: "45m"},                   // No hours part.
		{name: "rounded to minutes", d: 2*time.Hour + 4*time.Minute + 40*time.Second, want: "2h5m"},
		{name: "whole hours", d: 3 * time.Hour, want: "3h"},               // No "0m".
		{name: "days", d: 26*time.Hour + 10*time.Minute, want: "1d2h10m"}, // Days, hours and minutes.
		{name: "whole days", d: 48 * time.Hour, want: "2d"},               // No "0h".
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := humanDuration(tt.d); got != tt.want {
				t.Errorf("humanDuration(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}
