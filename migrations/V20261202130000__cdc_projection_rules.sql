-- Which projection rules derived a pipeline's star rows: `bowmark-cdc reproject` and a backfill
-- that completes every watched collection record the binary's rules version (a constant bumped
-- whenever the projection's SQL semantics change). `status` and `run` compare it with their own:
-- an older version means the star rows need `bowmark-cdc reproject`. No row: rows derived before
-- the rules were tracked (older than version 2), unless the mirror is still empty.
CREATE TABLE cdc.projection_rules (
    pipeline       text        PRIMARY KEY,
    version        int         NOT NULL,
    reprojected_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE cdc.projection_rules IS
    'The projection rules version that last derived every star row of a pipeline (reproject or complete backfill).';
