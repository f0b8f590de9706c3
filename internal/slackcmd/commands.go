package slackcmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slack-go/slack"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/textviz"
)

// watch checks the study with Prolific and, when it is a Taskflow study,
// registers this channel's watch. The check may finish after the first
// answer; see respondLater.
func (h *Handler) watch(ctx context.Context, log *slog.Logger, sc slack.SlashCommand, cmd Command) Reply {
	waiting := textReply("Checking study `" + cmd.StudyID + "` with Prolific… I'll answer here in a moment.")
	return h.respondLater(ctx, log, sc.ResponseURL, waiting, func(ctx context.Context) Reply {
		return h.checkAndWatch(ctx, log, sc, cmd)
	})
}

func (h *Handler) checkAndWatch(ctx context.Context, log *slog.Logger, sc slack.SlashCommand, cmd Command) Reply {
	var (
		wg                 sync.WaitGroup
		study              prolific.Study
		progress           prolific.Progress
		studyErr, progrErr error
	)
	// Both calls are needed and independent; running them together halves
	// the time the user waits.
	wg.Go(func() { study, studyErr = h.prolific.Study(ctx, cmd.StudyID) })
	wg.Go(func() { progress, progrErr = h.prolific.Progress(ctx, cmd.StudyID) })
	wg.Wait()
	id := "`" + cmd.StudyID + "`"
	switch {
	case studyErr != nil && errors.Is(studyErr, prolific.ErrNotFound):
		log.Info("watch refused: unknown study")
		return textReply(fmt.Sprintf("Prolific has no study %s (or our Prolific token cannot see it). "+
			"Check the id, or paste the study's link from app.prolific.com. Nothing was changed.", id))
	case studyErr != nil:
		return prolificFailure(log, id, studyErr)
	case progrErr != nil && errors.Is(progrErr, prolific.ErrNotFound):
		log.Info("watch refused: not a Taskflow study")
		return textReply(fmt.Sprintf("%s is not a Taskflow study: Prolific has no per-URL access details for it, "+
			"so there is nothing to watch. Nothing was changed.", studyLabel(study.Name, cmd.StudyID)))
	case progrErr != nil:
		return prolificFailure(log, id, progrErr)
	}

	now := h.now()
	stall := cmd.StallAfter
	previous, hadWatch, err := h.channelWatch(ctx, cmd.StudyID, sc.ChannelID)
	if err != nil {
		log.Error("watch failed: reading the current watch", slog.String("error", err.Error()))
		return storeFailure()
	}
	if hadWatch && stall == 0 && !cmd.ResetStall {
		// A repeated watch without stall= keeps the channel's threshold.
		stall = previous.StallAfter
	}
	created, err := h.store.AddWatch(ctx,
		store.StudyInfo{ID: cmd.StudyID, Name: study.Name, Status: study.Status},
		store.Watch{ChannelID: sc.ChannelID, TeamID: sc.TeamID, AddedBy: sc.UserID, StallAfter: stall}, now)
	if err != nil {
		log.Error("watch failed: saving", slog.String("error", err.Error()))
		return storeFailure()
	}
	if h.poller != nil {
		h.poller.Trigger()
	}
	log.Info("watch saved", slog.Bool("created", created), slog.String("stall_after", textviz.Duration(stall)))

	label := studyLink(study.Name, cmd.StudyID)
	var headline string
	switch {
	case created || !hadWatch:
		headline = fmt.Sprintf(":white_check_mark: Now watching %s in this channel. Status: %s. "+
			"Stall alert after %s without a new participant.", label, statusText(study.Status), h.stallPhrase(stall))
	case previous.StallAfter != stall:
		headline = fmt.Sprintf("Already watching %s in this channel (stall threshold updated to %s, was %s).",
			label, h.stallPhrase(stall), h.stallPhrase(previous.StallAfter))
	default:
		headline = fmt.Sprintf("Already watching %s in this channel (stall threshold: %s).", label, h.stallPhrase(stall))
	}
	b := newReplyBuilder(headline)
	b.section(headline)
	b.code(progressTable(progress.URLs))
	// A channel joining a study whose alerts are already firing would
	// otherwise first hear of them when they resolve.
	if st, err := h.store.GetStudy(ctx, cmd.StudyID); err == nil && len(st.OpenAlerts) > 0 {
		b.section("Already firing (announced before this channel watched): " + alertsText(st.OpenAlerts, now, 10))
	}
	b.context("I'm polling it now; `list` and `status` show what I see.")
	return b.reply()
}

