// Package notify turns alert transitions into Slack messages and delivers
// them: it renders Block Kit with a plain-text fallback, sends through a bot
// token, an incoming webhook or a JSON log, and classifies delivery errors so
// that the outbox dispatcher knows whether to retry.
package notify

import (
	"cmp"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// Alert is what one outbox row carries: the transition to notify and enough
// about the study to render it without another lookup, so a message can be
// sent after a restart exactly as it was decided.
type Alert struct {
	StudyID    string           `json:"study_id"`
	StudyName  string           `json:"study_name"`
	Transition rules.Transition `json:"transition"`
}

// Rendered is a message ready for Slack. Text is the fallback that
// notifications, screen readers and the log show; Blocks carry the detail.
type Rendered struct {
	Text   string
	Blocks []slack.Block
}

// MetadataEventType is the Slack message metadata event_type of every alert
// message, so other Slack apps can find alerts without parsing text.
const MetadataEventType = "taskflow_alert"

// Slack Block Kit limits, and the budgets that keep each block under them
// even when a study name, URL or error text is absurdly long.
const (
	maxBlocks        = 50
	maxHeaderChars   = 150
	maxSectionChars  = 3000
	maxFieldChars    = 2000
	maxFields        = 10
	maxContextItems  = 10
	maxNameChars     = 150
	maxURLLabelChars = 120
	maxURLTextChars  = 200
	maxLinkChars     = 1000
	maxReasonChars   = 500
	maxIDChars       = 64
	maxStruckChars   = 2000
	progressBarWidth = 20
)

// prolificStudyBase is where a researcher opens a study in the Prolific app.
const prolificStudyBase = "https://app.prolific.com/researcher/workspaces/studies/"

// studyURL links a study id to its page in the Prolific app.
func studyURL(id string) string {
	return prolificStudyBase + url.PathEscape(id)
}

// Render builds the Slack message for one transition.
func Render(a Alert) Rendered {
	c := describe(a, escapeMrkdwn)
	header := c.emoji + " " + c.title
	if a.Transition.State == rules.Resolved {
		header = c.emoji + " Resolved: " + c.title
	}
	blocks := []slack.Block{
		headerBlock(header + " — " + displayName(a)),
		sectionBlock(identityText(a)),
	}
	var summary strings.Builder
	summary.WriteString(c.detail)
	if c.reason != "" {
		summary.WriteString("\n*Reason:* " + c.reason)
	}
	blocks = append(blocks, sectionBlock(summary.String()))
	if f := fieldsBlock(c.fields); f != nil {
		blocks = append(blocks, f)
	}
	if bar := progressText(a.Transition.Counts); bar != "" {
		blocks = append(blocks, sectionBlock(bar))
	}
	blocks = append(blocks, contextBlock(a, string(a.Transition.State), a.Transition.At))
	return Rendered{Text: c.sentence, Blocks: capBlocks(blocks)}
}

// RenderResolvedOriginal builds the replacement for the firing message once
// its alert resolved: the original summary struck through, the numbers at
// firing and at resolution, and how long it lasted, so the channel history
// no longer shows an open problem.
func RenderResolvedOriginal(firing, resolved Alert) Rendered {
	fc := describe(firing, escapeMrkdwn)
	rc := describe(resolved, escapeMrkdwn)
	lasted := resolvedDuration(firing, resolved)

	text := "✅ Resolved"
	if lasted != "" {
		text += ", " + lastedPhrase(lasted)
	}
	text += " — was: " + stripEmoji(fc.sentence, fc.emoji)

	var body strings.Builder
	struck := textviz.Truncate(strings.ReplaceAll(stripEmoji(fc.sentence, fc.emoji), "~", ""), maxStruckChars)
	body.WriteString("~" + struck + "~\n")
	body.WriteString("✅ Resolved")
	if lasted != "" {
		body.WriteString(", " + lastedPhrase(lasted))
	}
	body.WriteString(".")
	if rc.reason != "" {
		body.WriteString("\n*Reason:* " + rc.reason)
	}

	var fields []field
	if c := firing.Transition.Counts; c != nil {
		fields = append(fields, field{"When fired", countsSummary(*c)})
	}
	if c := resolved.Transition.Counts; c != nil {
		label := "At resolution"
		if resolved.Transition.Cause == rules.CauseURLRemoved {
			label = "Last seen"
		}
		fields = append(fields, field{label, countsSummary(*c)})
	}
	if lasted != "" {
		fields = append(fields, field{"Lasted", lasted})
	}

	blocks := []slack.Block{
		headerBlock("✅ Resolved: " + fc.title + " — " + displayName(firing)),
		sectionBlock(identityText(firing)),
		sectionBlock(body.String()),
	}
	if f := fieldsBlock(fields); f != nil {
		blocks = append(blocks, f)
	}
	counts := resolved.Transition.Counts
	if counts == nil {
		counts = firing.Transition.Counts
	}
	if bar := progressText(counts); bar != "" {
		blocks = append(blocks, sectionBlock(bar))
	}
	blocks = append(blocks, contextBlock(firing, string(rules.Resolved), resolved.Transition.At))
	return Rendered{Text: text, Blocks: capBlocks(blocks)}
}

// Metadata is the Slack message metadata of an alert message. Its shape is a
// fixed interface: other tools read event_payload, so the keys never change
// and external_url is "" for study-level rules.
func Metadata(a Alert) slack.SlackMetadata {
	return slack.SlackMetadata{
		EventType: MetadataEventType,
		EventPayload: map[string]any{
			"study_id":     a.StudyID,
			"rule":         string(a.Transition.Rule),
			"external_url": metadataURL(a.Transition),
			"state":        string(a.Transition.State),
		},
	}
}

// metadataURL is the transition's external URL, or "" for study-level rules
// even if a caller filled one in.
func metadataURL(t rules.Transition) string {
	if isStudyRule(t.Rule) {
		return ""
	}
	return t.ExternalURL
}

// isStudyRule reports whether rule applies to a whole study rather than one URL.
func isStudyRule(r rules.Rule) bool {
	return r == rules.Stalled || r == rules.PollFailing
}

// field is one label/value pair of a fields section.
type field struct {
	label, value string
}

// content is what a transition says, computed once and laid out both as the
// fallback text and as blocks. User-provided parts are already escaped with
// the escape function describe was given.
type content struct {
	emoji    string
	title    string
	sentence string // the whole story in one line, for Text
	detail   string // the story without the study name and URL, for blocks
	reason   string // escaped, truncated reason, or ""
	fields   []field
}

// describe writes the words for every rule and state. Unknown rules and
// states get a generic description rather than a panic, because the outbox
// may hold rows written by a newer version.
func describe(a Alert, esc func(string) string) content {
	t := a.Transition
	name := "“" + esc(textviz.Truncate(displayName(a), maxNameChars)) + "”"
	where := "in " + name
	if u := clean(t.ExternalURL); u != "" && !isStudyRule(t.Rule) {
		where = "on " + esc(textviz.Truncate(u, maxURLTextChars)) + " in " + name
	}
	dur := ""
	if !t.Since.IsZero() {
		dur = humanDuration(t.At.Sub(t.Since))
	}
	reason := ""
	if r := clean(t.Reason); r != "" {
		reason = esc(textviz.Truncate(r, maxReasonChars))
	}

	c := content{title: ruleTitle(t.Rule), reason: reason}
	n := t.Counts
	var numbers string // the numbers phrase shared by sentence and detail
	var tail string    // what follows the numbers

	switch {
	case t.Rule == rules.OverAllocation && t.State == rules.Firing:
		c.emoji = "🔴"
		tail = " — beyond screen-out capacity."
		if t.WithinCapacity {
			c.emoji = "🟡"
			tail = " — within screen-out capacity."
		}
		if n != nil {
			numbers = fmt.Sprintf("%d allocated of %d (capacity %d with %s)",
				n.Allocated, n.TotalAllocation, n.Capacity(), plural(n.CapacityIncrements, "screen-out slot"))
		}
		c.fields = urlFields(n, "Firing for", dur)
	case t.Rule == rules.OverCapacity && t.State == rules.Firing:
		c.emoji = "🚨"
		tail = "."
		if n != nil {
			numbers = fmt.Sprintf("%d allocated, %d over capacity %d (%d + %s)",
				n.Allocated, n.Allocated-n.Capacity(), n.Capacity(), n.TotalAllocation,
				plural(n.CapacityIncrements, "screen-out slot"))
		}
		c.fields = urlFields(n, "Firing for", dur)
	case t.Rule == rules.CapacityIncrease:
		c.emoji = "📈"
		tail = "."
		if n != nil {
			numbers = fmt.Sprintf("capacity increments %d → %d (capacity now %d, %d allocated)",
				t.PreviousCapacityIncrements, n.CapacityIncrements, n.Capacity(), n.Allocated)
			c.fields = append(urlFields(n, "", ""), field{"Capacity increments",
				fmt.Sprintf("%d → %d", t.PreviousCapacityIncrements, n.CapacityIncrements)})
		}
	case t.Rule == rules.Stalled && t.State == rules.Firing:
		c.emoji = "⏸️"
		noChange := "no allocation change"
		if dur != "" {
			noChange += " for " + dur
			c.fields = []field{{"No allocation change for", dur}}
		}
		c.sentence = fmt.Sprintf("%s Stalled: %s — %s.", c.emoji, name, noChange)
		c.detail = capitalize(noChange) + " while the study is active."
		return c
	case t.Rule == rules.PollFailing && t.State == rules.Firing:
		c.emoji = "⚠️"
		failures := plural(t.Failures, "consecutive failure")
		c.sentence = fmt.Sprintf("%s Polling %s is failing: %s", c.emoji, name, failures)
		if reason != "" {
			c.sentence += " — " + reason
		}
		c.sentence += "."
		c.detail = fmt.Sprintf("Polling Prolific failed: %s.", failures)
		c.fields = []field{{"Consecutive failures", strconv.Itoa(t.Failures)}}
		if dur != "" {
			c.fields = append(c.fields, field{"Failing for", dur})
		}
		return c
	case t.State == rules.Resolved:
		return describeResolved(c, t, name, where, dur)
	default:
		c.emoji = "ℹ️"
		if t.State == rules.Firing {
			c.emoji = "🔴"
		}
		tail = "."
		c.fields = urlFields(n, "", "")
	}

	c.sentence = fmt.Sprintf("%s %s %s", c.emoji, c.title, where)
	if numbers != "" {
		c.sentence += ": " + numbers
		c.detail = capitalize(numbers)
	} else {
		c.detail = c.title
	}
	c.sentence += tail
	c.detail += tail
	return c
}

// describeResolved words every resolved transition: what cleared, the numbers
// now, and how long the condition lasted.
func describeResolved(c content, t rules.Transition, name, where, dur string) content {
	c.emoji = "✅"
	lasted := ""
	if dur != "" {
		lasted = lastedPhrase(dur)
	}
	var what, detail string
	switch t.Rule {
	case rules.Stalled:
		what = name + " is no longer stalled"
		detail = stallEnded(t.Cause)
	case rules.PollFailing:
		what = "polling " + name + " works again"
		detail = "Polling Prolific works again"
	default:
		what = lowerFirst(c.title) + " " + where
		detail = "Cleared"
		if t.Cause == rules.CauseURLRemoved {
			detail = "The URL left the study"
		}
		if n := t.Counts; n != nil {
			numbers := countsAtResolution(t) + " " + countsSummary(*n)
			what += ": " + numbers
			detail += ": " + numbers
		}
	}
	c.sentence = "✅ Resolved: " + what
	c.detail = detail
	if lasted != "" {
		c.sentence += ", " + lasted
		c.detail += ", " + lasted
	}
	if c.reason != "" {
		c.sentence += " — " + c.reason
	}
	c.sentence += "."
	c.detail += "."
	c.fields = urlFields(t.Counts, "Lasted", dur)
	return c
}

// stallEnded words why a stalled alert ended. Transitions stored before
// causes existed carry none and get the plain statement.
func stallEnded(cause rules.Cause) string {
	switch cause {
	case rules.CauseMoved:
		return "Allocation is moving again"
	case rules.CauseInactive:
		return "The study is no longer active"
	case rules.CauseFull:
		return "Every URL is full"
	case rules.CauseReactivated:
		return "The study is active again, so the stall clock restarted"
	case rules.CauseBelowThreshold:
		return "Allocation has been unchanged for less than the stall threshold now set"
	default:
		return "No longer stalled"
	}
}

// countsAtResolution says whether a resolved transition's counts are
// current or, for a URL that left the study, the last ones seen.
func countsAtResolution(t rules.Transition) string {
	if t.Cause == rules.CauseURLRemoved {
		return "last seen"
	}
	return "now"
}

// urlFields lays out a URL's numbers, plus a duration field when label and
// dur are both set.
func urlFields(n *rules.URLCounts, label, dur string) []field {
	var fs []field
	if n != nil {
		fs = append(fs,
			field{"Allocated", fmt.Sprintf("%d of %d", n.Allocated, n.TotalAllocation)},
			field{"Capacity", fmt.Sprintf("%d (%d + %s)", n.Capacity(), n.TotalAllocation,
				plural(n.CapacityIncrements, "screen-out slot"))},
		)
	}
	if label != "" && dur != "" {
		fs = append(fs, field{label, dur})
	}
	return fs
}

// countsSummary is a URL's numbers in a few words.
func countsSummary(n rules.URLCounts) string {
	return fmt.Sprintf("%d allocated of %d (capacity %d)", n.Allocated, n.TotalAllocation, n.Capacity())
}

// ruleTitle names a rule for people.
func ruleTitle(r rules.Rule) string {
	switch r {
	case rules.OverAllocation:
		return "Over allocation"
	case rules.OverCapacity:
		return "Over capacity"
	case rules.CapacityIncrease:
		return "Capacity increased"
	case rules.Stalled:
		return "Stalled"
	case rules.PollFailing:
		return "Polling failing"
	}
	s := strings.ReplaceAll(clean(string(r)), "_", " ")
	if s == "" {
		return "Alert"
	}
	return capitalize(textviz.Truncate(s, 40))
}

// displayName is the study's name, or its id when the name is unknown.
func displayName(a Alert) string {
	if n := clean(a.StudyName); n != "" {
		return n
	}
	if id := clean(a.StudyID); id != "" {
		return "Study " + id
	}
	return "Unnamed study"
}

// identityText is the mrkdwn that says which study (linked to Prolific) and,
// for URL rules, which external URL.
func identityText(a Alert) string {
	name := escapeMrkdwn(textviz.Truncate(displayName(a), maxNameChars))
	s := "*" + name + "*"
	if id := clean(a.StudyID); id != "" && textviz.Len(id) <= maxIDChars {
		s = "*" + link(studyURL(id), name) + "*"
	}
	if u := clean(a.Transition.ExternalURL); u != "" && !isStudyRule(a.Transition.Rule) {
		s += "\nExternal URL: " + link(u, escapeMrkdwn(textviz.Truncate(u, maxURLLabelChars)))
	}
	return s
}

// link writes a mrkdwn link to target labelled with the already escaped
// label. Targets that are not http(s) or too long to fit are shown as the
// label alone, so a message never carries a broken or unsafe link.
func link(target, label string) string {
	lower := strings.ToLower(target)
	if !strings.HasPrefix(lower, "https://") && !strings.HasPrefix(lower, "http://") {
		return label
	}
	t := escapeMrkdwn(target)
	t = strings.NewReplacer("|", "%7C", " ", "%20").Replace(t)
	if textviz.Len(t) > maxLinkChars {
		return label
	}
	return "<" + t + "|" + label + ">"
}

// progressText draws allocated against capacity, or "" without counts.
func progressText(n *rules.URLCounts) string {
	if n == nil {
		return ""
	}
	bar := textviz.ProgressBar(n.Allocated, n.Capacity(), progressBarWidth)
	s := fmt.Sprintf("`%s` %d / %d", bar, n.Allocated, n.Capacity())
	if n.Capacity() > 0 {
		s += fmt.Sprintf(" (%d%% of capacity)", n.Allocated*100/n.Capacity())
	}
	return s
}

// headerBlock is a plain-text header clipped to Slack's limit.
func headerBlock(text string) slack.Block {
	return slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, textviz.Truncate(clean(text), maxHeaderChars), true, false))
}

