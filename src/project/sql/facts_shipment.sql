-- Material shipments: costed (fact_material_shipment, plus fact_trucking when it carries a
-- trucking rate id) or non-costed (fact_non_costed_material). A shipment that switches side,
-- is deleted or detached has its other rows archived (README difference 7: deleting a shipment also
-- archives its non-costed row). $1 = report time zone, $2 = this apply's synced_at stamp.

-- @step upsert fact_material_shipment
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
       {{fit fact_material_shipment delivered_rate_id b.key b.deliv}}, cdc.ts(b.doc -> 'archivedAt'), $2,
       {{fit fact_material_shipment vehicle_type b.key cdc.vehicle_type(b.doc -> 'vehicleObject')}},
       {{fit fact_material_shipment rate_scenario_id b.key b.scen}}
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

-- @step cleanup fact_material_shipment
{{archive fact_material_shipment material_shipment materialShipment}}

-- @step upsert fact_non_costed_material
WITH x AS (SELECT * FROM pg_temp.cdc_ctx WHERE entity = 'material_shipment')
INSERT INTO fact_non_costed_material AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, crew_type, work_date, material_name,
     supplier_name, quantity, unit, archived_at, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, x.crew_id, x.crew_type, x.work_date,
       {{fit fact_non_costed_material material_name x.key COALESCE(NULLIF(x.doc ->> 'shipmentType', ''), 'Unknown')}},
       {{fit fact_non_costed_material supplier_name x.key COALESCE(NULLIF(x.doc ->> 'supplier', ''), 'Unknown')}},
       COALESCE(cdc.num(x.doc -> 'quantity'), 0),
       {{fit fact_non_costed_material unit x.key COALESCE(NULLIF(x.doc ->> 'unit', ''), 'unit')}},
       cdc.ts(x.doc -> 'archivedAt'), $2
FROM x
WHERE cdc.bool(x.doc -> 'noJobsiteMaterial')
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, crew_type = EXCLUDED.crew_type,
    work_date = EXCLUDED.work_date, material_name = EXCLUDED.material_name,
    supplier_name = EXCLUDED.supplier_name, quantity = EXCLUDED.quantity,
    unit = EXCLUDED.unit, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step cleanup fact_non_costed_material
{{archive fact_non_costed_material material_shipment materialShipment}}

-- @step upsert fact_trucking
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
       {{fit fact_trucking trucking_type p.key COALESCE(p.entry ->> 'title', '')}}, p.qty, p.hrs,
       cdc.num(p.rate_doc -> 'rate'),
       {{fit fact_trucking rate_type p.key COALESCE(p.rate_doc ->> 'type', '')}},
       CASE WHEN lower(p.rate_doc ->> 'type') = 'quantity'
            THEN p.qty * cdc.num(p.rate_doc -> 'rate')
            ELSE COALESCE(p.hrs, 0) * cdc.num(p.rate_doc -> 'rate') END,
       {{fit fact_trucking vehicle_source p.key NULLIF(p.doc -> 'vehicleObject' ->> 'source', '')}},
       {{fit fact_trucking vehicle_type p.key cdc.vehicle_type(p.doc -> 'vehicleObject')}},
       {{fit fact_trucking vehicle_code p.key NULLIF(p.doc -> 'vehicleObject' ->> 'vehicleCode', '')}},
       {{fit fact_trucking trucking_rate_id p.key cdc.oid(p.doc -> 'vehicleObject' -> 'truckingRateId')}},
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

-- @step cleanup fact_trucking
{{archive fact_trucking material_shipment materialShipment}}
