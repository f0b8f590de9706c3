package prolific

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// Study statuses Prolific documents. Other values may appear and are kept
// as data; only rules.StatusActive changes how the rules behave.
const (
	StatusUnpublished    = "UNPUBLISHED"
	StatusScheduled      = "SCHEDULED"
	StatusPublishing     = "PUBLISHING"
	StatusActive         = rules.StatusActive
	StatusAwaitingReview = "AWAITING REVIEW"
	StatusPaused         = "PAUSED"
	StatusCompleted      = "COMPLETED"
)

// maxCount bounds every count the API reports; anything larger is a
// glitch, and the bound keeps int conversions exact on every platform.
const maxCount = math.MaxInt32

// Progress is a Taskflow study's per-URL allocation as one poll saw it.
type Progress struct {
	// CollectionID is the access-details collection's uuid ("" if absent).
	CollectionID string
	// URLs holds one entry per external URL, in the order Prolific sent
	// them; it is never empty.
	URLs []rules.URLCounts
}

// Study is the part of Prolific's study object the worker uses: names for
// messages and the status that gates the stalled rule.
type Study struct {
	ID           string
	Name         string
	InternalName string
	// Status is kept verbatim, unknown values included ("AWAITING REVIEW"
	// has a space).
	Status               string
	TotalAvailablePlaces int
}

// wireProgress keeps raw fields so that missing, null and wrongly typed
// values can be told apart and reported.
type wireProgress struct {
	ID       json.RawMessage `json:"id"`
	Progress json.RawMessage `json:"progress"`
}

// wireURLCounts is one progress entry before validation.
type wireURLCounts struct {
	ExternalURL        json.RawMessage `json:"external_url"`
	TotalAllocation    json.RawMessage `json:"total_allocation"`
	Allocated          json.RawMessage `json:"allocated"`
	CapacityIncrements json.RawMessage `json:"capacity_increments"`
}

// wireStudy is the study object before validation.
type wireStudy struct {
	ID                   string          `json:"id"`
	Name                 string          `json:"name"`
	InternalName         string          `json:"internal_name"`
	Status               string          `json:"status"`
	TotalAvailablePlaces json.RawMessage `json:"total_available_places"`
}

// Progress fetches a Taskflow study's allocation per external URL. A
// study that is unknown or not a Taskflow study yields an error matching
// ErrNotFound. The reply must list at least one URL with valid counts,
// otherwise the error matches ErrMalformed: an empty list from a glitch
// must not look like a study whose problems went away.
func (c *Client) Progress(ctx context.Context, studyID string) (Progress, error) {
	path, err := studyPath(studyID, "access-details-progress/")
	if err != nil {
		return Progress{}, err
	}
	endpoint := "GET " + path
	rep, err := c.do(ctx, "GET", path, nil)
	if err != nil {
		return Progress{}, err
	}
	return c.decodeProgress(endpoint, rep.body)
}

