// Package textviz draws the small text pieces that Slack messages use in
// place of charts and tables: progress bars and sparklines made of Unicode
// blocks, which render the same in every Slack client and in plain-text
// fallbacks, and durations written the way people say them.
package textviz

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
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

// ParseDuration reads a duration the way people type one and Duration
// writes it: a Go duration ("90m", "1h30m"), optionally led by days
// ("30d", "1d12h", "1.5d"), or a plain number of hours ("12", "1.5").
// Letters may be upper case. Signs, exponents and anything else are not
// durations. Values too large for a time.Duration come back as its
// maximum, so that a range check reports them as too long.
func ParseDuration(s string) (time.Duration, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if isPlainNumber(s) {
		return hours(s, 1)
	}
	var days time.Duration
	if before, after, ok := strings.Cut(s, "d"); ok {
		if !isPlainNumber(before) {
			return 0, false
		}
		if days, ok = hours(before, 24); !ok || after == "" {
			return days, ok
		}
		s = after
	}
	if s == "" || strings.ContainsAny(s, "+-") {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, false
	}
	if days > math.MaxInt64-d {
		return math.MaxInt64, true
	}
	return days + d, true
}

// hours converts a plain number of units of factor hours, saturating.
func hours(number string, factor float64) (time.Duration, bool) {
	n, err := strconv.ParseFloat(number, 64)
	if err != nil && !isRangeErr(err) {
		return 0, false
	}
	if h := n * factor; h < float64(math.MaxInt64)/float64(time.Hour) {
		return time.Duration(h * float64(time.Hour)), true
	}
	return math.MaxInt64, true
}

func isRangeErr(err error) bool {
	numErr, ok := err.(*strconv.NumError)
	return ok && numErr.Err == strconv.ErrRange
}

// isPlainNumber reports whether s is digits with at most one decimal point.
func isPlainNumber(s string) bool {
	if s == "" || s == "." {
		return false
	}
	dots := 0
	for _, r := range s {
		switch {
		case r == '.':
			dots++
		case r < '0' || r > '9':
			return false
		}
	}
	return dots <= 1
}

// Len is the length of s as Slack counts it against its limits: in UTF-16
// code units, the way JavaScript measures strings, so an emoji outside the
// Basic Multilingual Plane (🔴, 📈) counts twice. Counting runes instead
// lets a header full of emoji pass 150 here and fail with invalid_blocks.
func Len(s string) int {
	n := 0
	for _, r := range s {
		n += unitsOf(r)
	}
	return n
}

// Truncate cuts s to at most n units of Len, ending a cut text with "…".
func Truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if Len(s) <= n {
		return s
	}
	end, used := 0, 0
	for i, r := range s {
		if used+unitsOf(r) > n-1 {
			break
		}
		used += unitsOf(r)
		// The rune's own width in s: an invalid byte decodes as U+FFFD,
		// whose UTF-8 form is three bytes, but takes one.
		_, size := utf8.DecodeRuneInString(s[i:])
		end = i + size
	}
	return s[:end] + "…"
}

// unitsOf is how many UTF-16 code units r takes; an invalid rune is sent as
// U+FFFD, one unit.
func unitsOf(r rune) int {
	if n := utf16.RuneLen(r); n > 0 {
		return n
	}
	return 1
}
