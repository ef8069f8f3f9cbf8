-- The affected set: every (entity, key) whose star rows may change because the documents in
-- pg_temp.cdc_changed changed (the mirror upsert adds those documents themselves). Each step
-- reads the new state (the mirror) and, where a reference may have been dropped, the old
-- state (cdc_changed.old_doc or the star rows).
-- $1 = report time zone. Order matters: later steps read what earlier ones added.
-- Each label reads `SOURCES -> TARGETS`: a step runs only when the batch has affected keys of
-- one of its source entities (changed ones, for the steps that read pg_temp.cdc_changed, are a
-- subset), and may add keys of its target entities.
-- Mirror rows of affected or changed keys are read through `CROSS JOIN LATERAL (… OFFSET 0)`
-- (here and in every derivation file): a lookup per key, whatever the mirror's statistics say
-- (a plain join let the planner scan a whole collection, or every report of a jobsite).

-- @step closure jobsite,crew -> daily_report
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

-- @step closure daily_report -> employee_work,vehicle_work,material_shipment,production
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
    CROSS JOIN {{report_children}}
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
              WHERE s.entity IN {{child_entities}})
ON CONFLICT DO NOTHING

-- @step closure employee,vehicle -> employee_work,vehicle_work
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

-- @step closure jobsite,material,company,invoice -> jobsite_material
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

-- @step closure jobsite,jobsite_material,company -> invoice
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

-- @step closure jobsite_material -> material_shipment
-- An affected jobsite material -> the shipments using it (rates, cost type, appearance).
INSERT INTO pg_temp.cdc_affected (entity, key)
SELECT 'material_shipment', s.key
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = 'material_shipment'
 AND cdc.oid(s.doc -> 'jobsiteMaterial') = a.key
WHERE a.entity = 'jobsite_material'
ON CONFLICT DO NOTHING

-- @step closure material_shipment -> jobsite_material
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

-- @step closure material_shipment,daily_report -> material_shipment
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
