package slackcmd_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/slackcmd"
)

const studyID = "60d9aadeb86739de712faee0"

func TestParseCommand(t *testing.T) {
	t.Parallel()
	appURL := "https://app.prolific.com/researcher/workspaces/studies/" + studyID + "/submissions"
	tests := []struct {
		name    string
		text    string
		want    slackcmd.Command
		wantErr string // substring of the error; "" means no error
	}{
		// Empty text asks for help without complaint.
		{"empty", "", slackcmd.Command{Verb: slackcmd.VerbHelp}, ""},
		// Whitespace only is empty too.
		{"blank", " \t\u00a0 ", slackcmd.Command{Verb: slackcmd.VerbHelp}, ""},
		// help is help.
		{"help", "help", slackcmd.Command{Verb: slackcmd.VerbHelp}, ""},
		// Unknown verbs become help naming the word.
		{"unknown verb", "subscribe " + studyID, slackcmd.Command{Verb: slackcmd.VerbHelp, NotUnderstood: "subscribe"}, ""},
		// Verbs are case-insensitive and spacing is free.
		{"watch mixed case", "  WaTcH   " + studyID + "  ", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID}, ""},
		// A bare Prolific URL names its study.
		{"watch url", "watch " + appURL, slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID}, ""},
		// Slack wraps pasted links in angle brackets.
		{"watch slack link", "watch <" + appURL + ">", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID}, ""},
		// A labelled Slack link, label with spaces, still one argument.
		{"watch labelled link", "watch <" + appURL + "|my study link>", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID}, ""},
		// A URL with a query is a study, not an option.
		{"watch url with query", "watch " + appURL + "?tab=overview&amp;x=1 stall=2h", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID, StallAfter: 2 * time.Hour}, ""},
		// stall= takes Go durations.
		{"stall hours", "watch " + studyID + " stall=12h", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID, StallAfter: 12 * time.Hour}, ""},
		// stall= may come first and be upper case.
		{"stall first", "watch STALL=90m " + studyID, slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID, StallAfter: 90 * time.Minute}, ""},
		// Days are understood.
		{"stall days", "watch " + studyID + " stall=1d12h", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID, StallAfter: 36 * time.Hour}, ""},
		// A plain number is hours.
		{"stall plain hours", "watch " + studyID + " stall=8", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID, StallAfter: 8 * time.Hour}, ""},
		// stall=default drops the override.
		{"stall default", "watch " + studyID + " stall=default", slackcmd.Command{Verb: slackcmd.VerbWatch, StudyID: studyID, ResetStall: true}, ""},
		// Too short a threshold is refused with the bounds.
		{"stall too short", "watch " + studyID + " stall=5m", slackcmd.Command{}, "between 15m and 30d"},
		// Too long a threshold is refused with the bounds.
		{"stall too long", "watch " + studyID + " stall=31d", slackcmd.Command{}, "between 15m and 30d"},
		// Negative durations are not durations.
		{"stall negative", "watch " + studyID + " stall=-2h", slackcmd.Command{}, "can't read"},
		// Nonsense durations are explained.
		{"stall nonsense", "watch " + studyID + " stall=soon", slackcmd.Command{}, "can't read"},
		// An empty stall= is explained.
		{"stall empty", "watch " + studyID + " stall=", slackcmd.Command{}, "needs a duration"},
		// stall= twice is ambiguous.
		{"stall twice", "watch " + studyID + " stall=1h stall=2h", slackcmd.Command{}, "twice"},
		// Unknown options are named.
		{"unknown option", "watch " + studyID + " every=5m", slackcmd.Command{}, "`every=`"},
		// watch without a study says what is missing.
		{"watch nothing", "watch", slackcmd.Command{}, "needs a study"},
		// A malformed id is refused.
		{"watch malformed id", "watch 12345", slackcmd.Command{}, "24 lowercase hexadecimal"},
		// Upper-case ids get a hint.
		{"watch upper id", "watch " + strings.ToUpper(studyID), slackcmd.Command{}, "lowercase."},
		// A look-alike host cannot smuggle an id in.
		{"watch foreign url", "watch https://evil.example/studies/" + studyID, slackcmd.Command{}, "not a study I can read"},
		// Two studies are one too many.
		{"watch two", "watch " + studyID + " " + studyID, slackcmd.Command{}, "takes one study"},
		// unwatch takes an id.
		{"unwatch", "unwatch " + studyID, slackcmd.Command{Verb: slackcmd.VerbUnwatch, StudyID: studyID}, ""},
		// unwatch without id is explained.
		{"unwatch nothing", "Unwatch", slackcmd.Command{}, "`unwatch` needs a study"},
		// status takes an id or link.
		{"status", "STATUS <" + appURL + ">", slackcmd.Command{Verb: slackcmd.VerbStatus, StudyID: studyID}, ""},
		// status refuses a bad id.
		{"status bad", "status nope", slackcmd.Command{}, "not a study I can read"},
		// list has no arguments.
		{"list", "list", slackcmd.Command{Verb: slackcmd.VerbList}, ""},
		// list with arguments is explained.
		{"list extra", "list all", slackcmd.Command{}, "takes no arguments"},
		// Pasted mentions are echoed escaped, never as markup.
		{"escaped echo", "watch <!channel>", slackcmd.Command{}, "&lt;!channel&gt;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := slackcmd.ParseCommand(tt.text)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCommand(%q) error = %v; want one containing %q", tt.text, err, tt.wantErr)
				}
				if !errors.Is(err, slackcmd.ErrUsage) {
					t.Errorf("error %v does not match ErrUsage", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCommand(%q) error = %v", tt.text, err)
			}
			if got != tt.want {
				t.Fatalf("ParseCommand(%q) = %+v; want %+v", tt.text, got, tt.want)
			}
		})
	}
}

