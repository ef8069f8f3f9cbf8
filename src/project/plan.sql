-- The projection plan, fully expanded from src/project/sql/*.sql (generated: a test
-- keeps it current; `UPDATE_PLAN_SNAPSHOT=1 cargo test plan` rewrites it).
-- In the affected-set and derivation steps $1 is the report time zone, $2 the synced_at stamp.

-- ===== mirror =====

-- @step mirror cdc.source_doc (reads the batch)
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

-- @step mirror cdc.report_child (reads affected keys of daily_report)
-- The changed reports' links to their children (cdc.report_child): those of the previous
-- documents are dropped here (by primary key), the new documents' added by the next statement.
DELETE FROM cdc.report_child l
USING (
    SELECT DISTINCT f.child, cdc.oid(e.v) AS child_key, c.key AS report_key
    FROM pg_temp.cdc_changed c
    CROSS JOIN (VALUES ('material_shipment', 'materialShipment'), ('employee_work', 'employeeWork'), ('vehicle_work', 'vehicleWork'), ('production', 'production')) AS f(child, field)
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(c.old_doc -> f.field)) AS e(v)
    WHERE c.entity = 'daily_report' AND c.old_doc IS NOT NULL AND cdc.oid(e.v) IS NOT NULL
) o
WHERE l.entity = o.child AND l.child_key = o.child_key AND l.report_key = o.report_key

-- @step mirror cdc.report_child (reads affected keys of daily_report)
INSERT INTO cdc.report_child (entity, child_key, report_key)
SELECT DISTINCT f.child, cdc.oid(e.v), c.key
FROM pg_temp.cdc_changed c
CROSS JOIN (VALUES ('material_shipment', 'materialShipment'), ('employee_work', 'employeeWork'), ('vehicle_work', 'vehicleWork'), ('production', 'production')) AS f(child, field)
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(c.doc -> f.field)) AS e(v)
WHERE c.entity = 'daily_report' AND c.doc IS NOT NULL AND cdc.oid(e.v) IS NOT NULL

-- ===== affected set =====

-- @step closure jobsite,crew -> daily_report (reads affected keys of jobsite, crew)
-- A jobsite or crew -> its daily reports (a waiting report appears; crew_type; trucking rates).
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT 'daily_report', r.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc r ON r.entity = 'daily_report' AND cdc.oid(r.doc -> 'jobsite') = c.key
WHERE c.entity = 'jobsite'
UNION
SELECT 'daily_report', r.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc r ON r.entity = 'daily_report' AND cdc.oid(r.doc -> 'crew') = c.key
WHERE c.entity = 'crew'
ON CONFLICT DO NOTHING

-- @step closure daily_report -> employee_work,vehicle_work,material_shipment,production (reads affected keys of daily_report)
-- A daily report -> its children in the mirror, listed now or before this change (a child
-- the mirror has not seen has nothing to derive: a backfill loads reports before children).
WITH docs AS (
    SELECT s.doc
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'daily_report' AND s.doc IS NOT NULL
    UNION ALL
    SELECT c.old_doc FROM pg_temp.cdc_changed c
    WHERE c.entity = 'daily_report' AND c.old_doc IS NOT NULL
)
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT DISTINCT l.child, l.key
FROM (
    -- Children not affected yet (a streamed report usually arrives with its children)...
    SELECT f.child, cdc.oid(e.v) AS key
    FROM docs d
    CROSS JOIN (VALUES ('material_shipment', 'materialShipment'), ('employee_work', 'employeeWork'), ('vehicle_work', 'vehicleWork'), ('production', 'production')) AS f(child, field)
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(d.doc -> f.field)) AS e(v)
    WHERE cdc.oid(e.v) IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM pg_temp.cdc_affected a
                      WHERE a.entity = f.child AND a.key = cdc.oid(e.v))
    OFFSET 0) l
-- ...that the mirror holds: a lookup per child (OFFSET 0: never a semi-join reading a whole
-- collection).
WHERE EXISTS (SELECT 1 FROM cdc.source_doc s WHERE s.entity = l.child AND s.key = l.key
              OFFSET 0)
  -- A backfill loads the reports before any child: then there is nothing to look up.
  AND EXISTS (SELECT 1 FROM cdc.source_doc s
              WHERE s.entity IN ('material_shipment', 'employee_work', 'vehicle_work', 'production'))
ON CONFLICT DO NOTHING

-- @step closure employee,vehicle -> employee_work,vehicle_work (reads affected keys of employee, vehicle)
-- An employee or vehicle -> its work items (re-costing; waiting items appear).
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT 'employee_work', w.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc w ON w.entity = 'employee_work' AND cdc.oid(w.doc -> 'employee') = c.key
WHERE c.entity = 'employee'
UNION
SELECT 'vehicle_work', w.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc w ON w.entity = 'vehicle_work' AND cdc.oid(w.doc -> 'vehicle') = c.key
WHERE c.entity = 'vehicle'
ON CONFLICT DO NOTHING

-- @step closure jobsite,material,company,invoice -> jobsite_material (reads affected keys of jobsite, material, company, invoice)
-- Jobsite materials: claimed by a changed jobsite (now or before), referencing a changed
-- material or supplier, or listing a changed invoice.
WITH jdocs AS (
    SELECT s.doc FROM pg_temp.cdc_changed c
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = c.entity AND s0.key = c.key OFFSET 0) s
    WHERE c.entity = 'jobsite' AND s.doc IS NOT NULL
    UNION ALL
    SELECT c.old_doc FROM pg_temp.cdc_changed c
    WHERE c.entity = 'jobsite' AND c.old_doc IS NOT NULL
)
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT 'jobsite_material', cdc.oid(e.v)
FROM jdocs CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(jdocs.doc -> 'materials')) AS e(v)
WHERE cdc.oid(e.v) IS NOT NULL
UNION
SELECT 'jobsite_material', jm.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc jm ON jm.entity = 'jobsite_material'
 AND ((c.entity = 'material' AND cdc.oid(jm.doc -> 'material') = c.key)
   OR (c.entity = 'company' AND cdc.oid(jm.doc -> 'supplier') = c.key))
WHERE c.entity IN ('material', 'company')
UNION
SELECT 'jobsite_material', jm.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc jm ON jm.entity = 'jobsite_material'
 AND jm.doc -> 'invoices' @> cdc.oid_probe(c.key)
WHERE c.entity = 'invoice'
ON CONFLICT DO NOTHING

-- @step closure jobsite,jobsite_material,company -> invoice (reads affected keys of jobsite, jobsite_material, company)
-- Invoices listed by a changed jobsite or jobsite material, now or before (direction and
-- the material-linked exclusion depend on those arrays); invoices of a changed company.
WITH docs AS (
    SELECT c.entity, s.doc FROM pg_temp.cdc_changed c
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = c.entity AND s0.key = c.key OFFSET 0) s
    WHERE c.entity IN ('jobsite', 'jobsite_material') AND s.doc IS NOT NULL
    UNION ALL
    SELECT c.entity, c.old_doc FROM pg_temp.cdc_changed c
    WHERE c.entity IN ('jobsite', 'jobsite_material') AND c.old_doc IS NOT NULL
)
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT DISTINCT 'invoice', cdc.oid(e.v)
FROM docs
CROSS JOIN (VALUES ('jobsite', 'revenueInvoices'), ('jobsite', 'expenseInvoices'),
                   ('jobsite_material', 'invoices')) AS f(entity, field)
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(docs.doc -> f.field)) AS e(v)
WHERE f.entity = docs.entity AND cdc.oid(e.v) IS NOT NULL
UNION
SELECT 'invoice', i.key
FROM pg_temp.cdc_changed c
JOIN cdc.source_doc i ON i.entity = 'invoice' AND cdc.oid(i.doc -> 'company') = c.key
WHERE c.entity = 'company'
ON CONFLICT DO NOTHING

-- @step closure jobsite_material -> material_shipment (reads affected keys of jobsite_material)
-- An affected jobsite material -> the shipments using it (rates, cost type, appearance).
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT 'material_shipment', s.key
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = 'material_shipment'
 AND cdc.oid(s.doc -> 'jobsiteMaterial') = a.key
WHERE a.entity = 'jobsite_material'
ON CONFLICT DO NOTHING

-- @step closure material_shipment -> jobsite_material (reads affected keys of material_shipment)
-- An affected shipment -> its jobsite material, now and before, when no jobsite claims the
-- material: only then does its jobsite come from the reports of its shipments (README, "Differences from the legacy sync" 4).
-- (A claim that comes or goes is a jobsite change, handled above.)
WITH docs AS (
    SELECT s.doc FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'material_shipment' AND s.doc IS NOT NULL
    UNION ALL
    SELECT c.old_doc FROM pg_temp.cdc_changed c
    WHERE c.entity = 'material_shipment' AND c.old_doc IS NOT NULL
)
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT 'jobsite_material', d.jm
FROM (SELECT DISTINCT cdc.oid(docs.doc -> 'jobsiteMaterial') AS jm FROM docs) d
WHERE d.jm IS NOT NULL
  AND (NOT EXISTS (SELECT 1 FROM cdc.source_doc js
                   WHERE js.entity = 'jobsite' AND js.doc -> 'materials' @> cdc.oid_probe(d.jm))
       -- (or when its document is gone: its placeholder row needs a shipment's report)
       OR NOT EXISTS (SELECT 1 FROM cdc.source_doc jm
                      WHERE jm.entity = 'jobsite_material' AND jm.key = d.jm AND NOT jm.deleted))
ON CONFLICT DO NOTHING

-- @step closure material_shipment,daily_report -> material_shipment (reads affected keys of material_shipment, daily_report)
-- Invoice-month rates are live: every shipment of an invoice-priced material in a month an
-- affected shipment belongs (or belonged) to is re-costed.
WITH ms AS (
    SELECT s.key, s.doc FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = 'material_shipment' AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'material_shipment' AND s.doc IS NOT NULL
), pairs AS (
    SELECT cdc.oid(ms.doc -> 'jobsiteMaterial') AS jm,
           date_trunc('month', cdc.day(cdc.ts(r.doc -> 'date'), $1)::timestamp)::date AS m
    FROM ms
    JOIN cdc.report_child rc ON rc.entity = 'material_shipment' AND rc.child_key = ms.key
    JOIN cdc.source_doc r ON r.entity = 'daily_report' AND r.key = rc.report_key
    UNION
    SELECT cdc.oid(c.old_doc -> 'jobsiteMaterial'),
           date_trunc('month', cdc.day(cdc.ts(r.doc -> 'date'), $1)::timestamp)::date
    FROM pg_temp.cdc_changed c
    JOIN cdc.report_child rc ON rc.entity = 'material_shipment' AND rc.child_key = c.key
    JOIN cdc.source_doc r ON r.entity = 'daily_report' AND r.key = rc.report_key
    WHERE c.entity = 'material_shipment'
    UNION
    SELECT cdc.oid(s.doc -> 'jobsiteMaterial'),
           date_trunc('month', cdc.day(cdc.ts(c.old_doc -> 'date'), $1)::timestamp)::date
    FROM pg_temp.cdc_changed c
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(c.old_doc -> 'materialShipment')) AS e(v)
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0
        WHERE s0.entity = 'material_shipment' AND s0.key = cdc.oid(e.v) OFFSET 0) s
    WHERE c.entity = 'daily_report'
    UNION
    SELECT jmd.mongo_id, date_trunc('month', f.work_date::timestamp)::date
    FROM pg_temp.cdc_affected a
    JOIN fact_material_shipment f ON f.mongo_id = a.key
    JOIN dim_jobsite_material jmd ON jmd.id = f.jobsite_material_id
    WHERE a.entity = 'material_shipment'
), inv AS (
    -- A month whose invoices of the material cost nothing in total prices every shipment at 0
    -- before and after this change (the quantity is only a divisor): nothing to re-cost.
    -- Invoice changes reach the material's shipments through its jobsite material instead.
    SELECT DISTINCT p.jm, p.m
    FROM pairs p
    JOIN cdc.source_doc jm ON jm.entity = 'jobsite_material' AND jm.key = p.jm
    WHERE jm.doc ->> 'costType' = 'invoice' AND p.m IS NOT NULL
      AND COALESCE((
          SELECT sum(cdc.num(i.doc -> 'cost'))
          FROM (SELECT DISTINCT cdc.oid(e.v) AS k
                FROM jsonb_array_elements(cdc.arr(jm.doc -> 'invoices')) AS e(v)) il
          JOIN cdc.source_doc i ON i.entity = 'invoice' AND i.key = il.k AND NOT i.deleted
          WHERE cdc.day(cdc.ts(i.doc -> 'date'), $1) >= p.m
            AND cdc.day(cdc.ts(i.doc -> 'date'), $1) < (p.m + interval '1 month')::date
      ), 0) <> 0
), month_shipments AS MATERIALIZED (
    -- The shipments listed by the reports of each month (report-date index), once.
    SELECT DISTINCT inv.jm, cdc.oid(e.v) AS k
    FROM inv
    JOIN cdc.source_doc r ON r.entity = 'daily_report'
     AND cdc.ts(r.doc -> 'date') >= (inv.m::timestamp AT TIME ZONE $1)
     AND cdc.ts(r.doc -> 'date') < ((inv.m + interval '1 month')::timestamp AT TIME ZONE $1)
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(r.doc -> 'materialShipment')) AS e(v)
)
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT DISTINCT 'material_shipment', s.key
FROM month_shipments ms
CROSS JOIN LATERAL (
    SELECT s0.key, s0.doc FROM cdc.source_doc s0
    WHERE s0.entity = 'material_shipment' AND s0.key = ms.k OFFSET 0) s
WHERE cdc.oid(s.doc -> 'jobsiteMaterial') = ms.jm
ON CONFLICT DO NOTHING

-- ===== derivation =====

-- @step upsert dim_employee (reads affected keys of employee)
INSERT INTO dim_employee AS t (mongo_id, name, job_title, archived_at, synced_at)
SELECT s.key, (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'name', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_employee' AND fw.col = 'name'), 2147483647) THEN (COALESCE(s.doc ->> 'name', '')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'name', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_employee' AND fw.col = 'name'), 2147483647), 'dim_employee', 'name', s.key) END),
       (CASE WHEN COALESCE(length(NULLIF(s.doc ->> 'jobTitle', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_employee' AND fw.col = 'job_title'), 2147483647) THEN (NULLIF(s.doc ->> 'jobTitle', '')) ELSE cdc.fit_slow(NULLIF(s.doc ->> 'jobTitle', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_employee' AND fw.col = 'job_title'), 2147483647), 'dim_employee', 'job_title', s.key) END),
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'employee' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, job_title = EXCLUDED.job_title,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_employee_rate (reads affected keys of employee)
WITH t AS MATERIALIZED (
    SELECT a.entity, a.key, t0.id
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT t1.id FROM dim_employee t1
                        WHERE t1.mongo_id = a.key AND t1.synced_at = $2 OFFSET 0) t0
    WHERE a.entity = 'employee'
), gone AS (
    DELETE FROM dim_employee_rate r
    USING t
    WHERE r.employee_id = t.id
)
INSERT INTO dim_employee_rate (employee_id, mongo_id, rate, effective_date, synced_at)
SELECT t.id, NULL, cdc.num(e.v -> 'rate'), cdc.day(cdc.ts(e.v -> 'date'), $1), $2
FROM t
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = t.entity AND s0.key = t.key OFFSET 0) s
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) AS e(v)
WHERE cdc.num(e.v -> 'rate') IS NOT NULL AND cdc.ts(e.v -> 'date') IS NOT NULL

-- @step upsert dim_vehicle (reads affected keys of vehicle)
INSERT INTO dim_vehicle AS t
    (mongo_id, name, vehicle_code, vehicle_type, is_rental, source_company, archived_at, synced_at)
SELECT s.key, (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'name', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'name'), 2147483647) THEN (COALESCE(s.doc ->> 'name', '')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'name', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'name'), 2147483647), 'dim_vehicle', 'name', s.key) END),
       (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'vehicleCode', 'noCode')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'vehicle_code'), 2147483647) THEN (COALESCE(s.doc ->> 'vehicleCode', 'noCode')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'vehicleCode', 'noCode'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'vehicle_code'), 2147483647), 'dim_vehicle', 'vehicle_code', s.key) END),
       (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'vehicleType', 'General')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'vehicle_type'), 2147483647) THEN (COALESCE(s.doc ->> 'vehicleType', 'General')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'vehicleType', 'General'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'vehicle_type'), 2147483647), 'dim_vehicle', 'vehicle_type', s.key) END),
       cdc.bool(s.doc -> 'rental'),
       (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'sourceCompany', 'Bow Mark')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'source_company'), 2147483647) THEN (COALESCE(s.doc ->> 'sourceCompany', 'Bow Mark')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'sourceCompany', 'Bow Mark'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_vehicle' AND fw.col = 'source_company'), 2147483647), 'dim_vehicle', 'source_company', s.key) END),
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'vehicle' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, vehicle_code = EXCLUDED.vehicle_code,
    vehicle_type = EXCLUDED.vehicle_type, is_rental = EXCLUDED.is_rental,
    source_company = EXCLUDED.source_company, archived_at = EXCLUDED.archived_at,
    synced_at = EXCLUDED.synced_at

-- @step upsert dim_vehicle_rate (reads affected keys of vehicle)
WITH t AS MATERIALIZED (
    SELECT a.entity, a.key, t0.id
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT t1.id FROM dim_vehicle t1
                        WHERE t1.mongo_id = a.key AND t1.synced_at = $2 OFFSET 0) t0
    WHERE a.entity = 'vehicle'
), gone AS (
    DELETE FROM dim_vehicle_rate r
    USING t
    WHERE r.vehicle_id = t.id
)
INSERT INTO dim_vehicle_rate (vehicle_id, mongo_id, rate, effective_date, synced_at)
SELECT t.id, NULL, cdc.num(e.v -> 'rate'), cdc.day(cdc.ts(e.v -> 'date'), $1), $2
FROM t
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = t.entity AND s0.key = t.key OFFSET 0) s
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) AS e(v)
WHERE cdc.num(e.v -> 'rate') IS NOT NULL AND cdc.ts(e.v -> 'date') IS NOT NULL

-- @step upsert dim_jobsite (reads affected keys of jobsite)
INSERT INTO dim_jobsite AS t (mongo_id, name, jobcode, active, archived_at, synced_at)
SELECT s.key, (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'name', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite' AND fw.col = 'name'), 2147483647) THEN (COALESCE(s.doc ->> 'name', '')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'name', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite' AND fw.col = 'name'), 2147483647), 'dim_jobsite', 'name', s.key) END),
       (CASE WHEN COALESCE(length(NULLIF(s.doc ->> 'jobcode', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite' AND fw.col = 'jobcode'), 2147483647) THEN (NULLIF(s.doc ->> 'jobcode', '')) ELSE cdc.fit_slow(NULLIF(s.doc ->> 'jobcode', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite' AND fw.col = 'jobcode'), 2147483647), 'dim_jobsite', 'jobcode', s.key) END),
       -- The app's schema default: a jobsite without `active` is inactive.
       cdc.bool(s.doc -> 'active'),
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'jobsite' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, jobcode = EXCLUDED.jobcode, active = EXCLUDED.active,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_company (reads affected keys of company)
INSERT INTO dim_company AS t (mongo_id, name, archived_at, synced_at)
SELECT s.key, (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'name', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_company' AND fw.col = 'name'), 2147483647) THEN (COALESCE(s.doc ->> 'name', '')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'name', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_company' AND fw.col = 'name'), 2147483647), 'dim_company', 'name', s.key) END), cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'company' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_material (reads affected keys of material)
INSERT INTO dim_material AS t (mongo_id, name, archived_at, synced_at)
SELECT s.key, (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'name', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_material' AND fw.col = 'name'), 2147483647) THEN (COALESCE(s.doc ->> 'name', '')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'name', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_material' AND fw.col = 'name'), 2147483647), 'dim_material', 'name', s.key) END), cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'material' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_crew (reads affected keys of crew)
INSERT INTO dim_crew AS t (mongo_id, name, type, synced_at)
SELECT s.key, (CASE WHEN COALESCE(length(COALESCE(s.doc ->> 'name', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_crew' AND fw.col = 'name'), 2147483647) THEN (COALESCE(s.doc ->> 'name', '')) ELSE cdc.fit_slow(COALESCE(s.doc ->> 'name', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_crew' AND fw.col = 'name'), 2147483647), 'dim_crew', 'name', s.key) END),
       (CASE WHEN COALESCE(length(COALESCE(NULLIF(s.doc ->> 'type', ''), 'Unknown')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_crew' AND fw.col = 'type'), 2147483647) THEN (COALESCE(NULLIF(s.doc ->> 'type', ''), 'Unknown')) ELSE cdc.fit_slow(COALESCE(NULLIF(s.doc ->> 'type', ''), 'Unknown'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_crew' AND fw.col = 'type'), 2147483647), 'dim_crew', 'type', s.key) END), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'crew' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, type = EXCLUDED.type, synced_at = EXCLUDED.synced_at

-- @step cleanup dim_crew (reads affected keys of crew)
-- A deleted crew (dim_crew has no archive column) keeps its row while any report or fact
-- references it, as the placeholder a fresh projection holds for a missing crew (its facts'
-- crew_type becomes "Unknown"); otherwise the row goes. No ON DELETE CASCADE ever fires
-- because of a source delete.
WITH gone AS MATERIALIZED (
    SELECT t.id,
           EXISTS (SELECT 1 FROM dim_daily_report d WHERE d.crew_id = t.id)
           OR EXISTS (SELECT 1 FROM fact_employee_work f WHERE f.crew_id = t.id)
           OR EXISTS (SELECT 1 FROM fact_vehicle_work f WHERE f.crew_id = t.id)
           OR EXISTS (SELECT 1 FROM fact_material_shipment f WHERE f.crew_id = t.id)
           OR EXISTS (SELECT 1 FROM fact_non_costed_material f WHERE f.crew_id = t.id)
           OR EXISTS (SELECT 1 FROM fact_trucking f WHERE f.crew_id = t.id)
           OR EXISTS (SELECT 1 FROM fact_production f WHERE f.crew_id = t.id) AS referenced
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.deleted FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    JOIN dim_crew t ON t.mongo_id = a.key
    WHERE a.entity = 'crew' AND s.deleted
), kept AS (
    UPDATE dim_crew t SET name = '(missing crew)', type = 'Unknown', synced_at = now()
    FROM gone g WHERE t.id = g.id AND g.referenced
    RETURNING 1
), dropped AS (
    DELETE FROM dim_crew t USING gone g WHERE t.id = g.id AND NOT g.referenced
    RETURNING 1
)
SELECT (SELECT count(*) FROM kept) + (SELECT count(*) FROM dropped)

-- @step archive_deleted (reads affected keys of company, material, employee, vehicle, jobsite)
-- Deleted dimension documents: soft archive at the deleting event's wall time (the row and
-- the facts referencing it stay; the facts keep their hours, their rates become 0 as for any
-- missing rate), and an employee's or vehicle's rates go with its rates[].
WITH e AS (
    
    UPDATE dim_employee t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'employee' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1

), er AS (
    DELETE FROM dim_employee_rate r
    USING pg_temp.cdc_affected a, cdc.source_doc s, dim_employee t
    WHERE a.entity = 'employee' AND s.entity = a.entity AND s.key = a.key AND s.deleted
      AND t.mongo_id = a.key AND r.employee_id = t.id
    RETURNING 1
), vr AS (
    DELETE FROM dim_vehicle_rate r
    USING pg_temp.cdc_affected a, cdc.source_doc s, dim_vehicle t
    WHERE a.entity = 'vehicle' AND s.entity = a.entity AND s.key = a.key AND s.deleted
      AND t.mongo_id = a.key AND r.vehicle_id = t.id
    RETURNING 1
), v AS (
    
    UPDATE dim_vehicle t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'vehicle' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1

), j AS (
    
    UPDATE dim_jobsite t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'jobsite' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1

), c AS (
    
    UPDATE dim_company t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'company' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1

), m AS (
    
    UPDATE dim_material t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'material' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1

)
SELECT (SELECT count(*) FROM e) + (SELECT count(*) FROM v) + (SELECT count(*) FROM j)
     + (SELECT count(*) FROM c) + (SELECT count(*) FROM m) + (SELECT count(*) FROM er)
     + (SELECT count(*) FROM vr)

-- @step placeholder daily_report (reads affected keys of daily_report)
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
    INSERT INTO dim_jobsite (mongo_id, name, active, synced_at)
    SELECT DISTINCT r.jobsite_key, '(missing jobsite)', false, $2 FROM refs r
    WHERE r.jobsite_key ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
), c AS (
    INSERT INTO dim_crew (mongo_id, name, type, synced_at)
    SELECT DISTINCT r.crew_key, '(missing crew)', 'Unknown', $2 FROM refs r
    WHERE r.crew_key ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM j) + (SELECT count(*) FROM c)

-- @step upsert dim_daily_report (reads affected keys of daily_report)
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

-- @step cleanup dim_daily_report (reads affected keys of daily_report)
-- No longer derivable (deleted, undated): archived, as the legacy delete.
UPDATE dim_daily_report t SET archived = true, synced_at = now()
FROM pg_temp.cdc_affected a
WHERE a.entity = 'daily_report' AND t.mongo_id = a.key
  AND t.synced_at IS DISTINCT FROM $2 AND NOT t.archived

-- @step placeholder jobsite_material (reads affected keys of jobsite_material)
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
    INSERT INTO dim_material (mongo_id, name, synced_at)
    SELECT DISTINCT r.material_key, '(missing material)', $2 FROM refs r
    WHERE r.material_key ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
), c AS (
    INSERT INTO dim_company (mongo_id, name, synced_at)
    SELECT DISTINCT r.supplier_key, '(missing company)', $2 FROM refs r
    WHERE r.supplier_key ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM c)

-- @step upsert dim_jobsite_material (reads affected keys of jobsite_material)
-- jobsite_id: the jobsite whose materials[] holds it, else the jobsite of a report one of
-- its shipments is listed in (README, "Differences from the legacy sync" 4); the lowest key wins so the choice is deterministic.
-- A jobsite material whose document is gone but that a jobsite or a shipment still names is
-- a placeholder row (no rates: its shipments cost 0, estimated), filled in place when the
-- document appears.
INSERT INTO dim_jobsite_material AS t
    (mongo_id, jobsite_id, material_id, supplier_id, quantity, unit, cost_type, delivered,
     synced_at)
SELECT a.key, j.id, mat.id, sup.id, COALESCE(cdc.num(jm.doc -> 'quantity'), 0),
       (CASE WHEN COALESCE(length(COALESCE(jm.doc ->> 'unit', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite_material' AND fw.col = 'unit'), 2147483647) THEN (COALESCE(jm.doc ->> 'unit', '')) ELSE cdc.fit_slow(COALESCE(jm.doc ->> 'unit', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite_material' AND fw.col = 'unit'), 2147483647), 'dim_jobsite_material', 'unit', a.key) END),
       (CASE WHEN COALESCE(length(COALESCE(jm.doc ->> 'costType', 'rate')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite_material' AND fw.col = 'cost_type'), 2147483647) THEN (COALESCE(jm.doc ->> 'costType', 'rate')) ELSE cdc.fit_slow(COALESCE(jm.doc ->> 'costType', 'rate'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'dim_jobsite_material' AND fw.col = 'cost_type'), 2147483647), 'dim_jobsite_material', 'cost_type', a.key) END),
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

-- @step cleanup dim_jobsite_material (reads affected keys of jobsite_material)
-- No longer derivable (no jobsite claims it and no report lists its shipments): the row goes
-- (the table has no archive column) unless a fact row still references it, which keeps it:
-- no ON DELETE CASCADE ever fires because of a source change.
DELETE FROM dim_jobsite_material t
USING pg_temp.cdc_affected a
WHERE a.entity = 'jobsite_material' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2
  AND NOT EXISTS (SELECT 1 FROM fact_material_shipment f WHERE f.jobsite_material_id = t.id)

-- @step placeholder jobsite_material unused (reads affected keys of jobsite_material)
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

-- @step upsert dim_jobsite_material_rate (reads affected keys of jobsite_material)
-- mongo_id discriminates: NULL = rates[], else the deliveredRates[] or scenarios[] entry _id.
WITH t AS MATERIALIZED (
    SELECT a.entity, a.key, t0.id
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT t1.id FROM dim_jobsite_material t1
                        WHERE t1.mongo_id = a.key AND t1.synced_at = $2 OFFSET 0) t0
    WHERE a.entity = 'jobsite_material'
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

-- @step context employee_work (reads affected keys of employee_work)
INSERT INTO pg_temp.cdc_ctx 
    WITH kids AS MATERIALIZED (
        SELECT a.entity, a.key, COALESCE(c.doc, w.doc) AS doc, p.key AS report_key
        FROM pg_temp.cdc_affected a
        -- A changed child's state is in cdc_changed; the others' are looked up. A lateral
        -- OFFSET 0 subquery drives every lookup from the affected keys: as a plain join the
        -- planner (with stale or missing statistics on the mirror) could hash-join the whole
        -- collection.
        LEFT JOIN pg_temp.cdc_changed c ON c.entity = a.entity AND c.key = a.key
        LEFT JOIN LATERAL (
            SELECT w0.doc FROM cdc.source_doc w0
            WHERE c.key IS NULL AND w0.entity = a.entity AND w0.key = a.key AND NOT w0.deleted
            OFFSET 0) w ON true
        CROSS JOIN LATERAL (
            SELECT min(rc.report_key) AS key FROM cdc.report_child rc
            WHERE rc.entity = 'employee_work' AND rc.child_key = a.key
        ) p
        WHERE a.entity = 'employee_work' AND COALESCE(c.doc, w.doc) IS NOT NULL AND p.key IS NOT NULL
    ), reports AS MATERIALIZED (
        SELECT k.report_key, cdc.oid(r.doc -> 'jobsite') AS jobsite_key, r.rts,
               dr.id AS daily_report_id, dr.jobsite_id, dr.crew_id, dr.report_date AS work_date,
               COALESCE(NULLIF(c.type, ''), 'Unknown') AS crew_type
        FROM (SELECT DISTINCT report_key FROM kids) k
        CROSS JOIN LATERAL (
            SELECT r0.doc, cdc.ts(r0.doc -> 'date') AS rts FROM cdc.source_doc r0
            WHERE r0.entity = 'daily_report' AND r0.key = k.report_key OFFSET 0) r
        -- Looked up per report: a join scanned every report's row for each chunk.
        CROSS JOIN LATERAL (
            SELECT dr0.id, dr0.jobsite_id, dr0.crew_id, dr0.report_date FROM dim_daily_report dr0
            WHERE dr0.mongo_id = k.report_key OFFSET 0) dr
        JOIN dim_crew c ON c.id = dr.crew_id
        WHERE r.rts IS NOT NULL
    )
    SELECT k.entity, k.key, k.doc, k.report_key, r.jobsite_key, r.rts, r.daily_report_id,
           r.jobsite_id, r.crew_id, r.work_date, r.crew_type
    FROM kids k JOIN reports r ON r.report_key = k.report_key

-- @step context vehicle_work (reads affected keys of vehicle_work)
INSERT INTO pg_temp.cdc_ctx 
    WITH kids AS MATERIALIZED (
        SELECT a.entity, a.key, COALESCE(c.doc, w.doc) AS doc, p.key AS report_key
        FROM pg_temp.cdc_affected a
        -- A changed child's state is in cdc_changed; the others' are looked up. A lateral
        -- OFFSET 0 subquery drives every lookup from the affected keys: as a plain join the
        -- planner (with stale or missing statistics on the mirror) could hash-join the whole
        -- collection.
        LEFT JOIN pg_temp.cdc_changed c ON c.entity = a.entity AND c.key = a.key
        LEFT JOIN LATERAL (
            SELECT w0.doc FROM cdc.source_doc w0
            WHERE c.key IS NULL AND w0.entity = a.entity AND w0.key = a.key AND NOT w0.deleted
            OFFSET 0) w ON true
        CROSS JOIN LATERAL (
            SELECT min(rc.report_key) AS key FROM cdc.report_child rc
            WHERE rc.entity = 'vehicle_work' AND rc.child_key = a.key
        ) p
        WHERE a.entity = 'vehicle_work' AND COALESCE(c.doc, w.doc) IS NOT NULL AND p.key IS NOT NULL
    ), reports AS MATERIALIZED (
        SELECT k.report_key, cdc.oid(r.doc -> 'jobsite') AS jobsite_key, r.rts,
               dr.id AS daily_report_id, dr.jobsite_id, dr.crew_id, dr.report_date AS work_date,
               COALESCE(NULLIF(c.type, ''), 'Unknown') AS crew_type
        FROM (SELECT DISTINCT report_key FROM kids) k
        CROSS JOIN LATERAL (
            SELECT r0.doc, cdc.ts(r0.doc -> 'date') AS rts FROM cdc.source_doc r0
            WHERE r0.entity = 'daily_report' AND r0.key = k.report_key OFFSET 0) r
        -- Looked up per report: a join scanned every report's row for each chunk.
        CROSS JOIN LATERAL (
            SELECT dr0.id, dr0.jobsite_id, dr0.crew_id, dr0.report_date FROM dim_daily_report dr0
            WHERE dr0.mongo_id = k.report_key OFFSET 0) dr
        JOIN dim_crew c ON c.id = dr.crew_id
        WHERE r.rts IS NOT NULL
    )
    SELECT k.entity, k.key, k.doc, k.report_key, r.jobsite_key, r.rts, r.daily_report_id,
           r.jobsite_id, r.crew_id, r.work_date, r.crew_type
    FROM kids k JOIN reports r ON r.report_key = k.report_key

-- @step context production (reads affected keys of production)
INSERT INTO pg_temp.cdc_ctx 
    WITH kids AS MATERIALIZED (
        SELECT a.entity, a.key, COALESCE(c.doc, w.doc) AS doc, p.key AS report_key
        FROM pg_temp.cdc_affected a
        -- A changed child's state is in cdc_changed; the others' are looked up. A lateral
        -- OFFSET 0 subquery drives every lookup from the affected keys: as a plain join the
        -- planner (with stale or missing statistics on the mirror) could hash-join the whole
        -- collection.
        LEFT JOIN pg_temp.cdc_changed c ON c.entity = a.entity AND c.key = a.key
        LEFT JOIN LATERAL (
            SELECT w0.doc FROM cdc.source_doc w0
            WHERE c.key IS NULL AND w0.entity = a.entity AND w0.key = a.key AND NOT w0.deleted
            OFFSET 0) w ON true
        CROSS JOIN LATERAL (
            SELECT min(rc.report_key) AS key FROM cdc.report_child rc
            WHERE rc.entity = 'production' AND rc.child_key = a.key
        ) p
        WHERE a.entity = 'production' AND COALESCE(c.doc, w.doc) IS NOT NULL AND p.key IS NOT NULL
    ), reports AS MATERIALIZED (
        SELECT k.report_key, cdc.oid(r.doc -> 'jobsite') AS jobsite_key, r.rts,
               dr.id AS daily_report_id, dr.jobsite_id, dr.crew_id, dr.report_date AS work_date,
               COALESCE(NULLIF(c.type, ''), 'Unknown') AS crew_type
        FROM (SELECT DISTINCT report_key FROM kids) k
        CROSS JOIN LATERAL (
            SELECT r0.doc, cdc.ts(r0.doc -> 'date') AS rts FROM cdc.source_doc r0
            WHERE r0.entity = 'daily_report' AND r0.key = k.report_key OFFSET 0) r
        -- Looked up per report: a join scanned every report's row for each chunk.
        CROSS JOIN LATERAL (
            SELECT dr0.id, dr0.jobsite_id, dr0.crew_id, dr0.report_date FROM dim_daily_report dr0
            WHERE dr0.mongo_id = k.report_key OFFSET 0) dr
        JOIN dim_crew c ON c.id = dr.crew_id
        WHERE r.rts IS NOT NULL
    )
    SELECT k.entity, k.key, k.doc, k.report_key, r.jobsite_key, r.rts, r.daily_report_id,
           r.jobsite_id, r.crew_id, r.work_date, r.crew_type
    FROM kids k JOIN reports r ON r.report_key = k.report_key

-- @step context material_shipment (reads affected keys of material_shipment)
INSERT INTO pg_temp.cdc_ctx 
    WITH kids AS MATERIALIZED (
        SELECT a.entity, a.key, COALESCE(c.doc, w.doc) AS doc, p.key AS report_key
        FROM pg_temp.cdc_affected a
        -- A changed child's state is in cdc_changed; the others' are looked up. A lateral
        -- OFFSET 0 subquery drives every lookup from the affected keys: as a plain join the
        -- planner (with stale or missing statistics on the mirror) could hash-join the whole
        -- collection.
        LEFT JOIN pg_temp.cdc_changed c ON c.entity = a.entity AND c.key = a.key
        LEFT JOIN LATERAL (
            SELECT w0.doc FROM cdc.source_doc w0
            WHERE c.key IS NULL AND w0.entity = a.entity AND w0.key = a.key AND NOT w0.deleted
            OFFSET 0) w ON true
        CROSS JOIN LATERAL (
            SELECT min(rc.report_key) AS key FROM cdc.report_child rc
            WHERE rc.entity = 'material_shipment' AND rc.child_key = a.key
        ) p
        WHERE a.entity = 'material_shipment' AND COALESCE(c.doc, w.doc) IS NOT NULL AND p.key IS NOT NULL
    ), reports AS MATERIALIZED (
        SELECT k.report_key, cdc.oid(r.doc -> 'jobsite') AS jobsite_key, r.rts,
               dr.id AS daily_report_id, dr.jobsite_id, dr.crew_id, dr.report_date AS work_date,
               COALESCE(NULLIF(c.type, ''), 'Unknown') AS crew_type
        FROM (SELECT DISTINCT report_key FROM kids) k
        CROSS JOIN LATERAL (
            SELECT r0.doc, cdc.ts(r0.doc -> 'date') AS rts FROM cdc.source_doc r0
            WHERE r0.entity = 'daily_report' AND r0.key = k.report_key OFFSET 0) r
        -- Looked up per report: a join scanned every report's row for each chunk.
        CROSS JOIN LATERAL (
            SELECT dr0.id, dr0.jobsite_id, dr0.crew_id, dr0.report_date FROM dim_daily_report dr0
            WHERE dr0.mongo_id = k.report_key OFFSET 0) dr
        JOIN dim_crew c ON c.id = dr.crew_id
        WHERE r.rts IS NOT NULL
    )
    SELECT k.entity, k.key, k.doc, k.report_key, r.jobsite_key, r.rts, r.daily_report_id,
           r.jobsite_id, r.crew_id, r.work_date, r.crew_type
    FROM kids k JOIN reports r ON r.report_key = k.report_key

-- @step placeholder employee_work (reads affected keys of employee_work)
-- The employee a work item names has a row even when its document is gone (placeholder).
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(c.doc -> 'employee') AS k FROM pg_temp.cdc_ctx c WHERE c.entity = 'employee_work'
), p AS (
    INSERT INTO dim_employee (mongo_id, name, synced_at)
    SELECT DISTINCT r.k, '(missing employee)', $2 FROM refs r
    WHERE r.k ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM p

-- @step upsert fact_employee_work (reads affected keys of employee_work)
WITH x AS MATERIALIZED (
    -- Each date parsed once (OFFSET 0 keeps the planner from repeating the calls).
    SELECT c.*, cdc.oid(c.doc -> 'employee') AS dim_key, t.st, t.et
    FROM pg_temp.cdc_ctx c
    CROSS JOIN LATERAL (SELECT cdc.ts(c.doc -> 'startTime') AS st,
                               cdc.ts(c.doc -> 'endTime') AS et OFFSET 0) t
    WHERE c.entity = 'employee_work'
), e AS MATERIALIZED (
    SELECT d0.id, d0.mongo_id FROM dim_employee d0
    WHERE d0.mongo_id IN (SELECT DISTINCT dim_key FROM x)
), r AS MATERIALIZED (
    SELECT p.id, p.from_d, p.rate,
           lead(p.from_d) OVER (PARTITION BY p.id ORDER BY p.from_d) AS to_d
    FROM (SELECT DISTINCT ON (e.id, q.d) e.id, q.d AS from_d, q.rate
          FROM e
          CROSS JOIN LATERAL (SELECT s0.doc FROM cdc.source_doc s0
                              WHERE s0.entity = 'employee' AND s0.key = e.mongo_id OFFSET 0) s
          CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) WITH ORDINALITY AS re(v, n)
          CROSS JOIN LATERAL (SELECT cdc.ts(re.v -> 'date') AS ts, cdc.num(re.v -> 'rate') AS rate
                              OFFSET 0) q0
          CROSS JOIN LATERAL (SELECT cdc.day(q0.ts, $1) AS d, q0.rate) q
          WHERE q0.ts IS NOT NULL AND q0.rate IS NOT NULL
          ORDER BY e.id, q.d, q0.ts DESC, re.n DESC) p
)
INSERT INTO fact_employee_work AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, employee_id, crew_type, work_date,
     start_time, end_time, job_title, hourly_rate, archived_at, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, x.crew_id, e.id, x.crew_type, x.work_date,
       x.st, x.et, (CASE WHEN COALESCE(length(COALESCE(x.doc ->> 'jobTitle', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_employee_work' AND fw.col = 'job_title'), 2147483647) THEN (COALESCE(x.doc ->> 'jobTitle', '')) ELSE cdc.fit_slow(COALESCE(x.doc ->> 'jobTitle', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_employee_work' AND fw.col = 'job_title'), 2147483647), 'fact_employee_work', 'job_title', x.key) END),
       COALESCE(r.rate, 0), cdc.ts(x.doc -> 'archivedAt'), $2
FROM x
JOIN e ON e.mongo_id = x.dim_key
LEFT JOIN r ON r.id = e.id AND r.from_d <= x.work_date AND (r.to_d IS NULL OR x.work_date < r.to_d)
WHERE x.st IS NOT NULL AND x.et IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, employee_id = EXCLUDED.employee_id,
    crew_type = EXCLUDED.crew_type, work_date = EXCLUDED.work_date,
    start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
    job_title = EXCLUDED.job_title, hourly_rate = EXCLUDED.hourly_rate,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step cleanup fact_employee_work (reads affected keys of employee_work)
UPDATE fact_employee_work t
SET archived_at = cdc.detach_time('employee_work', t.mongo_id, 'employeeWork', dr.mongo_id),
    synced_at = now()
FROM pg_temp.cdc_affected a, dim_daily_report dr
WHERE a.entity = 'employee_work' AND t.mongo_id = a.key AND dr.id = t.daily_report_id
  AND t.synced_at IS DISTINCT FROM $2 AND t.archived_at IS NULL

-- @step placeholder vehicle_work (reads affected keys of vehicle_work)
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(c.doc -> 'vehicle') AS k FROM pg_temp.cdc_ctx c WHERE c.entity = 'vehicle_work'
), p AS (
    INSERT INTO dim_vehicle (mongo_id, name, vehicle_code, vehicle_type, synced_at)
    SELECT DISTINCT r.k, '(missing vehicle)', 'noCode', 'Unknown', $2 FROM refs r
    WHERE r.k ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM p

-- @step upsert fact_vehicle_work (reads affected keys of vehicle_work)
WITH x AS MATERIALIZED (
    SELECT c.*, cdc.oid(c.doc -> 'vehicle') AS dim_key
    FROM pg_temp.cdc_ctx c WHERE c.entity = 'vehicle_work'
), v AS MATERIALIZED (
    SELECT d0.id, d0.mongo_id FROM dim_vehicle d0
    WHERE d0.mongo_id IN (SELECT DISTINCT dim_key FROM x)
), r AS MATERIALIZED (
    SELECT p.id, p.from_d, p.rate,
           lead(p.from_d) OVER (PARTITION BY p.id ORDER BY p.from_d) AS to_d
    FROM (SELECT DISTINCT ON (v.id, q.d) v.id, q.d AS from_d, q.rate
          FROM v
          CROSS JOIN LATERAL (SELECT s0.doc FROM cdc.source_doc s0
                              WHERE s0.entity = 'vehicle' AND s0.key = v.mongo_id OFFSET 0) s
          CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) WITH ORDINALITY AS re(v, n)
          CROSS JOIN LATERAL (SELECT cdc.ts(re.v -> 'date') AS ts, cdc.num(re.v -> 'rate') AS rate
                              OFFSET 0) q0
          CROSS JOIN LATERAL (SELECT cdc.day(q0.ts, $1) AS d, q0.rate) q
          WHERE q0.ts IS NOT NULL AND q0.rate IS NOT NULL
          ORDER BY v.id, q.d, q0.ts DESC, re.n DESC) p
)
INSERT INTO fact_vehicle_work AS t
    (mongo_id, daily_report_id, jobsite_id, vehicle_id, crew_id, crew_type, work_date,
     job_title, hours, hourly_rate, archived_at, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, v.id, x.crew_id, x.crew_type, x.work_date,
       (CASE WHEN COALESCE(length(NULLIF(x.doc ->> 'jobTitle', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_vehicle_work' AND fw.col = 'job_title'), 2147483647) THEN (NULLIF(x.doc ->> 'jobTitle', '')) ELSE cdc.fit_slow(NULLIF(x.doc ->> 'jobTitle', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_vehicle_work' AND fw.col = 'job_title'), 2147483647), 'fact_vehicle_work', 'job_title', x.key) END),
       COALESCE(cdc.num(x.doc -> 'hours'), 0),
       COALESCE(r.rate, 0), cdc.ts(x.doc -> 'archivedAt'), $2
FROM x
JOIN v ON v.mongo_id = x.dim_key
LEFT JOIN r ON r.id = v.id AND r.from_d <= x.work_date AND (r.to_d IS NULL OR x.work_date < r.to_d)
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    vehicle_id = EXCLUDED.vehicle_id, crew_id = EXCLUDED.crew_id,
    crew_type = EXCLUDED.crew_type, work_date = EXCLUDED.work_date,
    job_title = EXCLUDED.job_title, hours = EXCLUDED.hours,
    hourly_rate = EXCLUDED.hourly_rate, archived_at = EXCLUDED.archived_at,
    synced_at = EXCLUDED.synced_at

-- @step cleanup fact_vehicle_work (reads affected keys of vehicle_work)
UPDATE fact_vehicle_work t
SET archived_at = cdc.detach_time('vehicle_work', t.mongo_id, 'vehicleWork', dr.mongo_id),
    synced_at = now()
FROM pg_temp.cdc_affected a, dim_daily_report dr
WHERE a.entity = 'vehicle_work' AND t.mongo_id = a.key AND dr.id = t.daily_report_id
  AND t.synced_at IS DISTINCT FROM $2 AND t.archived_at IS NULL

-- @step upsert fact_production (reads affected keys of production)
WITH x AS MATERIALIZED (
    SELECT c.*, t.st, t.et
    FROM pg_temp.cdc_ctx c
    CROSS JOIN LATERAL (SELECT cdc.ts(c.doc -> 'startTime') AS st,
                               cdc.ts(c.doc -> 'endTime') AS et OFFSET 0) t
    WHERE c.entity = 'production'
)
INSERT INTO fact_production AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, crew_type, work_date, job_title,
     quantity, unit, start_time, end_time, description, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, x.crew_id, x.crew_type, x.work_date,
       (CASE WHEN COALESCE(length(COALESCE(x.doc ->> 'jobTitle', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_production' AND fw.col = 'job_title'), 2147483647) THEN (COALESCE(x.doc ->> 'jobTitle', '')) ELSE cdc.fit_slow(COALESCE(x.doc ->> 'jobTitle', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_production' AND fw.col = 'job_title'), 2147483647), 'fact_production', 'job_title', x.key) END),
       COALESCE(cdc.num(x.doc -> 'quantity'), 0),
       (CASE WHEN COALESCE(length(COALESCE(x.doc ->> 'unit', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_production' AND fw.col = 'unit'), 2147483647) THEN (COALESCE(x.doc ->> 'unit', '')) ELSE cdc.fit_slow(COALESCE(x.doc ->> 'unit', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_production' AND fw.col = 'unit'), 2147483647), 'fact_production', 'unit', x.key) END), x.st, x.et,
       (CASE WHEN COALESCE(length(NULLIF(x.doc ->> 'description', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_production' AND fw.col = 'description'), 2147483647) THEN (NULLIF(x.doc ->> 'description', '')) ELSE cdc.fit_slow(NULLIF(x.doc ->> 'description', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_production' AND fw.col = 'description'), 2147483647), 'fact_production', 'description', x.key) END), $2
FROM x
WHERE x.st IS NOT NULL AND x.et IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, crew_type = EXCLUDED.crew_type,
    work_date = EXCLUDED.work_date, job_title = EXCLUDED.job_title,
    quantity = EXCLUDED.quantity, unit = EXCLUDED.unit, start_time = EXCLUDED.start_time,
    end_time = EXCLUDED.end_time, description = EXCLUDED.description,
    synced_at = EXCLUDED.synced_at

-- @step cleanup fact_production (reads affected keys of production)
DELETE FROM fact_production t
USING pg_temp.cdc_affected a
WHERE a.entity = 'production' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2

-- @step upsert fact_material_shipment (reads affected keys of material_shipment)
-- Rate: a scenario id first; else costType invoice -> the live invoice-month rate (sum of the
-- material's invoices dated in the work month / quantity of its live costed shipments listed
-- in any report dated in that month); else the delivered-rate entry, else the standard rates.
-- Lookups take the latest rate dated on or before the work date; a miss gives (0, estimated).
WITH x AS (SELECT * FROM pg_temp.cdc_ctx WHERE entity = 'material_shipment'),
b AS (
    SELECT x.*, jmd.id AS jm_id, jmd.unit AS jm_unit, jmd.cost_type, jmd.mongo_id AS jm_key,
           jm.doc AS jm_doc,
           cdc.oid(x.doc -> 'vehicleObject' -> 'rateScenarioId') AS scen,
           cdc.oid(x.doc -> 'vehicleObject' -> 'deliveredRateId') AS deliv,
           date_trunc('month', x.work_date::timestamp)::date AS m0,
           (date_trunc('month', x.work_date::timestamp) + interval '1 month')::date AS m1
    FROM x
    -- The jobsite material's row: its document's, or a placeholder when the document is gone
    -- (no rates: the shipment costs 0, estimated).
    JOIN dim_jobsite_material jmd ON jmd.mongo_id = cdc.oid(x.doc -> 'jobsiteMaterial')
    LEFT JOIN LATERAL (
        SELECT jm0.doc FROM cdc.source_doc jm0
        WHERE jm0.entity = 'jobsite_material' AND jm0.key = jmd.mongo_id AND NOT jm0.deleted
        OFFSET 0) jm ON true
    WHERE NOT cdc.bool(x.doc -> 'noJobsiteMaterial')
),
inv_months AS (
    SELECT DISTINCT b.jm_key, b.jm_doc, b.m0, b.m1 FROM b
    WHERE b.scen IS NULL AND b.cost_type = 'invoice'
),
inv_cost AS (
    SELECT im.jm_key, im.m0, sum(cdc.num(i.doc -> 'cost')) AS total
    FROM inv_months im
    CROSS JOIN LATERAL (
        SELECT DISTINCT cdc.oid(e.v) AS k
        FROM jsonb_array_elements(cdc.arr(im.jm_doc -> 'invoices')) AS e(v)) il
    JOIN cdc.source_doc i ON i.entity = 'invoice' AND i.key = il.k AND NOT i.deleted
    WHERE cdc.day(cdc.ts(i.doc -> 'date'), $1) >= im.m0
      AND cdc.day(cdc.ts(i.doc -> 'date'), $1) < im.m1
    GROUP BY im.jm_key, im.m0
),
month_shipments AS MATERIALIZED (
    -- The shipments listed by the reports of each month (report-date index), once each; only
    -- for months whose invoices cost something (otherwise the rate is 0 whatever the quantity).
    SELECT DISTINCT im.jm_key, im.m0, cdc.oid(e.v) AS k
    FROM inv_months im
    JOIN inv_cost ic ON ic.jm_key = im.jm_key AND ic.m0 = im.m0 AND COALESCE(ic.total, 0) <> 0
    JOIN cdc.source_doc r ON r.entity = 'daily_report'
     AND cdc.ts(r.doc -> 'date') >= (im.m0::timestamp AT TIME ZONE $1)
     AND cdc.ts(r.doc -> 'date') < (im.m1::timestamp AT TIME ZONE $1)
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(r.doc -> 'materialShipment')) AS e(v)
),
inv_qty AS (
    SELECT ms.jm_key, ms.m0, sum(cdc.num(s.doc -> 'quantity')) AS total
    FROM month_shipments ms
    CROSS JOIN LATERAL (
        SELECT s0.doc FROM cdc.source_doc s0
        WHERE s0.entity = 'material_shipment' AND s0.key = ms.k OFFSET 0) s
    WHERE cdc.oid(s.doc -> 'jobsiteMaterial') = ms.jm_key
      AND NOT cdc.bool(s.doc -> 'noJobsiteMaterial')
      AND cdc.ts(s.doc -> 'archivedAt') IS NULL
    GROUP BY ms.jm_key, ms.m0
)
INSERT INTO fact_material_shipment AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, jobsite_material_id, crew_type, work_date,
     quantity, unit, rate, estimated, delivered_rate_id, archived_at, synced_at, vehicle_type,
     rate_scenario_id)
SELECT b.key, b.daily_report_id, b.jobsite_id, b.crew_id, b.jm_id, b.crew_type, b.work_date,
       COALESCE(cdc.num(b.doc -> 'quantity'), 0), b.jm_unit,
       CASE WHEN b.scen IS NULL AND b.cost_type = 'invoice' THEN
                CASE WHEN COALESCE(iq.total, 0) > 0 THEN COALESCE(ic.total, 0) / iq.total ELSE 0 END
            ELSE COALESCE(lr.rate, 0) END,
       CASE WHEN b.scen IS NULL AND b.cost_type = 'invoice' THEN false
            ELSE COALESCE(lr.estimated, true) END,
       (CASE WHEN COALESCE(length(b.deliv), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_material_shipment' AND fw.col = 'delivered_rate_id'), 2147483647) THEN (b.deliv) ELSE cdc.fit_slow(b.deliv, COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_material_shipment' AND fw.col = 'delivered_rate_id'), 2147483647), 'fact_material_shipment', 'delivered_rate_id', b.key) END), cdc.ts(b.doc -> 'archivedAt'), $2,
       (CASE WHEN COALESCE(length(cdc.vehicle_type(b.doc -> 'vehicleObject')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_material_shipment' AND fw.col = 'vehicle_type'), 2147483647) THEN (cdc.vehicle_type(b.doc -> 'vehicleObject')) ELSE cdc.fit_slow(cdc.vehicle_type(b.doc -> 'vehicleObject'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_material_shipment' AND fw.col = 'vehicle_type'), 2147483647), 'fact_material_shipment', 'vehicle_type', b.key) END),
       (CASE WHEN COALESCE(length(b.scen), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_material_shipment' AND fw.col = 'rate_scenario_id'), 2147483647) THEN (b.scen) ELSE cdc.fit_slow(b.scen, COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_material_shipment' AND fw.col = 'rate_scenario_id'), 2147483647), 'fact_material_shipment', 'rate_scenario_id', b.key) END)
FROM b
LEFT JOIN LATERAL (
    -- The jobsite material's rates (rates[], or the deliveredRates[] / scenarios[] entry with
    -- the shipment's id) dated on or before the work date: the latest instant, equal instants
    -- the one listed last.
    SELECT cdc.num(c.r -> 'rate') AS rate, cdc.bool(c.r -> 'estimated') AS estimated
    FROM (
        SELECT NULL::text AS mid, 0 AS a, 0::bigint AS dn, e.n, e.v AS r
        FROM jsonb_array_elements(cdc.arr(b.jm_doc -> 'rates')) WITH ORDINALITY AS e(v, n)
        UNION ALL
        SELECT cdc.oid(d.v -> '_id'), 1, d.n, e.n, e.v
        FROM jsonb_array_elements(cdc.arr(b.jm_doc -> 'deliveredRates')) WITH ORDINALITY AS d(v, n)
        CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(d.v -> 'rates')) WITH ORDINALITY AS e(v, n)
        UNION ALL
        SELECT cdc.oid(d.v -> '_id'), 2, d.n, e.n, e.v
        FROM jsonb_array_elements(cdc.arr(b.jm_doc -> 'scenarios')) WITH ORDINALITY AS d(v, n)
        CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(d.v -> 'rates')) WITH ORDINALITY AS e(v, n)
    ) c
    CROSS JOIN LATERAL (SELECT cdc.ts(c.r -> 'date') AS ts OFFSET 0) t
    WHERE c.mid IS NOT DISTINCT FROM COALESCE(b.scen, b.deliv)
      AND cdc.num(c.r -> 'rate') IS NOT NULL AND t.ts IS NOT NULL
      AND cdc.day(t.ts, $1) <= b.work_date
    ORDER BY t.ts DESC, c.a DESC, c.dn DESC, c.n DESC LIMIT 1
) lr ON true
LEFT JOIN inv_cost ic ON ic.jm_key = b.jm_key AND ic.m0 = b.m0
LEFT JOIN inv_qty iq ON iq.jm_key = b.jm_key AND iq.m0 = b.m0
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, jobsite_material_id = EXCLUDED.jobsite_material_id,
    crew_type = EXCLUDED.crew_type, work_date = EXCLUDED.work_date,
    quantity = EXCLUDED.quantity, unit = EXCLUDED.unit, rate = EXCLUDED.rate,
    estimated = EXCLUDED.estimated, delivered_rate_id = EXCLUDED.delivered_rate_id,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at,
    vehicle_type = EXCLUDED.vehicle_type, rate_scenario_id = EXCLUDED.rate_scenario_id

-- @step cleanup fact_material_shipment (reads affected keys of material_shipment)
UPDATE fact_material_shipment t
SET archived_at = cdc.detach_time('material_shipment', t.mongo_id, 'materialShipment', dr.mongo_id),
    synced_at = now()
FROM pg_temp.cdc_affected a, dim_daily_report dr
WHERE a.entity = 'material_shipment' AND t.mongo_id = a.key AND dr.id = t.daily_report_id
  AND t.synced_at IS DISTINCT FROM $2 AND t.archived_at IS NULL

-- @step upsert fact_non_costed_material (reads affected keys of material_shipment)
WITH x AS (SELECT * FROM pg_temp.cdc_ctx WHERE entity = 'material_shipment')
INSERT INTO fact_non_costed_material AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, crew_type, work_date, material_name,
     supplier_name, quantity, unit, archived_at, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, x.crew_id, x.crew_type, x.work_date,
       (CASE WHEN COALESCE(length(COALESCE(NULLIF(x.doc ->> 'shipmentType', ''), 'Unknown')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_non_costed_material' AND fw.col = 'material_name'), 2147483647) THEN (COALESCE(NULLIF(x.doc ->> 'shipmentType', ''), 'Unknown')) ELSE cdc.fit_slow(COALESCE(NULLIF(x.doc ->> 'shipmentType', ''), 'Unknown'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_non_costed_material' AND fw.col = 'material_name'), 2147483647), 'fact_non_costed_material', 'material_name', x.key) END),
       (CASE WHEN COALESCE(length(COALESCE(NULLIF(x.doc ->> 'supplier', ''), 'Unknown')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_non_costed_material' AND fw.col = 'supplier_name'), 2147483647) THEN (COALESCE(NULLIF(x.doc ->> 'supplier', ''), 'Unknown')) ELSE cdc.fit_slow(COALESCE(NULLIF(x.doc ->> 'supplier', ''), 'Unknown'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_non_costed_material' AND fw.col = 'supplier_name'), 2147483647), 'fact_non_costed_material', 'supplier_name', x.key) END),
       COALESCE(cdc.num(x.doc -> 'quantity'), 0),
       (CASE WHEN COALESCE(length(COALESCE(NULLIF(x.doc ->> 'unit', ''), 'unit')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_non_costed_material' AND fw.col = 'unit'), 2147483647) THEN (COALESCE(NULLIF(x.doc ->> 'unit', ''), 'unit')) ELSE cdc.fit_slow(COALESCE(NULLIF(x.doc ->> 'unit', ''), 'unit'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_non_costed_material' AND fw.col = 'unit'), 2147483647), 'fact_non_costed_material', 'unit', x.key) END),
       cdc.ts(x.doc -> 'archivedAt'), $2
FROM x
WHERE cdc.bool(x.doc -> 'noJobsiteMaterial')
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, crew_type = EXCLUDED.crew_type,
    work_date = EXCLUDED.work_date, material_name = EXCLUDED.material_name,
    supplier_name = EXCLUDED.supplier_name, quantity = EXCLUDED.quantity,
    unit = EXCLUDED.unit, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step cleanup fact_non_costed_material (reads affected keys of material_shipment)
UPDATE fact_non_costed_material t
SET archived_at = cdc.detach_time('material_shipment', t.mongo_id, 'materialShipment', dr.mongo_id),
    synced_at = now()
FROM pg_temp.cdc_affected a, dim_daily_report dr
WHERE a.entity = 'material_shipment' AND t.mongo_id = a.key AND dr.id = t.daily_report_id
  AND t.synced_at IS DISTINCT FROM $2 AND t.archived_at IS NULL

-- @step upsert fact_trucking (reads affected keys of material_shipment)
-- Only for a shipment whose costed row was written just now. The rate: the entry of the
-- report's jobsite truckingRates[] with that _id; its newest rate dated at or before the
-- report's instant, else its oldest (legacy). Quantity (any case) -> quantity x rate,
-- else hours x rate; hours use the overnight rule (README, "Differences from the legacy sync" 2).
WITH x AS (SELECT * FROM pg_temp.cdc_ctx WHERE entity = 'material_shipment'),
entries AS (
    -- The trucking-rate entries of the reports' jobsites, each jobsite document read once;
    -- the first entry with a given _id wins (legacy find()).
    SELECT DISTINCT ON (j.jobsite_key, cdc.oid(e.v -> '_id'))
           j.jobsite_key, cdc.oid(e.v -> '_id') AS rid, e.v
    FROM (SELECT DISTINCT x.jobsite_key FROM x
          WHERE cdc.oid(x.doc -> 'vehicleObject' -> 'truckingRateId') IS NOT NULL) j
    CROSS JOIN LATERAL (
        SELECT js0.doc FROM cdc.source_doc js0
        WHERE js0.entity = 'jobsite' AND js0.key = j.jobsite_key OFFSET 0) js
    CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(js.doc -> 'truckingRates'))
         WITH ORDINALITY AS e(v, n)
    WHERE cdc.oid(e.v -> '_id') IS NOT NULL
    ORDER BY j.jobsite_key, cdc.oid(e.v -> '_id'), e.n
),
tr AS (
    SELECT x.*, f.quantity AS qty, ent.v AS entry, t.st, t.et
    FROM x
    CROSS JOIN LATERAL (
        SELECT f0.quantity FROM fact_material_shipment f0
        WHERE f0.mongo_id = x.key AND f0.synced_at = $2 OFFSET 0) f
    JOIN entries ent ON ent.jobsite_key = x.jobsite_key
     AND ent.rid = cdc.oid(x.doc -> 'vehicleObject' -> 'truckingRateId')
    -- Each time parsed once (OFFSET 0: the hours formula below would repeat the calls).
    CROSS JOIN LATERAL (SELECT cdc.ts(x.doc -> 'startTime') AS st,
                               cdc.ts(x.doc -> 'endTime') AS et OFFSET 0) t
),
priced AS (
    SELECT tr.*, rr.v AS rate_doc,
           CASE WHEN tr.st IS NOT NULL AND tr.et IS NOT NULL THEN
               (extract(epoch FROM tr.et) - extract(epoch FROM tr.st)
                + CASE WHEN tr.et < tr.st THEN 86400 ELSE 0 END) / 3600
           END AS hrs
    FROM tr
    CROSS JOIN LATERAL (
        SELECT e.v FROM jsonb_array_elements(cdc.arr(tr.entry -> 'rates')) WITH ORDINALITY AS e(v, n)
        CROSS JOIN LATERAL (SELECT cdc.ts(e.v -> 'date') AS d OFFSET 0) d
        WHERE cdc.num(e.v -> 'rate') IS NOT NULL
        ORDER BY (d.d <= tr.rts) DESC NULLS LAST,
                 CASE WHEN d.d <= tr.rts THEN d.d END DESC NULLS LAST,
                 d.d ASC NULLS LAST, e.n
        LIMIT 1
    ) rr
)
INSERT INTO fact_trucking AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, vehicle_id, crew_type, work_date,
     trucking_type, quantity, hours, rate, rate_type, total_cost, vehicle_source,
     vehicle_type, vehicle_code, trucking_rate_id, archived_at, synced_at)
SELECT p.key, p.daily_report_id, p.jobsite_id, p.crew_id, NULL, p.crew_type, p.work_date,
       (CASE WHEN COALESCE(length(COALESCE(p.entry ->> 'title', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'trucking_type'), 2147483647) THEN (COALESCE(p.entry ->> 'title', '')) ELSE cdc.fit_slow(COALESCE(p.entry ->> 'title', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'trucking_type'), 2147483647), 'fact_trucking', 'trucking_type', p.key) END), p.qty, p.hrs,
       cdc.num(p.rate_doc -> 'rate'),
       (CASE WHEN COALESCE(length(COALESCE(p.rate_doc ->> 'type', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'rate_type'), 2147483647) THEN (COALESCE(p.rate_doc ->> 'type', '')) ELSE cdc.fit_slow(COALESCE(p.rate_doc ->> 'type', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'rate_type'), 2147483647), 'fact_trucking', 'rate_type', p.key) END),
       CASE WHEN lower(p.rate_doc ->> 'type') = 'quantity'
            THEN p.qty * cdc.num(p.rate_doc -> 'rate')
            ELSE COALESCE(p.hrs, 0) * cdc.num(p.rate_doc -> 'rate') END,
       (CASE WHEN COALESCE(length(NULLIF(p.doc -> 'vehicleObject' ->> 'source', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'vehicle_source'), 2147483647) THEN (NULLIF(p.doc -> 'vehicleObject' ->> 'source', '')) ELSE cdc.fit_slow(NULLIF(p.doc -> 'vehicleObject' ->> 'source', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'vehicle_source'), 2147483647), 'fact_trucking', 'vehicle_source', p.key) END),
       (CASE WHEN COALESCE(length(cdc.vehicle_type(p.doc -> 'vehicleObject')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'vehicle_type'), 2147483647) THEN (cdc.vehicle_type(p.doc -> 'vehicleObject')) ELSE cdc.fit_slow(cdc.vehicle_type(p.doc -> 'vehicleObject'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'vehicle_type'), 2147483647), 'fact_trucking', 'vehicle_type', p.key) END),
       (CASE WHEN COALESCE(length(NULLIF(p.doc -> 'vehicleObject' ->> 'vehicleCode', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'vehicle_code'), 2147483647) THEN (NULLIF(p.doc -> 'vehicleObject' ->> 'vehicleCode', '')) ELSE cdc.fit_slow(NULLIF(p.doc -> 'vehicleObject' ->> 'vehicleCode', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'vehicle_code'), 2147483647), 'fact_trucking', 'vehicle_code', p.key) END),
       (CASE WHEN COALESCE(length(cdc.oid(p.doc -> 'vehicleObject' -> 'truckingRateId')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'trucking_rate_id'), 2147483647) THEN (cdc.oid(p.doc -> 'vehicleObject' -> 'truckingRateId')) ELSE cdc.fit_slow(cdc.oid(p.doc -> 'vehicleObject' -> 'truckingRateId'), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_trucking' AND fw.col = 'trucking_rate_id'), 2147483647), 'fact_trucking', 'trucking_rate_id', p.key) END),
       cdc.ts(p.doc -> 'archivedAt'), $2
FROM priced p
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, vehicle_id = EXCLUDED.vehicle_id,
    crew_type = EXCLUDED.crew_type, work_date = EXCLUDED.work_date,
    trucking_type = EXCLUDED.trucking_type, quantity = EXCLUDED.quantity,
    hours = EXCLUDED.hours, rate = EXCLUDED.rate, rate_type = EXCLUDED.rate_type,
    total_cost = EXCLUDED.total_cost, vehicle_source = EXCLUDED.vehicle_source,
    vehicle_type = EXCLUDED.vehicle_type, vehicle_code = EXCLUDED.vehicle_code,
    trucking_rate_id = EXCLUDED.trucking_rate_id, archived_at = EXCLUDED.archived_at,
    synced_at = EXCLUDED.synced_at

-- @step cleanup fact_trucking (reads affected keys of material_shipment)
UPDATE fact_trucking t
SET archived_at = cdc.detach_time('material_shipment', t.mongo_id, 'materialShipment', dr.mongo_id),
    synced_at = now()
FROM pg_temp.cdc_affected a, dim_daily_report dr
WHERE a.entity = 'material_shipment' AND t.mongo_id = a.key AND dr.id = t.daily_report_id
  AND t.synced_at IS DISTINCT FROM $2 AND t.archived_at IS NULL

-- @step placeholder invoice (reads affected keys of invoice)
-- An invoice's company has a row even when its document is gone (placeholder).
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(s.doc -> 'company') AS k
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.doc FROM cdc.source_doc s0
                        WHERE s0.entity = a.entity AND s0.key = a.key AND NOT s0.deleted OFFSET 0) s
    WHERE a.entity = 'invoice'
), p AS (
    INSERT INTO dim_company (mongo_id, name, synced_at)
    SELECT DISTINCT r.k, '(missing company)', $2 FROM refs r
    WHERE r.k ~ '^[0-9a-f]{24}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM p

-- @step upsert fact_invoice (reads affected keys of invoice)
-- (MATERIALIZED: the owner lookups run once per invoice, not once per use below.)
WITH i0 AS MATERIALIZED (
    SELECT s.key, s.doc,
           (SELECT min(k) FROM (
               SELECT js.key AS k FROM cdc.source_doc js
               WHERE js.entity = 'jobsite' AND js.doc -> 'revenueInvoices' @> cdc.oid_probe(s.key)
               OFFSET 0) r) AS revenue_jobsite,
           (SELECT min(k) FROM (
               SELECT js.key AS k FROM cdc.source_doc js
               WHERE js.entity = 'jobsite' AND js.doc -> 'expenseInvoices' @> cdc.oid_probe(s.key)
               OFFSET 0) e) AS expense_jobsite
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'invoice' AND NOT s.deleted AND s.doc IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM cdc.source_doc jm
                      WHERE jm.entity = 'jobsite_material'
                        AND jm.doc -> 'invoices' @> cdc.oid_probe(s.key))
), i AS (
    SELECT key, doc,
           CASE WHEN revenue_jobsite IS NOT NULL THEN ARRAY[revenue_jobsite, 'revenue']
                WHEN expense_jobsite IS NOT NULL THEN ARRAY[expense_jobsite, 'expense'] END AS owner
    FROM i0
)
INSERT INTO fact_invoice AS t
    (mongo_id, jobsite_id, company_id, invoice_date, direction, invoice_type, invoice_number,
     amount, description, synced_at)
SELECT i.key, j.id, c.id, cdc.day(cdc.ts(i.doc -> 'date'), $1), i.owner[2],
       CASE WHEN cdc.bool(i.doc -> 'accrual') THEN 'accrual'
            WHEN cdc.bool(i.doc -> 'internal') THEN 'internal'
            ELSE 'external' END,
       (CASE WHEN COALESCE(length(COALESCE(i.doc ->> 'invoiceNumber', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_invoice' AND fw.col = 'invoice_number'), 2147483647) THEN (COALESCE(i.doc ->> 'invoiceNumber', '')) ELSE cdc.fit_slow(COALESCE(i.doc ->> 'invoiceNumber', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_invoice' AND fw.col = 'invoice_number'), 2147483647), 'fact_invoice', 'invoice_number', i.key) END),
       COALESCE(cdc.num(i.doc -> 'cost'), 0),
       (CASE WHEN COALESCE(length(NULLIF(i.doc ->> 'description', '')), 0) <= COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_invoice' AND fw.col = 'description'), 2147483647) THEN (NULLIF(i.doc ->> 'description', '')) ELSE cdc.fit_slow(NULLIF(i.doc ->> 'description', ''), COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = 'fact_invoice' AND fw.col = 'description'), 2147483647), 'fact_invoice', 'description', i.key) END), $2
FROM i
JOIN dim_jobsite j ON j.mongo_id = i.owner[1]
JOIN dim_company c ON c.mongo_id = cdc.oid(i.doc -> 'company')
WHERE cdc.ts(i.doc -> 'date') IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    jobsite_id = EXCLUDED.jobsite_id, company_id = EXCLUDED.company_id,
    invoice_date = EXCLUDED.invoice_date, direction = EXCLUDED.direction,
    invoice_type = EXCLUDED.invoice_type, invoice_number = EXCLUDED.invoice_number,
    amount = EXCLUDED.amount, description = EXCLUDED.description,
    synced_at = EXCLUDED.synced_at

-- @step cleanup fact_invoice (reads affected keys of invoice)
DELETE FROM fact_invoice t
USING pg_temp.cdc_affected a
WHERE a.entity = 'invoice' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2
