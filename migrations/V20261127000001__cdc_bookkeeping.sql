-- bowmark-cdc bookkeeping lives in schema cdc only; the star schema above stays legacy-exact.

CREATE SCHEMA cdc;

-- The capture checkpoint: one row per pipeline, the resume token of the newest change-stream
-- event whose publish (and every earlier one) was confirmed. The token is opaque: stored whole.
CREATE TABLE cdc.checkpoint (
    pipeline       text PRIMARY KEY,
    resume_token   jsonb NOT NULL,
    cluster_time_t bigint,
    cluster_time_i bigint,
    event_id       text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
