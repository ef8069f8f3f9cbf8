-- Daily reports (degenerate dimension) and jobsite materials with their rates.
-- $1 = report time zone, $2 = this apply's synced_at stamp.

-- @stmt dim_daily_report
-- Derivable: the report is live and its jobsite and crew are live documents.
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
  AND EXISTS (SELECT 1 FROM cdc.source_doc l WHERE l.entity = 'jobsite' AND l.key = j.mongo_id AND NOT l.deleted) AND EXISTS (SELECT 1 FROM cdc.source_doc l WHERE l.entity = 'crew' AND l.key = c.mongo_id AND NOT l.deleted)
ON CONFLICT (mongo_id) DO UPDATE SET
    jobsite_id = EXCLUDED.jobsite_id, crew_id = EXCLUDED.crew_id,
    report_date = EXCLUDED.report_date, approved = EXCLUDED.approved,
    payroll_complete = EXCLUDED.payroll_complete, archived = EXCLUDED.archived,
    synced_at = EXCLUDED.synced_at

-- @stmt dim_daily_report
-- No longer derivable (deleted, or its jobsite or crew gone): archived, as the legacy delete.
UPDATE dim_daily_report t SET archived = true, synced_at = now()
FROM pg_temp.cdc_affected a
WHERE a.entity = 'daily_report' AND t.mongo_id = a.key
  AND t.synced_at IS DISTINCT FROM $2 AND NOT t.archived

-- @stmt dim_jobsite_material
-- jobsite_id: the jobsite whose materials[] holds it, else the (live) jobsite of a report one of
-- its shipments is listed in (DESIGN §7.4); the lowest key wins so the choice is deterministic.
INSERT INTO dim_jobsite_material AS t
    (mongo_id, jobsite_id, material_id, supplier_id, quantity, unit, cost_type, delivered,
     synced_at)
SELECT jm.key, j.id, mat.id, sup.id, COALESCE(cdc.num(jm.doc -> 'quantity'), 0),
       {{fit dim_jobsite_material unit jm.key COALESCE(jm.doc ->> 'unit', '')}},
       {{fit dim_jobsite_material cost_type jm.key COALESCE(jm.doc ->> 'costType', 'rate')}},
       cdc.bool(jm.doc -> 'delivered'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT jm0.* FROM cdc.source_doc jm0 WHERE jm0.entity = a.entity AND jm0.key = a.key OFFSET 0) jm
CROSS JOIN LATERAL (
    SELECT COALESCE(
        (SELECT min(k) FROM (
            SELECT js.key AS k FROM cdc.source_doc js
            WHERE js.entity = 'jobsite' AND js.doc -> 'materials' @> cdc.oid_probe(jm.key)
            OFFSET 0) c),
        (SELECT cdc.oid(r.doc -> 'jobsite') FROM cdc.source_doc r
         WHERE r.entity = 'daily_report' AND r.key = (
            SELECT min(k) FROM (
                SELECT r1.key AS k
                FROM cdc.source_doc s
                JOIN cdc.report_child rc ON rc.entity = 'material_shipment' AND rc.child_key = s.key
                JOIN cdc.source_doc r1 ON r1.entity = 'daily_report' AND r1.key = rc.report_key
                WHERE s.entity = 'material_shipment'
                  AND cdc.oid(s.doc -> 'jobsiteMaterial') = jm.key
                  AND EXISTS (SELECT 1 FROM cdc.source_doc l
                              WHERE l.entity = 'jobsite' AND l.key = cdc.oid(r1.doc -> 'jobsite')
                                AND NOT l.deleted)
                OFFSET 0) f))) AS jobsite_key
    -- Once per jobsite material (the join below would evaluate it again).
    OFFSET 0
) o
JOIN dim_jobsite j ON j.mongo_id = o.jobsite_key
JOIN dim_material mat ON mat.mongo_id = cdc.oid(jm.doc -> 'material')
JOIN dim_company sup ON sup.mongo_id = cdc.oid(jm.doc -> 'supplier')
WHERE a.entity = 'jobsite_material' AND NOT jm.deleted AND jm.doc IS NOT NULL
  AND EXISTS (SELECT 1 FROM cdc.source_doc l WHERE l.entity = 'jobsite' AND l.key = j.mongo_id AND NOT l.deleted) AND EXISTS (SELECT 1 FROM cdc.source_doc l WHERE l.entity = 'material' AND l.key = mat.mongo_id AND NOT l.deleted)
  AND EXISTS (SELECT 1 FROM cdc.source_doc l WHERE l.entity = 'company' AND l.key = sup.mongo_id AND NOT l.deleted)
ON CONFLICT (mongo_id) DO UPDATE SET
    jobsite_id = EXCLUDED.jobsite_id, material_id = EXCLUDED.material_id,
    supplier_id = EXCLUDED.supplier_id, quantity = EXCLUDED.quantity, unit = EXCLUDED.unit,
    cost_type = EXCLUDED.cost_type, delivered = EXCLUDED.delivered,
    synced_at = EXCLUDED.synced_at

-- @stmt dim_jobsite_material
-- No longer derivable (deleted, or no jobsite claims it and no report lists its shipments):
-- the row goes (the table has no archive column). Only rates and archived facts reference it.
DELETE FROM dim_jobsite_material t
USING pg_temp.cdc_affected a
WHERE a.entity = 'jobsite_material' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2

-- @stmt dim_jobsite_material_rate
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