// channelWatch returns the channel's current watch of a study, if any.
func (h *Handler) channelWatch(ctx context.Context, studyID, channelID string) (store.Watch, bool, error) {
	st, err := h.store.GetStudy(ctx, studyID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Watch{}, false, nil
	}
	if err != nil {
		return store.Watch{}, false, err
	}
	for _, w := range st.Watches {
		if w.ChannelID == channelID {
			return w, true, nil
		}
	}
	return store.Watch{}, false, nil
}

// prolificFailure explains a failed Prolific check; nothing was stored.
func prolificFailure(log *slog.Logger, id string, err error) Reply {
	log.Warn("watch failed: checking with Prolific", slog.String("error", err.Error()))
	var apiErr *prolific.APIError
	if errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusForbidden {
		return textReply("Prolific does not let taskflow-watch's API token see " + id + " (HTTP 403). " +
			"The study must be in a workspace the token can access: please ask the person who runs taskflow-watch. Nothing was changed.")
	}
	if errors.Is(err, prolific.ErrUnauthorized) {
		return textReply("Prolific refused taskflow-watch's API token, so I can't check " + id + ". " +
			"Please tell the person who runs taskflow-watch: the Prolific token needs renewing. Nothing was changed.")
	}
	var why string
	switch {
	case errors.Is(err, prolific.ErrRateLimited):
		why = "Prolific is rate-limiting us"
	case errors.As(err, &apiErr) && errors.Is(err, prolific.ErrServer):
		why = fmt.Sprintf("Prolific answered with a server error (HTTP %d)", apiErr.StatusCode)
	case errors.Is(err, context.DeadlineExceeded):
		why = "Prolific did not answer in time"
	case errors.Is(err, prolific.ErrTransport):
		why = "I couldn't reach Prolific"
	case errors.Is(err, prolific.ErrMalformed):
		why = "Prolific sent a reply I couldn't read"
	case errors.As(err, &apiErr):
		why = fmt.Sprintf("Prolific answered HTTP %d %s", apiErr.StatusCode, http.StatusText(apiErr.StatusCode))
	default:
		why = "checking with Prolific failed"
	}
	return textReply(why + " while checking " + id + ". Nothing was changed; please try again in a few minutes.")
}

func storeFailure() Reply {
	return textReply("Something went wrong on our side (the database did not answer). Nothing was changed; please try again in a minute.")
}

// unwatch ends this channel's watch of a study.
func (h *Handler) unwatch(ctx context.Context, log *slog.Logger, sc slack.SlashCommand, cmd Command, name string) Reply {
	ctx, cancel := context.WithTimeout(ctx, h.ackTimeout)
	defer cancel()
	err := h.store.RemoveWatch(ctx, cmd.StudyID, sc.ChannelID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return textReply(fmt.Sprintf("This channel was not watching `%s`. `%s list` shows what it watches.", cmd.StudyID, name))
	case err != nil:
		log.Error("unwatch failed", slog.String("error", err.Error()))
		return storeFailure()
	}
	log.Info("watch removed")
	return textReply(fmt.Sprintf("Stopped watching `%s` in this channel. No more alerts about it will be posted here.", cmd.StudyID))
}

