package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// StudyInfo is what Prolific says about a study when it is registered.
type StudyInfo struct {
	ID     string
	Name   string
	Status string
}

// channelIDPattern is what a watch's channel may be: a Slack channel id
// (C0123456789), or a plain label such as the demo's "demo" when
// notifications go to stdout. Nothing else reaches the outbox or logs.
var channelIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,80}$`)

// ValidChannelID reports whether id may be a watch's channel.
func ValidChannelID(id string) bool { return channelIDPattern.MatchString(id) }

// ErrInvalidChannel is returned by AddWatch for a channel id that
// ValidChannelID refuses.
var ErrInvalidChannel = errors.New("not a Slack channel id")

// Watch is one Slack channel's subscription to a study.
type Watch struct {
	StudyID   string
	ChannelID string
	TeamID    string
	AddedBy   string
	CreatedAt time.Time
	UpdatedAt time.Time
	// StallAfter overrides STALL_AFTER for this channel; 0 means the default.
	StallAfter time.Duration
}

// Study is a watched study with the outcome of its last poll.
type Study struct {
	ID                  string
	Name                string
	Status              string
	CreatedAt           time.Time
	NextPollAt          time.Time
	LastPolledAt        time.Time // zero before the first poll
	LastPollOK          bool
	LastError           string
	PollNote            string
	ConsecutiveFailures int
	Watches             []Watch
	OpenAlerts          []rules.OpenAlert
}

// AddWatch registers channel's watch of a study, creating the study if it is
// new. Either way the study is requested as a webhook requests it
// (PollSoon): due at once, taken by a running cycle too (see
// ClaimDueStudies), except that a study whose polls are failing keeps its
// back-off. Watching again updates the
// stall-after override and who added it, and reports created=false. The
// status of a known study is left to the poller, which feeds it to the rules
// (a change into ACTIVE restarts the stall clock).
func (s *Store) AddWatch(ctx context.Context, info StudyInfo, w Watch, now time.Time) (created bool, err error) {
	if !ValidChannelID(w.ChannelID) {
		return false, fmt.Errorf("adding watch of study %s: channel %q: %w", info.ID, w.ChannelID, ErrInvalidChannel)
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO studies (id, name, status, created_at, next_poll_at)
			VALUES ($1, $2, $3, $4, $4)
			ON CONFLICT (id) DO UPDATE
			SET name = CASE WHEN EXCLUDED.name <> '' THEN EXCLUDED.name ELSE studies.name END`,
			info.ID, info.Name, info.Status, now)
		if err != nil {
			return fmt.Errorf("upserting study: %w", err)
		}
		if _, err := schedulePoll(ctx, tx, info.ID, "", now); err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO watches (study_id, channel_id, team_id, added_by, created_at, updated_at, stall_after_seconds)
			VALUES ($1, $2, $3, $4, $5, $5, $6)
			ON CONFLICT (study_id, channel_id) DO UPDATE
			SET team_id = EXCLUDED.team_id, added_by = EXCLUDED.added_by,
			    updated_at = EXCLUDED.updated_at, stall_after_seconds = EXCLUDED.stall_after_seconds
			RETURNING xmax = 0`,
			info.ID, w.ChannelID, w.TeamID, w.AddedBy, now, stallSeconds(w.StallAfter)).Scan(&created)
		if err != nil {
			return fmt.Errorf("upserting watch: %w", err)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("adding watch of study %s: %w", info.ID, err)
	}
	return created, nil
}

func stallSeconds(d time.Duration) *int64 {
	if d <= 0 {
		return nil
	}
	secs := int64(d.Round(time.Second) / time.Second)
	return &secs
}

// RemoveWatch ends channel's watch of a study. When no channel watches the
// study any more, the study and its history are deleted, which also stops
// polling it. It returns ErrNotFound when the channel did not watch the study.
func (s *Store) RemoveWatch(ctx context.Context, studyID, channelID string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM watches WHERE study_id = $1 AND channel_id = $2`, studyID, channelID)
		if err != nil {
			return fmt.Errorf("deleting watch: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		_, err = tx.Exec(ctx, `
			DELETE FROM studies
			WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM watches WHERE study_id = $1)`, studyID)
		if err != nil {
			return fmt.Errorf("deleting unwatched study: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("removing watch of study %s in %s: %w", studyID, channelID, err)
	}
	return nil
}

// RemoveStudy deletes a study with all its watches and history.
func (s *Store) RemoveStudy(ctx context.Context, studyID string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM studies WHERE id = $1`, studyID)
	if err != nil {
		return fmt.Errorf("removing study %s: %w", studyID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("removing study %s: %w", studyID, ErrNotFound)
	}
	return nil
}

