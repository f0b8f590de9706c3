package prolific

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestParseStudyRef(t *testing.T) {
	t.Parallel()
	const id = "60d9aadeb86739de712faee0"
	tests := []struct {
		name string
		in   string
		want string // "" means ErrInvalidStudyID
	}{
		// A bare id.
		{name: "bare id", in: id, want: id},
		// Spaces and newlines around it.
		{name: "spaces", in: "  " + id + "\n", want: id},
		// Uppercase hex is a different string, not a Prolific id.
		{name: "uppercase", in: strings.ToUpper(id)},
		// One character short.
		{name: "too short", in: id[:23]},
		// One character long.
		{name: "too long", in: id + "0"},
		// A non-hex letter.
		{name: "non hex", in: "60d9aadeb86739de712faeeg"},
		// Nothing at all.
		{name: "empty", in: "   "},
		// The researcher app's study page.
		{name: "workspace url", in: "https://app.prolific.com/researcher/workspaces/studies/" + id, want: id},
		// A sub-page of the study.
		{name: "submissions url", in: "https://app.prolific.com/researcher/workspaces/studies/" + id + "/submissions", want: id},
		// The old domain and path.
		{name: "old domain", in: "https://app.prolific.co/researcher/studies/" + id, want: id},
		// Query string and fragment.
		{name: "query and fragment", in: "https://app.prolific.com/researcher/workspaces/studies/" + id + "/?tab=details#top", want: id},
		// No scheme.
		{name: "no scheme", in: "app.prolific.com/researcher/workspaces/studies/" + id, want: id},
		// Slack's autolinked URL.
		{name: "slack link", in: "<https://app.prolific.com/researcher/workspaces/studies/" + id + ">", want: id},
		// Slack's link with a label.
		{name: "slack labelled link", in: "<https://app.prolific.com/researcher/workspaces/studies/" + id + "|app.prolific.com/researcher/...>", want: id},
		// An id in angle brackets.
		{name: "bracketed id", in: "<" + id + ">", want: id},
		// A URL whose studies segment holds no valid id.
		{name: "url bad id", in: "https://app.prolific.com/researcher/workspaces/studies/" + strings.ToUpper(id)},
		// A URL without a studies segment.
		{name: "url without studies", in: "https://app.prolific.com/researcher/" + id},
		// A look-alike host.
		{name: "other host", in: "https://app.prolific.com.evil.example/researcher/workspaces/studies/" + id},
		// Another scheme.
		{name: "javascript scheme", in: "javascript://app.prolific.com/studies/" + id},
		// The id followed by other text.
		{name: "trailing text", in: id + " stall=2h"},
		// Unbalanced Slack markup.
		{name: "unbalanced bracket", in: "<" + id},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseStudyRef(tt.in)
			if tt.want == "" {
				if !errors.Is(err, ErrInvalidStudyID) || got != "" {
					t.Fatalf("ParseStudyRef(%q) = %q, %v; want ErrInvalidStudyID", tt.in, got, err)
				}
				if !strings.Contains(err.Error(), "24 lowercase hexadecimal") {
					t.Errorf("error %q does not say what an id looks like", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseStudyRef(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestStudyURL(t *testing.T) {
	t.Parallel()
	const id = "60d9aadeb86739de712faee0"
	got := StudyURL(id)
	if got != "https://app.prolific.com/researcher/workspaces/studies/"+id {
		t.Fatalf("StudyURL = %q", got)
	}
	if back, err := ParseStudyRef(got); err != nil || back != id {
		t.Errorf("ParseStudyRef(StudyURL(id)) = %q, %v", back, err)
	}
}

// studyIDPattern is an independent statement of what a study id is.
var studyIDPattern = regexp.MustCompile(`^[0-9a-f]{24}$`)

func FuzzParseStudyRef(f *testing.F) {
	const id = "60d9aadeb86739de712faee0"
	for _, seed := range []string{
		id,
		" " + id + " ",
		strings.ToUpper(id),
		"https://app.prolific.com/researcher/workspaces/studies/" + id,
		"https://app.prolific.com/researcher/workspaces/studies/" + id + "/submissions?x=1#y",
		"https://app.prolific.co/researcher/studies/" + id,
		"<https://app.prolific.com/researcher/workspaces/studies/" + id + "|label>",
		"<" + id + ">",
		"app.prolific.com/studies/" + id,
		"https://app.prolific.com/studies/%36%30d9aadeb86739de712faee0",
		"https://evil.example/studies/" + id,
		"<|>",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseStudyRef(in)
		if err != nil {
			if got != "" || !errors.Is(err, ErrInvalidStudyID) {
				t.Fatalf("ParseStudyRef(%q) = %q, %v", in, got, err)
			}
			return
		}
		if !studyIDPattern.MatchString(got) {
			t.Fatalf("ParseStudyRef(%q) returned %q, which is not a study id", in, got)
		}
	})
}