// decodeProgress validates a progress body; see Progress for the rules.
func (c *Client) decodeProgress(endpoint string, body []byte) (Progress, error) {
	var wire wireProgress
	if err := unmarshalObject(body, &wire); err != nil {
		return Progress{}, c.malformed(endpoint, "%v", err)
	}
	var out Progress
	if !isNull(wire.ID) {
		if err := json.Unmarshal(wire.ID, &out.CollectionID); err != nil {
			return Progress{}, c.malformed(endpoint, "id: not a string")
		}
	}
	if isNull(wire.Progress) {
		return Progress{}, c.malformed(endpoint, "progress is missing")
	}
	var entries []json.RawMessage
	if wire.Progress[0] != '[' || json.Unmarshal(wire.Progress, &entries) != nil {
		return Progress{}, c.malformed(endpoint, "progress is not a list")
	}
	if len(entries) == 0 {
		return Progress{}, c.malformed(endpoint, "progress lists no URLs")
	}
	out.URLs = make([]rules.URLCounts, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	for i, raw := range entries {
		var entry wireURLCounts
		if err := unmarshalObject(raw, &entry); err != nil {
			return Progress{}, c.malformed(endpoint, "progress[%d]: %v", i, err)
		}
		counts, field, problem := decodeURLCounts(entry)
		if problem != "" {
			return Progress{}, c.malformed(endpoint, "progress[%d].%s: %s", i, field, problem)
		}
		if seen[counts.ExternalURL] {
			return Progress{}, c.malformed(endpoint, "progress[%d].external_url: listed twice", i)
		}
		seen[counts.ExternalURL] = true
		out.URLs = append(out.URLs, counts)
	}
	return out, nil
}

// decodeURLCounts validates one entry and names the first bad field.
func decodeURLCounts(w wireURLCounts) (counts rules.URLCounts, field, problem string) {
	if isNull(w.ExternalURL) {
		return counts, "external_url", "missing"
	}
	if err := json.Unmarshal(w.ExternalURL, &counts.ExternalURL); err != nil {
		return counts, "external_url", "not a string"
	}
	counts.ExternalURL = storable(counts.ExternalURL)
	if counts.ExternalURL == "" {
		return counts, "external_url", "empty"
	}
	if counts.TotalAllocation, problem = parseCount(w.TotalAllocation, false); problem != "" {
		return counts, "total_allocation", problem
	}
	if counts.Allocated, problem = parseCount(w.Allocated, false); problem != "" {
		return counts, "allocated", problem
	}
	if counts.CapacityIncrements, problem = parseCount(w.CapacityIncrements, true); problem != "" {
		return counts, "capacity_increments", problem
	}
	return counts, "", ""
}

// parseCount reads a non-negative whole number that may be written as a
// float (10.0, 1e1). An absent or null value is 0 when optional and a
// problem otherwise. The problem text quotes at most a short prefix of the
// raw value.
func parseCount(raw json.RawMessage, optional bool) (int, string) {
	if isNull(raw) {
		if optional {
			return 0, ""
		}
		return 0, "missing or null"
	}
	s := string(raw)
	if c := s[0]; c != '-' && (c < '0' || c > '9') {
		return 0, "not a number: " + quoteShort(s)
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, "negative: " + quoteShort(s)
		}
		if n > maxCount {
			return 0, "too large: " + quoteShort(s)
		}
		return int(n), ""
	}
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil && !isRangeError(err):
		return 0, "not a number: " + quoteShort(s)
	case f < 0:
		return 0, "negative: " + quoteShort(s)
	case f != math.Trunc(f):
		return 0, "not a whole number: " + quoteShort(s)
	case err != nil || f > maxCount:
		return 0, "too large: " + quoteShort(s)
	}
	return int(f), ""
}

// isRangeError reports whether strconv rejected a well-formed but huge number.
func isRangeError(err error) bool {
	return errors.Is(err, strconv.ErrRange)
}

// errNotObject reports a JSON value that should have been an object.
var errNotObject = errors.New("not a JSON object")

// unmarshalObject decodes data, which must be a JSON object, into v. It
// reports a wrong top-level type in plain words instead of naming Go types.
func unmarshalObject(data []byte, v any) error {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return errors.New("empty body")
	}
	if trimmed[0] != '{' {
		if !json.Valid(trimmed) {
			return errors.New("invalid JSON")
		}
		return errNotObject
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return fmt.Errorf("field %s: unexpected JSON %s", typeErr.Field, typeErr.Value)
		}
		return fmt.Errorf("invalid JSON: %w", err)
	}
	return nil
}

// storable drops NUL characters, which JSON may carry (\u0000) but
// Postgres text and jsonb refuse: one stray NUL in a study name or URL
// would otherwise make every poll of the study impossible to record.
func storable(s string) string {
	return strings.ReplaceAll(s, "\x00", "")
}

// isNull reports whether a raw field is absent or JSON null.
func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// quoteShort quotes a raw value for an error message, cut to 32 bytes so a
// huge or hostile value cannot flood logs.
func quoteShort(s string) string {
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return strconv.Quote(s)
}

// Study fetches the study object for its name and status. Unknown status
// values are returned as they are; a 404 matches ErrNotFound.
func (c *Client) Study(ctx context.Context, studyID string) (Study, error) {
	path, err := studyPath(studyID, "")
	if err != nil {
		return Study{}, err
	}
	endpoint := "GET " + path
	rep, err := c.do(ctx, "GET", path, nil)
	if err != nil {
		return Study{}, err
	}
	var wire wireStudy
	if err := unmarshalObject(rep.body, &wire); err != nil {
		return Study{}, c.malformed(endpoint, "%v", err)
	}
	if wire.ID == "" {
		return Study{}, c.malformed(endpoint, "id is missing")
	}
	places, problem := parseCount(wire.TotalAvailablePlaces, true)
	if problem != "" {
		return Study{}, c.malformed(endpoint, "total_available_places: %s", problem)
	}
	return Study{
		ID:                   wire.ID,
		Name:                 storable(wire.Name),
		InternalName:         storable(wire.InternalName),
		Status:               storable(wire.Status),
		TotalAvailablePlaces: places,
	}, nil
}
