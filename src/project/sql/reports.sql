-- Daily reports (degenerate dimension) and jobsite materials with their rates.
-- $1 = report time zone, $2 = this apply's synced_at stamp.

-- @step placeholder daily_report
-- A report's jobsite or crew that has no row (its document is gone or never existed) gets a
-- placeholder row keyed by the missing id, filled in place when the document appears: no
-- report, hour or cost is dropped for a missing reference (docs/projection.md).
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(r.doc -> 'jobsite') AS jobsite_key, cdc.oid(r.doc -> 'crew') AS crew_key
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT r0.doc FROM cdc.source_doc r0
                        WHERE r0.entity = a.entity AND r0.key = a.key AND NOT r0.deleted OFFSET 0) r
    WHERE a.entity = 'daily_report'
), j AS (
    {{placeholder dim_jobsite jobsite_key}}
), c AS (
    {{placeholder dim_crew crew_key}}
)
SELECT (SELECT count(*) FROM j) + (SELECT count(*) FROM c)

-- @step upsert dim_daily_report
-- Derivable: the report is live, dated, and names its jobsite and crew (whose rows exist, as
-- the documents or as placeholders).
INSERT INTO dim_daily_report AS t
    (mongo_id, jobsite_id, crew_id, report_date, approved, payroll_complete, archived, synced_at)
SELECT r.key, j.id, c.id, cdc.day(cdc.ts(r.doc -> 'date'), $1),
       cdc.bool(r.doc -> 'approved'), cdc.bool(r.doc -> 'payrollComplete'),
       cdc.bool(r.doc -> 'archived'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT r0.* FROM cdc.source_doc r0 WHERE r0.entity = a.entity AND r0.key = a.key OFFSET 0) r
JOIN dim_jobsite j ON j.mongo_id = cdc.oid(r.doc -> 'jobsite')
JOIN dim_crew c ON c.mongo_id = cdc.oid(r.doc -> 'crew')
WHERE a.entity = 'daily_report' AND NOT r.deleted AND r.doc IS NOT NULL
  AND cdc.ts(r.doc -> 'date') IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    jobsite_id = EXCLUDED.jobsite_id, crew_id = EXCLUDED.crew_id,
    report_date = EXCLUDED.report_date, approved = EXCLUDED.approved,
    payroll_complete = EXCLUDED.payroll_complete, archived = EXCLUDED.archived,
    synced_at = EXCLUDED.synced_at

-- @step cleanup dim_daily_report
-- No longer derivable (deleted, undated): archived, as the legacy delete.
UPDATE dim_daily_report t SET archived = true, synced_at = now()
FROM pg_temp.cdc_affected a
WHERE a.entity = 'daily_report' AND t.mongo_id = a.key
  AND t.synced_at IS DISTINCT FROM $2 AND NOT t.archived

-- @step placeholder jobsite_material
-- A jobsite material's material or supplier that has no row: a placeholder keyed by the missing
-- id (the nil id when the jobsite material itself is gone or names none).
WITH refs AS MATERIALIZED (
    SELECT COALESCE(cdc.oid(jm.doc -> 'material'), '000000000000000000000000') AS material_key,
           COALESCE(cdc.oid(jm.doc -> 'supplier'), '000000000000000000000000') AS supplier_key
    FROM pg_temp.cdc_affected a
    LEFT JOIN LATERAL (SELECT jm0.doc FROM cdc.source_doc jm0
                       WHERE jm0.entity = a.entity AND jm0.key = a.key AND NOT jm0.deleted
                       OFFSET 0) jm ON true
    WHERE a.entity = 'jobsite_material'
), m AS (
    {{placeholder dim_material material_key}}
), c AS (
    {{placeholder dim_company supplier_key}}
)
SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM c)

-- @step upsert dim_jobsite_material
-- jobsite_id: the jobsite whose materials[] holds it, else the jobsite of a report one of
-- its shipments is listed in (README, "Differences from the legacy sync" 4); the lowest key wins so the choice is deterministic.
-- A jobsite material whose document is gone but that a jobsite or a shipment still names is
-- a placeholder row (no rates: its shipments cost 0, estimated), filled in place when the
-- document appears.
INSERT INTO dim_jobsite_material AS t
    (mongo_id, jobsite_id, material_id, supplier_id, quantity, unit, cost_type, delivered,
     synced_at)
SELECT a.key, j.id, mat.id, sup.id, COALESCE(cdc.num(jm.doc -> 'quantity'), 0),
       {{fit dim_jobsite_material unit a.key COALESCE(jm.doc ->> 'unit', '')}},
       {{fit dim_jobsite_material cost_type a.key COALESCE(jm.doc ->> 'costType', 'rate')}},
       cdc.bool(jm.doc -> 'delivered'), $2
FROM pg_temp.cdc_affected a
LEFT JOIN LATERAL (SELECT jm0.doc FROM cdc.source_doc jm0
                   WHERE jm0.entity = a.entity AND jm0.key = a.key AND NOT jm0.deleted
                   OFFSET 0) jm ON true