func TestParseCommandInvalidIDMatchesProlific(t *testing.T) {
	t.Parallel()
	_, err := slackcmd.ParseCommand("watch nothex")
	if !errors.Is(err, prolific.ErrInvalidStudyID) || !errors.Is(err, slackcmd.ErrUsage) {
		t.Fatalf("error %v should match both ErrUsage and prolific.ErrInvalidStudyID", err)
	}
}

// prolificStudyID is Prolific's study id format, written out here rather
// than taken from prolific.IsStudyID so that the fuzz test does not check
// the parser with the code it relies on.
var prolificStudyID = regexp.MustCompile(`^[0-9a-f]{24}$`)

// FuzzParseCommand checks that no input panics and that every study id
// returned is a real Prolific id.
func FuzzParseCommand(f *testing.F) {
	for _, seed := range []string{
		"", "help", "list", "watch " + studyID, "watch " + studyID + " stall=12h", "unwatch " + studyID,
		"status <https://app.prolific.com/researcher/workspaces/studies/" + studyID + "|x y>",
		"watch <https://app.prolific.com/studies/" + studyID + ">", "watch stall=1d " + studyID,
		"watch " + studyID + " stall=99999999999999999999d", "watch " + studyID + " stall=1e9",
		"watch <", "watch <|>", "WATCH\u00a0" + studyID, "status " + strings.ToUpper(studyID),
		"watch app.prolific.com/researcher/workspaces/studies/" + studyID, "watch " + studyID + " stall=nan",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		cmd, err := slackcmd.ParseCommand(text)
		if err != nil {
			if !errors.Is(err, slackcmd.ErrUsage) {
				t.Fatalf("error %v does not match ErrUsage", err)
			}
			if cmd != (slackcmd.Command{}) {
				t.Fatalf("error with a non-zero command %+v", cmd)
			}
			return
		}
		switch cmd.Verb {
		case slackcmd.VerbWatch, slackcmd.VerbUnwatch, slackcmd.VerbStatus:
			if !prolificStudyID.MatchString(cmd.StudyID) {
				t.Fatalf("ParseCommand(%q) returned study id %q", text, cmd.StudyID)
			}
		case slackcmd.VerbList, slackcmd.VerbHelp:
			if cmd.StudyID != "" {
				t.Fatalf("ParseCommand(%q) returned study id %q for %s", text, cmd.StudyID, cmd.Verb)
			}
		default:
			t.Fatalf("ParseCommand(%q) returned verb %q", text, cmd.Verb)
		}
		if cmd.StallAfter != 0 && (cmd.StallAfter < rules.MinStallAfter || cmd.StallAfter > rules.MaxStallAfter) {
			t.Fatalf("ParseCommand(%q) returned stall %v outside the bounds", text, cmd.StallAfter)
		}
	})
}
