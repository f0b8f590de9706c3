package prolific

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrInvalidStudyID is returned by ParseStudyRef for text that is neither a
// study id nor a Prolific study URL. Its message is written for the person
// who typed the reference.
var ErrInvalidStudyID = errors.New("invalid study id: a Prolific study id is 24 lowercase hexadecimal characters " +
	"(like 60d9aadeb86739de712faee0), or paste the study's link from app.prolific.com")

// studyIDLen is the length of a Prolific study id.
const studyIDLen = 24

// studyAppURL is the researcher app's page for a study.
const studyAppURL = "https://app.prolific.com/researcher/workspaces/studies/"

// IsStudyID reports whether s is exactly a Prolific study id: 24 lowercase
// hexadecimal characters.
func IsStudyID(s string) bool {
	if len(s) != studyIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ParseStudyRef extracts a study id from what a user typed or pasted: a
// bare id, or a Prolific study URL such as
// https://app.prolific.com/researcher/workspaces/studies/<id>/submissions,
// either one optionally in Slack's <url> or <url|label> link syntax.
// Surrounding spaces are ignored; ids are not case-folded, because
// Prolific ids are lowercase and a changed id would name another study.
// It returns only valid ids; anything else yields ErrInvalidStudyID.
func ParseStudyRef(s string) (string, error) {
	ref := strings.TrimSpace(s)
	if len(ref) >= 2 && ref[0] == '<' && ref[len(ref)-1] == '>' {
		target, label, hasLabel := strings.Cut(ref[1:len(ref)-1], "|")
		if id, ok := parseBareRef(strings.TrimSpace(target)); ok {
			return id, nil
		}
		if hasLabel {
			if id, ok := parseBareRef(strings.TrimSpace(label)); ok {
				return id, nil
			}
		}
		return "", invalidStudyRef(s)
	}
	if id, ok := parseBareRef(ref); ok {
		return id, nil
	}
	return "", invalidStudyRef(s)
}

// parseBareRef accepts an id or a Prolific study URL, without Slack markup.
func parseBareRef(ref string) (string, bool) {
	if IsStudyID(ref) {
		return ref, true
	}
	raw := ref
	if !strings.Contains(raw, "://") {
		lower := strings.ToLower(raw)
		if !strings.HasPrefix(lower, "app.prolific.") && !strings.HasPrefix(lower, "prolific.") {
			return "", false
		}
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || !isProlificHost(u.Hostname()) {
		return "", false
	}
	segments := strings.Split(u.Path, "/")
	for i := 0; i+1 < len(segments); i++ {
		if segments[i] == "studies" && IsStudyID(segments[i+1]) {
			return segments[i+1], true
		}
	}
	return "", false
}

// isProlificHost accepts prolific.com and prolific.co (the old domain) and
// their subdomains, so a look-alike host cannot smuggle an id in.
func isProlificHost(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, domain := range []string{"prolific.com", "prolific.co"} {
		if host == domain || strings.HasSuffix(host, "."+domain) {
			return true
		}
	}
	return false
}

// invalidStudyRef wraps ErrInvalidStudyID with a short quote of the input.
func invalidStudyRef(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		return fmt.Errorf("%w (got nothing)", ErrInvalidStudyID)
	}
	if r := []rune(s); len(r) > 64 {
		s = string(r[:64]) + "…"
	}
	return fmt.Errorf("%w (got %q)", ErrInvalidStudyID, s)
}

// StudyURL is the researcher app page of a study, for links in Slack.
func StudyURL(id string) string {
	return studyAppURL + url.PathEscape(id)
}