// list shows this channel's watches with how their polls are going.
func (h *Handler) list(ctx context.Context, log *slog.Logger, sc slack.SlashCommand, name string) Reply {
	ctx, cancel := context.WithTimeout(ctx, h.ackTimeout)
	defer cancel()
	studies, err := h.store.Studies(ctx, sc.ChannelID)
	if err != nil {
		log.Error("list failed", slog.String("error", err.Error()))
		return storeFailure()
	}
	if len(studies) == 0 {
		return textReply(fmt.Sprintf("This channel isn't watching any study yet. Start with `%s watch &lt;study id or link&gt;`.", name))
	}
	now := h.now()
	headline := fmt.Sprintf("This channel watches %d %s:", len(studies), plural(len(studies), "study", "studies"))
	b := newReplyBuilder(headline)
	b.section("*" + headline + "*")
	for i, st := range studies {
		if b.full(2) {
			b.context(fmt.Sprintf("…and %d more. Use `%s status &lt;id&gt;` for one study.", len(studies)-i, name))
			break
		}
		lines := []string{
			studyLink(st.Name, st.ID) + " · " + statusText(st.Status),
			"Last poll: " + pollText(st, now),
			"Open alerts: " + alertsText(st.OpenAlerts, now, 5),
			"Stall threshold: " + h.stallText(channelStall(st, sc.ChannelID)),
		}
		b.section(strings.Join(lines, "\n"))
	}
	return b.reply()
}

// status shows one watched study from stored data: per-URL progress, open
// alerts, the last poll and a 24-hour sparkline of total allocation.
func (h *Handler) status(ctx context.Context, log *slog.Logger, sc slack.SlashCommand, cmd Command, name string) Reply {
	ctx, cancel := context.WithTimeout(ctx, h.ackTimeout)
	defer cancel()
	notWatched := textReply(fmt.Sprintf("This channel isn't watching `%s`. Use `%s watch %s` first.", cmd.StudyID, name, cmd.StudyID))
	st, err := h.store.GetStudy(ctx, cmd.StudyID)
	if errors.Is(err, store.ErrNotFound) {
		return notWatched
	}
	if err != nil {
		log.Error("status failed", slog.String("error", err.Error()))
		return storeFailure()
	}
	if !slices.ContainsFunc(st.Watches, func(w store.Watch) bool { return w.ChannelID == sc.ChannelID }) {
		return notWatched
	}
	now := h.now()
	history, err := h.store.History(ctx, cmd.StudyID, now.Add(-24*time.Hour))
	if err != nil {
		log.Error("status failed: reading history", slog.String("error", err.Error()))
		return storeFailure()
	}

	headline := studyLink(st.Name, st.ID) + " · " + statusText(st.Status)
	b := newReplyBuilder(plainLabel(st.Name, st.ID) + ": " + st.Status)
	b.section(strings.Join([]string{
		headline,
		"Last poll: " + pollText(st, now),
		"Stall threshold: " + h.stallText(channelStall(st, sc.ChannelID)),
		"Open alerts: " + alertsText(st.OpenAlerts, now, 20),
	}, "\n"))
	if len(history) == 0 {
		b.context("No progress recorded yet: the first poll is still to come.")
		return b.reply()
	}
	last := history[len(history)-1]
	b.code(progressTable(last.URLs))
	b.context("Progress as of " + ago(last.ObservedAt, now) + " (recorded when it last changed).")
	if values := hourlyTotals(history, now); len(values) >= 2 {
		b.section(fmt.Sprintf("Allocated, last 24 h: `%s` %d → %d", sparkline(values), values[0], values[len(values)-1]))
	}
	return b.reply()
}

// hourlyTotals samples total allocation at the end of each of the last 24
// hours, using the value in force then. Hours before the first stored
// observation are left out rather than drawn as zero.
func hourlyTotals(history []store.Observation, now time.Time) []int {
	const buckets = 24
	start := now.Add(-buckets * time.Hour)
	var values []int
	i, have, current := 0, false, 0
	for b := 1; b <= buckets; b++ {
		end := start.Add(time.Duration(b) * time.Hour)
		for i < len(history) && !history[i].ObservedAt.After(end) {
			current, have = history[i].AllocatedTotal, true
			i++
		}
		if have {
			values = append(values, current)
		}
	}
	return values
}

// channelStall is the channel's stall override of a study, 0 for the default.
func channelStall(st store.Study, channelID string) time.Duration {
	for _, w := range st.Watches {
		if w.ChannelID == channelID {
			return w.StallAfter
		}
	}
	return 0
}

// stallText names a threshold, saying when it is the worker default.
func (h *Handler) stallText(d time.Duration) string {
	if d <= 0 {
		return textviz.Duration(h.stallAfter) + " (the default)"
	}
	return textviz.Duration(d)
}