// sectionBlock is a mrkdwn section clipped to Slack's limit.
func sectionBlock(text string) slack.Block {
	return slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, textviz.Truncate(text, maxSectionChars), false, false), nil, nil)
}

// fieldsBlock lays out fields two to a row, or returns nil without any.
func fieldsBlock(fs []field) slack.Block {
	if len(fs) == 0 {
		return nil
	}
	fs = fs[:min(len(fs), maxFields)]
	objs := make([]*slack.TextBlockObject, 0, len(fs))
	for _, f := range fs {
		text := textviz.Truncate("*"+f.label+"*\n"+f.value, maxFieldChars)
		objs = append(objs, slack.NewTextBlockObject(slack.MarkdownType, text, false, false))
	}
	return slack.NewSectionBlock(nil, objs, nil)
}

// contextBlock names the study id, the rule and the state, and when it happened.
func contextBlock(a Alert, state string, at time.Time) slack.Block {
	id := strings.ReplaceAll(escapeMrkdwn(textviz.Truncate(clean(a.StudyID), maxIDChars)), "`", "")
	items := []string{
		"Study `" + cmp.Or(id, "unknown") + "`",
		"Rule `" + strings.ReplaceAll(escapeMrkdwn(textviz.Truncate(clean(string(a.Transition.Rule)), maxIDChars)), "`", "") + "`",
		escapeMrkdwn(textviz.Truncate(clean(state), maxIDChars)),
	}
	if !at.IsZero() {
		items = append(items, slackDate(at))
	}
	elems := make([]slack.MixedElement, 0, len(items))
	for _, it := range items[:min(len(items), maxContextItems)] {
		elems = append(elems, slack.NewTextBlockObject(slack.MarkdownType, it, false, false))
	}
	return slack.NewContextBlock("", elems...)
}

