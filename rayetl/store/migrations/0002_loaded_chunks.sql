-- Chunks already copied into a staging table: a retried chunk finds its key here and is skipped.
-- Written in the same transaction as the chunk's rows, so a key is here exactly when its rows are.
CREATE TABLE IF NOT EXISTS rayetl.loaded_chunks (
    staging_table text NOT NULL,   -- quoted and schema-qualified: "public"."_rayetl_stage_roads_…"
    chunk_key     text NOT NULL,
    rows          bigint NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (staging_table, chunk_key)
);
