-- One row per `bowmark-cdc verify` run: what it compared, how many rows or documents drifted,
-- and the report. The daemon exports the latest run of its pipeline as
-- cdc_verify_drift_rows and cdc_verify_last_run_timestamp_seconds.
CREATE TABLE cdc.verify_run (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline    text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    -- 'mongodb', 'dump' or 'none' (the star check only)
    source      text        NOT NULL,
    -- documents (source against mirror) plus star rows (mirror against star) that drifted
    drift_rows  bigint      NOT NULL,
    report      jsonb       NOT NULL
);

CREATE INDEX verify_run_pipeline_finished ON cdc.verify_run (pipeline, finished_at DESC);

COMMENT ON TABLE cdc.verify_run IS
    'Runs of bowmark-cdc verify (source against mirror, mirror against star) and their drift.';