// slackDate formats t so each reader sees it in their own time zone, with a
// UTC fallback for clients that cannot.
func slackDate(t time.Time) string {
	return fmt.Sprintf("<!date^%d^{date_short_pretty} {time}|%s>", t.Unix(), t.UTC().Format("2006-01-02 15:04 UTC"))
}

// capBlocks keeps a message under Slack's block limit; the last block is the
// context, which is worth keeping.
func capBlocks(bs []slack.Block) []slack.Block {
	if len(bs) <= maxBlocks {
		return bs
	}
	return append(bs[:maxBlocks-1:maxBlocks-1], bs[len(bs)-1])
}

// resolvedDuration is how long the alert lasted, from the resolution's own
// Since or, failing that, from when the firing message's condition began.
func resolvedDuration(firing, resolved Alert) string {
	since := resolved.Transition.Since
	if since.IsZero() {
		since = firing.Transition.Since
	}
	if since.IsZero() || resolved.Transition.At.IsZero() {
		return ""
	}
	return humanDuration(resolved.Transition.At.Sub(since))
}

// stripEmoji removes the leading emoji from a sentence.
func stripEmoji(sentence, emoji string) string {
	return strings.TrimPrefix(sentence, emoji+" ")
}

// lastedPhrase words a humanDuration result after "lasted".
func lastedPhrase(dur string) string {
	if dur == justNow {
		return "lasted under a minute"
	}
	return "lasted " + dur
}

