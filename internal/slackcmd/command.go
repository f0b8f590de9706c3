// Package slackcmd answers the Slack slash command (for example /taskflow)
// with which teams watch Prolific Taskflow studies: it verifies Slack's
// request signature, parses the command text, checks a study with Prolific
// before watching it, and replies with an ephemeral message. The same
// Handler serves the HTTP endpoint and Socket Mode.
package slackcmd

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// Verb names what a command does.
type Verb string

// The verbs of the slash command grammar.
const (
	VerbWatch   Verb = "watch"
	VerbUnwatch Verb = "unwatch"
	VerbList    Verb = "list"
	VerbStatus  Verb = "status"
	VerbHelp    Verb = "help"
)

// ErrUsage wraps every error ParseCommand returns, so callers can tell a
// mistyped command from other failures. The messages themselves are plain
// sentences for the person who typed the command.
var ErrUsage = errors.New("usage")

// Command is a parsed slash command.
type Command struct {
	Verb Verb
	// StudyID is the study a watch, unwatch or status command names: always
	// 24 lowercase hexadecimal characters, "" for list and help.
	StudyID string
	// StallAfter is the stall= value of a watch command, 0 when absent.
	StallAfter time.Duration
	// ResetStall is true for stall=default, which drops the channel's
	// override so the worker-wide threshold applies again.
	ResetStall bool
	// NotUnderstood is the word a help command was substituted for, ""
	// when the user asked for help or typed nothing.
	NotUnderstood string
}

// maxQuoted bounds how much of the user's input an error quotes back.
const maxQuoted = 40

// ParseCommand parses the text after the slash command. Verbs are
// case-insensitive and spacing is free; a study may be given by id or by
// Prolific study URL, bare or in Slack's <url> or <url|label> form. Empty
// text and unknown verbs become a help command. A watch, unwatch or status
// command with a missing or malformed study, a bad stall= value or extra
// words yields an error matching ErrUsage (and prolific.ErrInvalidStudyID
// for a bad study reference).
func ParseCommand(text string) (Command, error) {
	tokens := tokenize(text)
	if len(tokens) == 0 {
		return Command{Verb: VerbHelp}, nil
	}
	verb := Verb(strings.ToLower(tokens[0]))
	args := tokens[1:]
	switch verb {
	case VerbHelp:
		return Command{Verb: VerbHelp}, nil
	case VerbList:
		if len(args) > 0 {
			return Command{}, usageError("`list` takes no arguments (got %s).", quote(strings.Join(args, " ")))
		}
		return Command{Verb: VerbList}, nil
	case VerbUnwatch, VerbStatus:
		id, err := studyArg(verb, args)
		if err != nil {
			return Command{}, err
		}
		return Command{Verb: verb, StudyID: id}, nil
	case VerbWatch:
		return parseWatch(args)
	default:
		return Command{Verb: VerbHelp, NotUnderstood: shorten(tokens[0])}, nil
	}
}

// parseWatch reads `watch <study> [stall=<duration>]`, accepting the
// option on either side of the study.
func parseWatch(args []string) (Command, error) {
	cmd := Command{Verb: VerbWatch}
	var refs []string
	stallSeen := false
	for _, arg := range args {
		key, value, isOption := strings.Cut(arg, "=")
		// Only word=value is an option; a pasted URL may hold "=" in its query.
		if !isOption || !isWord(key) {
			refs = append(refs, arg)
			continue
		}
		if !strings.EqualFold(key, "stall") {
			return Command{}, usageError("I don't know the option %s; the only option of `watch` is `stall=&lt;duration&gt;`, like `stall=12h`.", quote(key+"="))
		}
		if stallSeen {
			return Command{}, usageError("`stall=` is given twice; give it once.")
		}
		stallSeen = true
		if strings.EqualFold(strings.TrimSpace(value), "default") {
			cmd.ResetStall = true
			continue
		}
		d, err := ParseStallAfter(value)
		if err != nil {
			return Command{}, err
		}
		cmd.StallAfter = d
	}
	id, err := studyArg(VerbWatch, refs)
	if err != nil {
		return Command{}, err
	}
	cmd.StudyID = id
	return cmd, nil
}

