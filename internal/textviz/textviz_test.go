package textviz

import (
	"math"
	"testing"
	"time"
)

func TestProgressBar(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                string
		value, limit, width int
		want                string
	}{
		// Half full fills half the cells.
		{"half", 5, 10, 10, "▓▓▓▓▓░░░░░"},
		// Exactly full fills every cell without the overflow mark.
		{"full", 10, 10, 4, "▓▓▓▓"},
		// Over the limit fills the bar and marks the overflow.
		{"over", 12, 10, 4, "▓▓▓!"},
		// A small non-zero value still shows one cell.
		{"tiny", 1, 100, 4, "▓░░░"},
		// Zero shows an empty bar.
		{"zero", 0, 10, 4, "░░░░"},
		// A zero limit cannot be divided by and draws empty.
		{"no limit", 3, 0, 4, "░░░░"},
		// A zero width draws nothing.
		{"no width", 3, 10, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := ProgressBar(tt.value, tt.limit, tt.width); got != tt.want {
				t.Errorf("ProgressBar(%d, %d, %d) = %q, want %q", tt.value, tt.limit, tt.width, got, tt.want)
			}
		})
	}
}

func TestSparkline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values []int
		want   string
	}{
		// No values draw nothing.
		{"empty", nil, ""},
		// A flat series stays at the lowest level.
		{"flat", []int{4, 4, 4}, "▁▁▁"},
		// A rising series spans the lowest to the highest level.
		{"rising", []int{0, 7, 14}, "▁▄█"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Sparkline(tt.values); got != tt.want {
				t.Errorf("Sparkline(%v) = %q, want %q", tt.values, got, tt.want)
			}
		})
	}
}

func TestDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},                 // Nothing to measure.
		{-time.Hour, "0s"},        // Clock skew never reads negative.
		{20 * time.Second, "20s"}, // Short demo thresholds keep their seconds.
		{59 * time.Second, "59s"}, // Not rounded up to a minute.
		{90 * time.Second, "2m"},  // Minutes round.
		{6 * time.Hour, "6h"},     // Whole hours drop the minutes.
		{7*time.Hour + 30*time.Minute, "7h30m"},
		{36 * time.Hour, "1d12h"},    // Past a day, days and hours.
		{30 * 24 * time.Hour, "30d"}, // Whole days.
	}
	for _, tt := range tests {
		if got := Duration(tt.d); got != tt.want {
			t.Errorf("Duration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90m", 90 * time.Minute, true},                // a Go duration
		{"1h30m", 90 * time.Minute, true},              // several units
		{"30d", 30 * 24 * time.Hour, true},             // days alone
		{"1d12h", 36 * time.Hour, true},                // days, then a Go duration
		{"1.5d", 36 * time.Hour, true},                 // fractional days
		{"12", 12 * time.Hour, true},                   // a plain number is hours
		{" 6H ", 6 * time.Hour, true},                  // case and spaces do not matter
		{"99999999999999999999d", math.MaxInt64, true}, // too large saturates, so a range check rejects it
		{"-2h", 0, false},                              // no signs
		{"+2h", 0, false},                              // no signs
		{"1e3", 0, false},                              // no exponents
		{"d", 0, false},                                // days need a number
		{"1d-1h", 0, false},                            // no signs after the days either
		{"soon", 0, false},                             // not a duration
		{"", 0, false},                                 // empty
	}
	for _, tt := range tests {
		got, ok := ParseDuration(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	// What Duration writes reads back.
	for _, d := range []time.Duration{40 * time.Second, 45 * time.Minute, 2*time.Hour + 5*time.Minute, 36 * time.Hour, 25*time.Hour + 5*time.Minute} {
		if got, ok := ParseDuration(Duration(d)); !ok || got != d {
			t.Errorf("ParseDuration(Duration(%v)) = %v, %v", d, got, ok)
		}
	}
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		s    string
		n    int
		want string
	}{
		{name: "short enough", s: "abc", n: 3, want: "abc"},         // Unchanged.
		{name: "ascii", s: "abcdef", n: 4, want: "abc…"},            // The ellipsis counts as one.
		{name: "multibyte", s: "ééééé", n: 3, want: "éé…"},          // Cut between runes; é is one unit.
		{name: "astral emoji", s: "🙂🙂🙂🙂", n: 3, want: "🙂…"},         // 🙂 is two UTF-16 units.
		{name: "no half emoji", s: "🙂🙂🙂🙂", n: 2, want: "…"},         // Half a surrogate pair is never kept.
		{name: "emoji fits exactly", s: "🔴 ab", n: 5, want: "🔴 ab"}, // 2 + 1 + 2 units.
		{name: "zero", s: "abc", n: 0, want: ""},                    // Nothing fits.
		{name: "invalid byte", s: "a\xffbcd", n: 3, want: "a\xff…"}, // An invalid byte is one unit and one byte.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Truncate(tt.s, tt.n)
			if got != tt.want {
				t.Errorf("Truncate(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
			}
			if Len(got) > max(tt.n, 0) {
				t.Errorf("Len(%q) = %d, over %d", got, Len(got), tt.n)
			}
		})
	}
}

func TestLen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s    string
		want int
	}{
		{"", 0},     // Empty.
		{"abc", 3},  // ASCII: one unit each.
		{"é▓░", 3},  // Basic Multilingual Plane: one unit each.
		{"🔴📈", 4},   // Astral emoji: two units each, as Slack counts them.
		{"\xff", 1}, // An invalid byte is sent as U+FFFD.
	}
	for _, tt := range tests {
		if got := Len(tt.s); got != tt.want {
			t.Errorf("Len(%q) = %d, want %d", tt.s, got, tt.want)
		}
	}
}
