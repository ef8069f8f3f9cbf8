-- Bulk loading (README, Operations): a backfill into empty star tables drops their non-unique
-- indexes and foreign keys for the load and rebuilds them after it, as pg_restore does. The
-- definitions wait here meanwhile, so a killed backfill leaves a record of what to rebuild:
-- the next backfill of the database, or `bowmark-cdc migrate`, rebuilds it.
CREATE TABLE cdc.deferred_ddl (
    table_name  text        NOT NULL,
    name        text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('index', 'constraint')),
    -- index: the CREATE INDEX statement; constraint: the ALTER TABLE … ADD CONSTRAINT statement.
    statement   text        NOT NULL,
    deferred_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, name)
);

COMMENT ON TABLE cdc.deferred_ddl IS
    'Indexes and foreign keys of star tables dropped for a bulk backfill load, to rebuild after it.';
