-- @step mirror cdc.source_doc
-- Version-guarded bulk upsert of one batch (deduped per key by the caller). Every document
-- that actually changed goes to pg_temp.cdc_changed with its previous and new state (the
-- new one saves later statements a mirror lookup), and to pg_temp.cdc_affected.
-- $1..$8 the columns, $9 = true for the backfill guards (an equal version applies again).
WITH input AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                $6::timestamptz[], $7::jsonb[], $8::bool[])
         AS i(entity, key, ct_t, ct_i, ordinal, wall_time, doc, deleted)
), up AS (
    INSERT INTO cdc.source_doc AS s
        (entity, key, ct_t, ct_i, ordinal, wall_time, doc, deleted, deleted_at)
    SELECT entity, key, ct_t, ct_i, ordinal, wall_time,
           CASE WHEN deleted THEN NULL ELSE doc END,
           deleted,
           CASE WHEN deleted THEN wall_time END
    FROM input
    ON CONFLICT (entity, key) DO UPDATE SET
        ct_t = EXCLUDED.ct_t, ct_i = EXCLUDED.ct_i, ordinal = EXCLUDED.ordinal,
        wall_time = EXCLUDED.wall_time, doc = EXCLUDED.doc,
        deleted = EXCLUDED.deleted, deleted_at = EXCLUDED.deleted_at
    WHERE (s.ct_t, s.ct_i, s.ordinal) < (EXCLUDED.ct_t, EXCLUDED.ct_i, EXCLUDED.ordinal)
       OR ($9::bool AND (s.ct_t, s.ct_i, s.ordinal) = (EXCLUDED.ct_t, EXCLUDED.ct_i, EXCLUDED.ordinal))
    -- xmax is 0 on a freshly inserted row version: there is no previous state to look up.
    RETURNING s.entity, s.key, s.doc, s.xmax = 0 AS inserted
), changed AS (
    INSERT INTO pg_temp.cdc_changed (entity, key, old_doc, doc)
    SELECT up.entity, up.key,
           -- Every part of the statement sees the mirror as it was before it: the previous
           -- state.
           CASE WHEN NOT up.inserted THEN
               (SELECT s0.doc FROM cdc.source_doc s0 WHERE s0.entity = up.entity AND s0.key = up.key)
           END,
           up.doc
    FROM up
    RETURNING entity, key
)
-- The changed documents are the first of the affected set (sql/affected.sql adds the rest).
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT entity, key FROM changed
RETURNING entity, key

-- @step mirror cdc.report_child
-- The changed reports' links to their children (cdc.report_child): those of the previous
-- documents are dropped here (by primary key), the new documents' added by the next statement.
DELETE FROM cdc.report_child l
USING (
    SELECT DISTINCT f.child, cdc.oid(e.v) AS child_key, c.key AS report_key
    FROM pg_temp.cdc_changed c
    CROSS JOIN {{report_children}}
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(c.old_doc -> f.field)) AS e(v)
    WHERE c.entity = 'daily_report' AND c.old_doc IS NOT NULL AND cdc.oid(e.v) IS NOT NULL
) o
WHERE l.entity = o.child AND l.child_key = o.child_key AND l.report_key = o.report_key

-- @step mirror cdc.report_child
INSERT INTO cdc.report_child (entity, child_key, report_key)
SELECT DISTINCT f.child, cdc.oid(e.v), c.key
FROM pg_temp.cdc_changed c
CROSS JOIN {{report_children}}
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(c.doc -> f.field)) AS e(v)
WHERE c.entity = 'daily_report' AND c.doc IS NOT NULL AND cdc.oid(e.v) IS NOT NULL
