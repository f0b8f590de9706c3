package textviz

import "testing"

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