// justNow is how humanDuration says "under a minute".
const justNow = "just now"

// humanDuration is textviz.Duration, except that under a second (or a
// negative duration from clock skew) reads "just now".
func humanDuration(d time.Duration) string {
	if d < time.Second {
		return justNow
	}
	return textviz.Duration(d)
}

// plural writes "1 slot" or "3 slots".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// capitalize upper-cases the first rune.
func capitalize(s string) string {
	r, size := utf8.DecodeRuneInString(s)
	if size == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + s[size:]
}

// lowerFirst lower-cases the first rune.
func lowerFirst(s string) string {
	r, size := utf8.DecodeRuneInString(s)
	if size == 0 {
		return s
	}
	return string(unicode.ToLower(r)) + s[size:]
}

// clean makes user-provided text safe to place in one line: invalid UTF-8 is
// replaced, control characters (newlines included) become spaces, and the
// ends are trimmed.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// escapeMrkdwn escapes the three characters Slack's mrkdwn treats as markup.
func escapeMrkdwn(s string) string {
	if !strings.ContainsAny(s, "&<>") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for _, r := range s {
		switch r {
		case '&':
			b.WriteString("&amp;")
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// noEscape leaves text as it is, for outputs that are not mrkdwn.
func noEscape(s string) string { return s }