// stallPhrase names a threshold inside a sentence: "12h" or "the default 6h".
func (h *Handler) stallPhrase(d time.Duration) string {
	if d <= 0 {
		return "the default " + textviz.Duration(h.stallAfter)
	}
	return textviz.Duration(d)
}

// pollText describes the last poll of a study.
func pollText(st store.Study, now time.Time) string {
	var s string
	switch {
	case st.LastPolledAt.IsZero():
		s = "not yet (the first poll is due " + until(st.NextPollAt, now) + ")"
	case st.LastPollOK:
		s = ago(st.LastPolledAt, now) + ", OK"
	default:
		s = fmt.Sprintf("%s, *failed* (%d in a row): %s", ago(st.LastPolledAt, now), st.ConsecutiveFailures,
			escape(textviz.Truncate(st.LastError, 200)))
	}
	if st.PollNote != "" {
		s += " — " + escape(textviz.Truncate(st.PollNote, 200))
	}
	return s
}

// alertsText lists open alerts, at most limit of them.
func alertsText(alerts []rules.OpenAlert, now time.Time, limit int) string {
	if len(alerts) == 0 {
		return "none"
	}
	parts := make([]string, 0, min(len(alerts), limit)+1)
	for i, a := range alerts {
		if i == limit {
			parts = append(parts, fmt.Sprintf("and %d more", len(alerts)-limit))
			break
		}
		p := ":rotating_light: " + ruleName(a.Rule)
		if a.ExternalURL != "" {
			p += " on " + escape(textviz.Truncate(a.ExternalURL, 60))
		}
		parts = append(parts, p+" (since "+ago(a.Since, now)+")")
	}
	return strings.Join(parts, ", ")
}

// ruleName is a rule's name in words.
func ruleName(r rules.Rule) string {
	switch r {
	case rules.OverAllocation:
		return "over-allocation"
	case rules.OverCapacity:
		return "over capacity"
	case rules.CapacityIncrease:
		return "capacity increase"
	case rules.Stalled:
		return "stalled"
	case rules.PollFailing:
		return "polls failing"
	default:
		return escape(string(r))
	}
}

// helpReply explains the commands, the stall= option and the alerts.
func helpReply(name, notUnderstood string, stallAfter time.Duration) Reply {
	headline := "Here is what I understand."
	if notUnderstood != "" {
		headline = "I didn't understand " + quote(notUnderstood) + ". " + headline
	}
	b := newReplyBuilder(headline)
	b.section(headline)
	b.section(strings.Join([]string{
		"*Commands*",
		"`" + name + " watch &lt;study id or link&gt; [stall=&lt;duration&gt;]` — watch a Prolific Taskflow study in this channel. " +
			"I check it with Prolific first. Watching again changes the stall threshold.",
		"`" + name + " unwatch &lt;study id&gt;` — stop watching it in this channel.",
		"`" + name + " list` — the studies this channel watches, their last poll and open alerts.",
		"`" + name + " status &lt;study id&gt;` — per-URL progress, open alerts and the last 24 hours.",
		"`" + name + " help` — this message.",
	}, "\n"))
	b.section(strings.Join([]string{
		"*stall=*",
		fmt.Sprintf("How long no participant may be allocated before I call the study stalled: `stall=90m`, `stall=12h`, "+
			"`stall=2d` or plain hours `stall=12`; between %s and %s. Without it the default is %s; `stall=default` goes back to it.",
			textviz.Duration(rules.MinStallAfter), textviz.Duration(rules.MaxStallAfter), textviz.Duration(stallAfter)),
	}, "\n"))
	b.section(strings.Join([]string{
		"*Alerts* (posted in the channel, once when they start and once when they clear)",
		"*over-allocation* — a URL has more participants than its total allocation; I say whether screen-out capacity explains it.",
		"*over capacity* — a URL has more participants than its allocation plus screen-out capacity: that should never happen.",
		"*capacity increase* — screen-outs added capacity to a URL (from → to).",
		"*stalled* — no URL gained a participant for the stall threshold while the study is ACTIVE and has room.",
		"*polls failing* — Prolific could not be asked several times in a row, or refused our token.",
	}, "\n"))
	return b.reply()
}

// plural picks the singular or plural form.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
