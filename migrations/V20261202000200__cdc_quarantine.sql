-- Quarantine, not collateral loss (docs/projection.md, "Quarantine"): a source document whose
-- own star rows PostgreSQL still rejects is listed here, its rows are left out, and everything
-- else of the batch applies. A newer version of the document, or any later derivation of it
-- that succeeds, removes it from the list.
CREATE TABLE cdc.quarantine (
    entity     text        NOT NULL,
    key        text        NOT NULL,
    -- The mirror version that failed.
    ct_t       bigint      NOT NULL,
    ct_i       bigint      NOT NULL,
    ordinal    bigint      NOT NULL,
    -- The failing step, SQLSTATE, table, column and constraint; never row values.
    reason     text        NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, key)
);