CROSS JOIN LATERAL (
    SELECT COALESCE(
        (SELECT min(k) FROM (
            SELECT js.key AS k FROM cdc.source_doc js
            WHERE js.entity = 'jobsite' AND js.doc -> 'materials' @> cdc.oid_probe(a.key)
            OFFSET 0) c),
        (SELECT cdc.oid(r.doc -> 'jobsite') FROM cdc.source_doc r
         WHERE r.entity = 'daily_report' AND r.key = (
            SELECT min(k) FROM (
                SELECT r1.key AS k
                FROM cdc.source_doc s
                JOIN cdc.report_child rc ON rc.entity = 'material_shipment' AND rc.child_key = s.key
                JOIN cdc.source_doc r1 ON r1.entity = 'daily_report' AND r1.key = rc.report_key
                WHERE s.entity = 'material_shipment'
                  AND cdc.oid(s.doc -> 'jobsiteMaterial') = a.key
                  AND cdc.ts(r1.doc -> 'date') IS NOT NULL
                OFFSET 0) f))) AS jobsite_key
    -- Once per jobsite material (the join below would evaluate it again).
    OFFSET 0
) o
JOIN dim_jobsite j ON j.mongo_id = o.jobsite_key
JOIN dim_material mat ON mat.mongo_id = COALESCE(cdc.oid(jm.doc -> 'material'), '000000000000000000000000')
JOIN dim_company sup ON sup.mongo_id = COALESCE(cdc.oid(jm.doc -> 'supplier'), '000000000000000000000000')
WHERE a.entity = 'jobsite_material'
ON CONFLICT (mongo_id) DO UPDATE SET
    jobsite_id = EXCLUDED.jobsite_id, material_id = EXCLUDED.material_id,
    supplier_id = EXCLUDED.supplier_id, quantity = EXCLUDED.quantity, unit = EXCLUDED.unit,
    cost_type = EXCLUDED.cost_type, delivered = EXCLUDED.delivered,
    synced_at = EXCLUDED.synced_at

-- @step cleanup dim_jobsite_material
-- No longer derivable (no jobsite claims it and no report lists its shipments): the row goes
-- (the table has no archive column) unless a fact row still references it, which keeps it:
-- no ON DELETE CASCADE ever fires because of a source change.
DELETE FROM dim_jobsite_material t
USING pg_temp.cdc_affected a
WHERE a.entity = 'jobsite_material' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2
  AND NOT EXISTS (SELECT 1 FROM fact_material_shipment f WHERE f.jobsite_material_id = t.id)

-- @step placeholder jobsite_material unused
-- The nil-id material and supplier placeholders (a jobsite material whose document is gone or
-- names none) go once no jobsite material uses them: a backfill derives the jobsites' claimed
-- materials before their documents load. Nothing references them, so nothing cascades.
WITH m AS (
    DELETE FROM dim_material t
    WHERE t.mongo_id = '000000000000000000000000'
      AND NOT EXISTS (SELECT 1 FROM dim_jobsite_material j WHERE j.material_id = t.id)
    RETURNING 1
), c AS (
    DELETE FROM dim_company t
    WHERE t.mongo_id = '000000000000000000000000'
      AND NOT EXISTS (SELECT 1 FROM dim_jobsite_material j WHERE j.supplier_id = t.id)
      AND NOT EXISTS (SELECT 1 FROM fact_invoice f WHERE f.company_id = t.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM c)

-- @step upsert dim_jobsite_material_rate
-- mongo_id discriminates: NULL = rates[], else the deliveredRates[] or scenarios[] entry _id.
WITH t AS MATERIALIZED (
    {{derived dim_jobsite_material jobsite_material}}
), gone AS (
    DELETE FROM dim_jobsite_material_rate r
    USING t
    WHERE r.jobsite_material_id = t.id
)
INSERT INTO dim_jobsite_material_rate
    (jobsite_material_id, mongo_id, rate, effective_date, estimated, synced_at)
SELECT t.id, x.mid, cdc.num(x.r -> 'rate'), cdc.day(cdc.ts(x.r -> 'date'), $1),
       cdc.bool(x.r -> 'estimated'), $2
FROM t
CROSS JOIN LATERAL (SELECT jm0.* FROM cdc.source_doc jm0 WHERE jm0.entity = t.entity AND jm0.key = t.key OFFSET 0) jm
CROSS JOIN LATERAL (
    SELECT NULL::text AS mid, e.v AS r
    FROM jsonb_array_elements(cdc.arr(jm.doc -> 'rates')) AS e(v)
    UNION ALL
    SELECT cdc.oid(d.v -> '_id'), e.v
    FROM jsonb_array_elements(cdc.arr(jm.doc -> 'deliveredRates')) AS d(v)
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(d.v -> 'rates')) AS e(v)
    UNION ALL
    SELECT cdc.oid(d.v -> '_id'), e.v
    FROM jsonb_array_elements(cdc.arr(jm.doc -> 'scenarios')) AS d(v)
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(d.v -> 'rates')) AS e(v)
) x
WHERE cdc.num(x.r -> 'rate') IS NOT NULL AND cdc.ts(x.r -> 'date') IS NOT NULL
