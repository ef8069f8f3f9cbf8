-- Backfill bookkeeping (DESIGN §8): one row per backfill run of a pipeline (its source and the
-- change-stream position recorded before scanning) and one resumable checkpoint per
-- (pipeline, collection), written in the same transaction as each chunk's projection.

CREATE TABLE cdc.backfill_run (
    pipeline        text        PRIMARY KEY,
    source          text        NOT NULL CHECK (source IN ('mongo', 'dump')),
    -- The MongoDB database, or the dump folder as given on the command line.
    source_name     text        NOT NULL,
    -- Live source only: the change-stream position taken before the first chunk was scanned.
    resume_token    jsonb       NULL,
    cluster_time_t  bigint      NULL,
    cluster_time_i  bigint      NULL,
    -- Whether that position was handed to the capture (cdc.checkpoint) after the scan.
    handed_off_at   timestamptz NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz NULL
);

COMMENT ON TABLE cdc.backfill_run IS
    'The current (or last) backfill of a pipeline: its source and the pre-scan change-stream position.';

CREATE TABLE cdc.backfill_progress (
    pipeline        text        NOT NULL REFERENCES cdc.backfill_run (pipeline) ON DELETE CASCADE,
    collection      text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('running', 'complete', 'missing')),
    -- Live source: the _id of the last document of the last completed chunk (relaxed extended JSON).
    last_id         jsonb       NULL,
    -- Dump source: the byte offset just past the last completed chunk.
    byte_offset     bigint      NOT NULL DEFAULT 0,
    docs_done       bigint      NOT NULL DEFAULT 0,
    docs_total      bigint      NULL,
    docs_skipped    bigint      NOT NULL DEFAULT 0,
    -- Star rows written by this collection's chunks, by table: {"dim_employee": 257, ...}.
    rows_written    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz NULL,
    PRIMARY KEY (pipeline, collection)
);

COMMENT ON TABLE cdc.backfill_progress IS
    'Resumable backfill checkpoint per collection: last completed _id or dump byte offset, counts, status.';
