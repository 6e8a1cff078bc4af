-- Schema version 1. Times are microseconds since the Unix epoch (UTC).
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    workflow    TEXT NOT NULL,
    status      TEXT NOT NULL,           -- RunStatus name: RUNNING, COMPLETED, ...
    input       TEXT,                    -- compact JSON, NULL when triggered without input
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    error       TEXT,
    attempt     INTEGER NOT NULL DEFAULT 1,
    start_task  TEXT,                    -- set on a resumed run: the task it starts from
    resumed_from TEXT                    -- the run it resumes
);
CREATE INDEX runs_by_start ON runs (started_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, started_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow ON runs (workflow, started_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow_id ON runs (workflow_id, started_at DESC);
-- One open run per workflowId, whatever the engine's memory says.
CREATE UNIQUE INDEX runs_one_running ON runs (workflow_id) WHERE status IN ('RUNNING', 'PAUSED');

CREATE TABLE task_attempts (
    run_id      TEXT NOT NULL,
    task        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,           -- AttemptStatus
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    input       TEXT,
    output      TEXT,
    error_type  TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, task, attempt)
) WITHOUT ROWID;

-- Per workflow: paused or not, and where its schedule stands.
CREATE TABLE workflow_state (
    workflow      TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    next_fire_at  INTEGER,               -- the schedule's next firing
    last_fired_at INTEGER,
    schedule      TEXT                   -- the schedule text next_fire_at was computed for
) WITHOUT ROWID;

-- Every scheduled firing, including the ones skipped and why.
CREATE TABLE schedule_events (
    workflow TEXT NOT NULL,
    at       INTEGER NOT NULL,
    outcome  TEXT NOT NULL,              -- FIRED, SKIPPED, FAILED
    run_id   TEXT,
    reason   TEXT
);
CREATE INDEX schedule_events_by_workflow ON schedule_events (workflow, at DESC);

-- Idempotency-Key header of a trigger -> the run it started.
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    workflow   TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
