-- Tables rayetl published, and the job that did it: unpublish refuses tables not listed here
-- (unless forced), and a publish retried after a lost acknowledgement finds itself here.
-- Written in the same transaction as the publish itself.
CREATE TABLE IF NOT EXISTS rayetl.published_tables (
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    job_id       text NOT NULL,
    mode         text NOT NULL,          -- fail (new table), replace or append
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);