// studyArg checks that args is exactly one study reference and parses it.
func studyArg(verb Verb, args []string) (string, error) {
	switch len(args) {
	case 0:
		return "", usageError("`%s` needs a study: `%s &lt;study id or Prolific study link&gt;`.", verb, verb)
	case 1:
	default:
		return "", usageError("`%s` takes one study, but I got %d words: %s.", verb, len(args), quote(strings.Join(args, " ")))
	}
	id, err := prolific.ParseStudyRef(args[0])
	if err != nil {
		hint := ""
		if lower, lerr := prolific.ParseStudyRef(strings.ToLower(args[0])); lerr == nil && lower != "" {
			hint = " Study ids are lowercase."
		}
		return "", &usage{
			msg: fmt.Sprintf("%s is not a study I can read: a Prolific study id is 24 lowercase hexadecimal characters "+
				"(like `60d9aadeb86739de712faee0`), or paste the study's link from app.prolific.com.%s", quote(args[0]), hint),
			err: err,
		}
	}
	// ParseStudyRef promises a valid id; checking again keeps the promise
	// of this package independent of that one.
	if !prolific.IsStudyID(id) {
		return "", usageError("%s is not a Prolific study id.", quote(args[0]))
	}
	return id, nil
}

// ParseStallAfter reads a stall threshold: a Go duration (90m, 12h,
// 1h30m), days (2d, 1d12h) or a plain number of hours (12, 1.5). It must
// lie between rules.MinStallAfter and rules.MaxStallAfter. Errors match ErrUsage.
func ParseStallAfter(s string) (time.Duration, error) {
	raw := strings.ToLower(strings.TrimSpace(s))
	if raw == "" {
		return 0, usageError("`stall=` needs a duration, like `stall=12h`, `stall=90m` or `stall=2d`.")
	}
	d, ok := textviz.ParseDuration(raw)
	if !ok {
		return 0, usageError("I can't read %s as a duration; write it like `stall=12h`, `stall=90m` or `stall=2d`.", quote(s))
	}
	if d < rules.MinStallAfter || d > rules.MaxStallAfter {
		return 0, usageError("The stall threshold must be between %s and %s (got %s).",
			textviz.Duration(rules.MinStallAfter), textviz.Duration(rules.MaxStallAfter), quote(s))
	}
	return d, nil
}

// isWord reports whether s is a non-empty run of ASCII letters.
func isWord(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') {
			return false
		}
	}
	return true
}

// tokenize splits text on whitespace, keeping a Slack <link|label> in one
// token even when its label contains spaces.
func tokenize(text string) []string {
	var (
		tokens []string
		cur    strings.Builder
		inLink bool
	)
	flush := func() {
		if cur.Len() > 0 {
			tokens = append(tokens, cur.String())
			cur.Reset()
		}
	}
	for _, r := range text {
		switch {
		case inLink:
			cur.WriteRune(r)
			if r == '>' {
				inLink = false
			}
		case r == '<' && cur.Len() == 0:
			cur.WriteRune(r)
			inLink = true
		case unicode.IsSpace(r):
			flush()
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return tokens
}

// usageError builds an error matching ErrUsage whose text is the sentence.
func usageError(format string, args ...any) error {
	return &usage{msg: fmt.Sprintf(format, args...)}
}

// usage is a user-facing parse error; it matches ErrUsage and whatever
// error caused it.
type usage struct {
	msg string
	err error
}

func (u *usage) Error() string        { return u.msg }
func (u *usage) Is(target error) bool { return target == ErrUsage }
func (u *usage) Unwrap() error        { return u.err }

// quote shows a bit of user input in an error, in code style and escaped
// for Slack mrkdwn, so that pasted markup such as <!channel> is shown
// rather than acted on.
func quote(s string) string {
	return "`" + escape(strings.ReplaceAll(shorten(unescape(s)), "`", "'")) + "`"
}

// shorten cuts user input for display.
func shorten(s string) string {
	if r := []rune(s); len(r) > maxQuoted {
		return string(r[:maxQuoted]) + "…"
	}
	return s
}