// Studies lists watched studies ordered by name and id, with their watches
// and open alerts. A non-empty channelID keeps only that channel's watches.
func (s *Store) Studies(ctx context.Context, channelID string) ([]Study, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT s.id, s.name, s.status, s.created_at, s.next_poll_at, s.last_polled_at,
		       coalesce(s.last_poll_ok, false), s.last_error, s.poll_note, s.consecutive_failures
		FROM studies s
		WHERE $1 = '' OR EXISTS (SELECT 1 FROM watches w WHERE w.study_id = s.id AND w.channel_id = $1)
		ORDER BY lower(s.name), s.id`, channelID)
	if err != nil {
		return nil, fmt.Errorf("listing studies: %w", err)
	}
	studies, err := pgx.CollectRows(rows, scanStudy)
	if err != nil {
		return nil, fmt.Errorf("listing studies: %w", err)
	}
	if err := s.attachDetails(ctx, studies, channelID); err != nil {
		return nil, err
	}
	return studies, nil
}

// attachDetails fills the watches (of channelID only, when non-empty) and
// open alerts of studies with two queries, whatever their number.
func (s *Store) attachDetails(ctx context.Context, studies []Study, channelID string) error {
	if len(studies) == 0 {
		return nil
	}
	byID := make(map[string]*Study, len(studies))
	ids := make([]string, len(studies))
	for i := range studies {
		byID[studies[i].ID] = &studies[i]
		ids[i] = studies[i].ID
	}
	rows, err := s.pool.Query(ctx, `
		SELECT study_id, channel_id, team_id, added_by, created_at, updated_at, coalesce(stall_after_seconds, 0)
		FROM watches WHERE study_id = ANY($1) AND ($2 = '' OR channel_id = $2)
		ORDER BY study_id, channel_id`, ids, channelID)
	if err != nil {
		return fmt.Errorf("listing watches: %w", err)
	}
	watches, err := pgx.CollectRows(rows, scanWatch)
	if err != nil {
		return fmt.Errorf("listing watches: %w", err)
	}
	for _, w := range watches {
		byID[w.StudyID].Watches = append(byID[w.StudyID].Watches, w)
	}
	rows, err = s.pool.Query(ctx, `
		SELECT study_id, rule, external_url, fired_at FROM alerts
		WHERE study_id = ANY($1) AND resolved_at IS NULL
		ORDER BY study_id, rule, external_url`, ids)
	if err != nil {
		return fmt.Errorf("listing open alerts: %w", err)
	}
	var (
		studyID string
		alert   rules.OpenAlert
	)
	_, err = pgx.ForEachRow(rows, []any{&studyID, &alert.Rule, &alert.ExternalURL, &alert.Since}, func() error {
		byID[studyID].OpenAlerts = append(byID[studyID].OpenAlerts, alert)
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing open alerts: %w", err)
	}
	return nil
}

// GetStudy returns one study with its watches and open alerts, or ErrNotFound.
func (s *Store) GetStudy(ctx context.Context, id string) (Study, error) {
	row, err := s.pool.Query(ctx, `
		SELECT id, name, status, created_at, next_poll_at, last_polled_at,
		       coalesce(last_poll_ok, false), last_error, poll_note, consecutive_failures
		FROM studies WHERE id = $1`, id)
	if err != nil {
		return Study{}, fmt.Errorf("getting study %s: %w", id, err)
	}
	st, err := pgx.CollectExactlyOneRow(row, scanStudy)
	if err != nil {
		return Study{}, fmt.Errorf("getting study %s: %w", id, notFound(err))
	}
	studies := []Study{st}
	if err := s.attachDetails(ctx, studies, ""); err != nil {
		return Study{}, fmt.Errorf("getting study %s: %w", id, err)
	}
	return studies[0], nil
}

func scanStudy(row pgx.CollectableRow) (Study, error) {
	var (
		st         Study
		lastPolled *time.Time
	)
	err := row.Scan(&st.ID, &st.Name, &st.Status, &st.CreatedAt, &st.NextPollAt, &lastPolled,
		&st.LastPollOK, &st.LastError, &st.PollNote, &st.ConsecutiveFailures)
	if lastPolled != nil {
		st.LastPolledAt = *lastPolled
	}
	return st, err
}

func scanWatch(row pgx.CollectableRow) (Watch, error) {
	var (
		w    Watch
		secs int64
	)
	err := row.Scan(&w.StudyID, &w.ChannelID, &w.TeamID, &w.AddedBy, &w.CreatedAt, &w.UpdatedAt, &secs)
	w.StallAfter = time.Duration(secs) * time.Second
	return w, err
}
