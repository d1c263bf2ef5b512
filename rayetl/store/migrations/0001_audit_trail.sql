-- Audit trail: jobs, their tasks, and an append-only event log.
CREATE SCHEMA IF NOT EXISTS rayetl;

CREATE TABLE IF NOT EXISTS rayetl.jobs (
    id             text PRIMARY KEY,
    job_type       text NOT NULL,
    params         jsonb NOT NULL,
    status         text NOT NULL
                   CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    attempt        integer NOT NULL DEFAULT 1,
    current_stage  text,
    stage_index    integer NOT NULL DEFAULT 0,
    total_stages   integer NOT NULL,
    stage_progress jsonb NOT NULL DEFAULT '{}'::jsonb,
    result         jsonb,
    error          text,
    resumes        integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_status_updated_idx ON rayetl.jobs (status, updated_at);
CREATE INDEX IF NOT EXISTS jobs_type_created_idx ON rayetl.jobs (job_type, created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_created_idx ON rayetl.jobs (created_at DESC);

CREATE TABLE IF NOT EXISTS rayetl.tasks (
    id          text PRIMARY KEY,  -- hash(job id, stage, key): a re-planned task keeps its row
    job_id      text NOT NULL REFERENCES rayetl.jobs (id) ON DELETE CASCADE,
    stage       text NOT NULL,
    stage_index integer NOT NULL,
    seq         integer NOT NULL,  -- order of the task in its stage's plan
    task_key    text NOT NULL,
    task_type   text NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    attempt     integer NOT NULL DEFAULT 0,
    retryable   boolean,
    error       text,
    result      jsonb,             -- small summary for people
    output      jsonb,             -- the output itself, kept only for durable stages
    node        text,
    worker      text,
    started_at  timestamptz,
    finished_at timestamptz,
    duration_s  double precision
);
CREATE INDEX IF NOT EXISTS tasks_job_stage_seq_idx ON rayetl.tasks (job_id, stage_index, seq);
CREATE INDEX IF NOT EXISTS tasks_job_status_idx ON rayetl.tasks (job_id, status);

CREATE TABLE IF NOT EXISTS rayetl.job_events (
    id         bigserial PRIMARY KEY,
    job_id     text NOT NULL REFERENCES rayetl.jobs (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    event      text NOT NULL,
    stage      text,
    task_key   text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS job_events_job_idx ON rayetl.job_events (job_id, id);

-- The event log is history: refuse edits so nobody rewrites it by accident.
CREATE OR REPLACE FUNCTION rayetl.refuse_event_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rayetl.job_events is append-only';
END;
$$;
DROP TRIGGER IF EXISTS job_events_append_only ON rayetl.job_events;
CREATE TRIGGER job_events_append_only BEFORE UPDATE ON rayetl.job_events
    FOR EACH ROW EXECUTE FUNCTION rayetl.refuse_event_update();
