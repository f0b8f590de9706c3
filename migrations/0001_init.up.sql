-- Studies being watched, with what the poller and the rules remember between polls.
CREATE TABLE studies (
    id                   text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{24}$'),
    name                 text        NOT NULL DEFAULT '',
    status               text        NOT NULL DEFAULT '',
    -- When status was last read from Prolific; the poller refreshes it only now and then.
    status_checked_at    timestamptz,
    created_at           timestamptz NOT NULL,
    -- Scheduling: a study is due when next_poll_at has passed and no live lease holds it.
    next_poll_at         timestamptz NOT NULL,
    lease_owner          text,
    lease_until          timestamptz,
    -- Set by a webhook, cleared by the claim: a webhook that arrives while
    -- the study is being polled must still get a poll (and a status read)
    -- after that one, instead of being overwritten by its schedule.
    poll_requested       boolean     NOT NULL DEFAULT false,
    status_recheck       boolean     NOT NULL DEFAULT false,
    -- The outcome of the last poll, shown by `studies list` and `/taskflow list`.
    last_polled_at       timestamptz,
    last_poll_ok         boolean,
    last_error           text        NOT NULL DEFAULT '',
    poll_note            text        NOT NULL DEFAULT '',
    -- Rule state (rules.StudyState) besides the last observation and open alerts.
    consecutive_failures integer     NOT NULL DEFAULT 0,
    stall_since          timestamptz
);

-- Serves the claim, which takes due studies in (next_poll_at, id) order.
CREATE INDEX studies_due_idx ON studies (next_poll_at, id);
-- Serves the claim's first part, the few studies a webhook asked to poll,
-- without reading every study due in a long cycle.
CREATE INDEX studies_requested_idx ON studies (next_poll_at, id) WHERE poll_requested;

-- Which Slack channel watches which study. Removing the last watch stops polling.
CREATE TABLE watches (
    study_id            text        NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    channel_id          text        NOT NULL,
    team_id             text        NOT NULL DEFAULT '',
    added_by            text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    -- NULL means the worker-wide STALL_AFTER applies.
    stall_after_seconds bigint CHECK (stall_after_seconds > 0),
    PRIMARY KEY (study_id, channel_id)
);

CREATE INDEX watches_channel_id_idx ON watches (channel_id);

-- Progress history. A row is written only when progress differs from the study's previous row.
CREATE TABLE observations (
    id              bigserial PRIMARY KEY,
    study_id        text        NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    observed_at     timestamptz NOT NULL,
    progress        jsonb       NOT NULL,
    allocated_total integer     NOT NULL
);

-- Serves "previous observation" and time-window history without scanning.
CREATE INDEX observations_study_time_idx ON observations (study_id, observed_at DESC, id DESC);
-- Serves retention pruning.
CREATE INDEX observations_observed_at_idx ON observations (observed_at);

-- Alerts that fired; an open alert has no resolved_at.
CREATE TABLE alerts (
    id           bigserial PRIMARY KEY,
    study_id     text        NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    rule         text        NOT NULL,
    external_url text        NOT NULL DEFAULT '',
    fired_at     timestamptz NOT NULL,
    resolved_at  timestamptz
);

-- At most one open alert per (study, rule, URL). The URL is indexed by its
-- hash: survey URLs can be longer than a btree entry may be.
CREATE UNIQUE INDEX alerts_open_idx ON alerts (study_id, rule, md5(external_url)) WHERE resolved_at IS NULL;
CREATE INDEX alerts_resolved_at_idx ON alerts (resolved_at) WHERE resolved_at IS NOT NULL;

-- One row per transition and watching channel, written in the poll's transaction.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    study_id        text        NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    alert_id        bigint      REFERENCES alerts (id) ON DELETE SET NULL,
    channel_id      text        NOT NULL,
    state           text        NOT NULL,
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    claim_owner     text,
    claimed_until   timestamptz,
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      text        NOT NULL DEFAULT '',
    slack_channel   text,
    slack_ts        text
);

CREATE INDEX outbox_pending_idx ON outbox (next_attempt_at, id) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_alert_idx ON outbox (alert_id, channel_id) WHERE alert_id IS NOT NULL;
CREATE INDEX outbox_created_at_idx ON outbox (created_at);

-- Per-channel pacing shared by every replica.
CREATE TABLE slack_channels (
    channel_id   text PRIMARY KEY,
    next_send_at timestamptz NOT NULL
);

-- Prolific webhook deliveries already handled (X-Event-ID), for deduplication.
CREATE TABLE webhook_events (
    event_id    text PRIMARY KEY,
    received_at timestamptz NOT NULL
);

CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);
