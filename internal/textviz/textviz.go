// Package textviz draws the small text pieces that Slack messages use in
// place of charts and tables: progress bars and sparklines made of Unicode
// blocks, which render the same in every Slack client and in plain-text
// fallbacks, and durations written the way people say them.
package textviz

import (
	"fmt"
	"strings"
	"time"
)

// ProgressBar draws value out of limit as a bar of width cells, e.g.
// "▓▓▓▓▓▓░░░░". A value past the limit fills the bar and marks the overflow
// with "!" in the last cell so over-allocation is visible at a glance.
// A non-positive limit or width draws an empty bar.
func ProgressBar(value, limit, width int) string {
	if width <= 0 {
		return ""
	}
	if limit <= 0 {
		return strings.Repeat("░", width)
	}
	if value > limit {
		return strings.Repeat("▓", width-1) + "!"
	}
	filled := max(value, 0) * width / limit
	// A started but tiny value still shows one cell so it is not read as zero.
	if filled == 0 && value > 0 {
		filled = 1
	}
	return strings.Repeat("▓", filled) + strings.Repeat("░", width-filled)
}

var sparkLevels = []rune("▁▂▃▄▅▆▇█")

// Sparkline draws values as one block character each, scaled between their
// minimum and maximum. A flat series draws at the lowest level.
func Sparkline(values []int) string {
	if len(values) == 0 {
		return ""
	}
	lo, hi := values[0], values[0]
	for _, v := range values {
		lo, hi = min(lo, v), max(hi, v)
	}
	var b strings.Builder
	for _, v := range values {
		level := 0
		if hi > lo {
			level = (v - lo) * (len(sparkLevels) - 1) / (hi - lo)
		}
		b.WriteRune(sparkLevels[level])
	}
	return b.String()
}

// Duration writes d the way people say it in a message: seconds below a
// minute ("40s"), then rounded to minutes with days, hours and minutes as
// needed ("45m", "2h5m", "6h", "1d12h", "1d1h5m"), the same units a user
// types in stall=. Zero and negative durations read "0s".
func Duration(d time.Duration) string {
	if d < time.Second {
		return "0s"
	}
	if d < time.Minute {
		return fmt.Sprintf("%ds", int(d/time.Second))
	}
	d = d.Round(time.Minute)
	days, hours, minutes := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour), int(d%time.Hour/time.Minute)
	var b strings.Builder
	if days > 0 {
		fmt.Fprintf(&b, "%dd", days)
	}
	if hours > 0 {
		fmt.Fprintf(&b, "%dh", hours)
	}
	if minutes > 0 || b.Len() == 0 {
		fmt.Fprintf(&b, "%dm", minutes)
	}
	return b.String()
}
