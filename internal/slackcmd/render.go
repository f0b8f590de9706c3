package slackcmd

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// Block Kit limits: a message holds at most 50 blocks and a section's text
// at most 3000 characters.
const (
	maxBlocks       = 50
	maxSectionChars = 3000
)

// Table limits keep a study with very many URLs inside one message.
const (
	maxTableRows   = 200
	maxURLColumn   = 48
	progressBarLen = 20
)

// replyBuilder assembles an ephemeral reply within Block Kit's limits:
// long texts are split on line boundaries and blocks beyond the limit are
// replaced by one note saying the answer was cut.
type replyBuilder struct {
	text      string
	blocks    []slack.Block
	truncated bool
}

func newReplyBuilder(fallback string) *replyBuilder {
	return &replyBuilder{text: fallback}
}

// textReply is a reply of one section.
func textReply(text string) Reply {
	b := newReplyBuilder(text)
	b.section(text)
	return b.reply()
}

// full reports whether fewer than reserve blocks are left.
func (b *replyBuilder) full(reserve int) bool {
	return len(b.blocks)+reserve > maxBlocks-1
}

func (b *replyBuilder) add(block slack.Block) {
	if len(b.blocks) >= maxBlocks-1 {
		b.truncated = true
		return
	}
	b.blocks = append(b.blocks, block)
}

// section adds mrkdwn text, split into as many sections as it needs.
func (b *replyBuilder) section(text string) {
	for _, chunk := range chunkLines(strings.Split(text, "\n"), "", "") {
		b.add(slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, chunk, false, false), nil, nil))
	}
}

// code adds already escaped lines as preformatted text.
func (b *replyBuilder) code(lines []string) {
	for _, chunk := range chunkLines(lines, "```\n", "\n```") {
		b.add(slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, chunk, false, false), nil, nil))
	}
}

// context adds a small grey note.
func (b *replyBuilder) context(text string) {
	b.add(slack.NewContextBlock("", slack.NewTextBlockObject(slack.MarkdownType, textviz.Truncate(text, maxSectionChars), false, false)))
}

func (b *replyBuilder) reply() Reply {
	blocks := b.blocks
	if b.truncated {
		blocks = append(blocks, slack.NewContextBlock("",
			slack.NewTextBlockObject(slack.MarkdownType, "…the rest did not fit in one Slack message.", false, false)))
	}
	return Reply{ResponseType: slack.ResponseTypeEphemeral, Text: textviz.Truncate(b.text, maxSectionChars), Blocks: blocks}
}

// chunkLines joins lines into texts of at most maxSectionChars characters,
// each wrapped in prefix and suffix. A single overlong line is cut.
func chunkLines(lines []string, prefix, suffix string) []string {
	budget := maxSectionChars - textviz.Len(prefix) - textviz.Len(suffix)
	var (
		chunks []string
		cur    []string
		size   int
	)
	flush := func() {
		if len(cur) > 0 {
			chunks = append(chunks, prefix+strings.Join(cur, "\n")+suffix)
			cur, size = nil, 0
		}
	}
	for _, line := range lines {
		line = textviz.Truncate(line, budget)
		n := textviz.Len(line)
		if len(cur) > 0 && size+1+n > budget {
			flush()
		}
		if len(cur) > 0 {
			size++
		}
		cur = append(cur, line)
		size += n
	}
	flush()
	return chunks
}

// progressTable draws per-URL progress as aligned, escaped lines.
func progressTable(urls []rules.URLCounts) []string {
	header := []string{"URL", "allocated", "increments", "capacity", "progress"}
	rows := [][]string{header}
	for i, u := range urls {
		if i == maxTableRows {
			break
		}
		rows = append(rows, []string{
			textviz.Truncate(u.ExternalURL, maxURLColumn),
			fmt.Sprintf("%d/%d", u.Allocated, u.TotalAllocation),
			fmt.Sprintf("+%d", u.CapacityIncrements),
			fmt.Sprint(u.Capacity()),
			textviz.ProgressBar(u.Allocated, u.Capacity(), progressBarLen),
		})
	}
	widths := make([]int, len(header))
	for _, row := range rows {
		for c, cell := range row {
			widths[c] = max(widths[c], utf8.RuneCountInString(cell))
		}
	}
	lines := make([]string, 0, len(rows)+1)
	for _, row := range rows {
		var b strings.Builder
		for c, cell := range row {
			if c > 0 {
				b.WriteString("  ")
			}
			b.WriteString(escape(cell))
			if c < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[c]-utf8.RuneCountInString(cell)))
			}
		}
		lines = append(lines, b.String())
	}
	if len(urls) > maxTableRows {
		lines = append(lines, fmt.Sprintf("…and %d more URLs", len(urls)-maxTableRows))
	}
	return lines
}

// sparkline draws values with textviz.
func sparkline(values []int) string {
	return textviz.Sparkline(values)
}

// studyLink is the study's name linked to its Prolific page, with its id.
func studyLink(name, id string) string {
	if name == "" {
		return "<" + prolific.StudyURL(id) + "|" + id + ">"
	}
	label := strings.NewReplacer("|", "¦", "\n", " ").Replace(textviz.Truncate(name, 150))
	return "*<" + prolific.StudyURL(id) + "|" + escape(label) + ">* (`" + id + "`)"
}

// studyLabel is the study's name (or id) without a link.
func studyLabel(name, id string) string {
	if name == "" {
		return "`" + id + "`"
	}
	return "*" + escape(textviz.Truncate(name, 150)) + "* (`" + id + "`)"
}

// plainLabel names a study in notification text, which is not mrkdwn-rich.
func plainLabel(name, id string) string {
	if name == "" {
		return id
	}
	return escape(textviz.Truncate(name, 150))
}

// statusText shows a Prolific status, "unknown" when none was seen.
func statusText(status string) string {
	if status == "" {
		return "status unknown"
	}
	return "`" + escape(textviz.Truncate(status, 40)) + "`"
}

// ago is a short relative time in the past: "just now", "3m ago", "2h ago".
func ago(t, now time.Time) string {
	d := now.Sub(t)
	if d < time.Minute {
		if d < -time.Minute {
			return "in " + short(-d)
		}
		return "just now"
	}
	return short(d) + " ago"
}

// until is a short relative time in the future: "now", "in 3m".
func until(t, now time.Time) string {
	d := t.Sub(now)
	if d < time.Minute {
		return "now"
	}
	return "in " + short(d)
}

// short rounds a duration to its largest unit: 3m, 2h, 4d.
func short(d time.Duration) string {
	switch {
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// escape escapes the three characters Slack mrkdwn treats as markup, so
// names and URLs from Prolific cannot mention @channel or forge links.
func escape(s string) string {
	s = strings.ReplaceAll(s, "&", "&amp;")
	s = strings.ReplaceAll(s, "<", "&lt;")
	return strings.ReplaceAll(s, ">", "&gt;")
}

// unescape undoes Slack's escaping of command text.
func unescape(s string) string {
	s = strings.ReplaceAll(s, "&lt;", "<")
	s = strings.ReplaceAll(s, "&gt;", ">")
	return strings.ReplaceAll(s, "&amp;", "&")
}
