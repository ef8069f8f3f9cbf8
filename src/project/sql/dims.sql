-- Dimensions are eager (README, "Differences from the legacy sync" 5): every live document of a dimension collection has its
-- row. A deleted document keeps its row, archived at the deleting event's wall time where the
-- table has archived_at; a deleted crew's row becomes the placeholder while anything
-- references it (dim_crew has no archive column). Rate tables mirror rates[]
-- exactly (README difference 6). $1 = report time zone, $2 = this apply's synced_at stamp.

-- @step upsert dim_employee
INSERT INTO dim_employee AS t (mongo_id, name, job_title, archived_at, synced_at)
SELECT s.key, {{fit dim_employee name s.key COALESCE(s.doc ->> 'name', '')}},
       {{fit dim_employee job_title s.key NULLIF(s.doc ->> 'jobTitle', '')}},
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'employee' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, job_title = EXCLUDED.job_title,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_employee_rate
{{rates employee}}

-- @step upsert dim_vehicle
INSERT INTO dim_vehicle AS t
    (mongo_id, name, vehicle_code, vehicle_type, is_rental, source_company, archived_at, synced_at)
SELECT s.key, {{fit dim_vehicle name s.key COALESCE(s.doc ->> 'name', '')}},
       {{fit dim_vehicle vehicle_code s.key COALESCE(s.doc ->> 'vehicleCode', 'noCode')}},
       {{fit dim_vehicle vehicle_type s.key COALESCE(s.doc ->> 'vehicleType', 'General')}},
       cdc.bool(s.doc -> 'rental'),
       {{fit dim_vehicle source_company s.key COALESCE(s.doc ->> 'sourceCompany', 'Bow Mark')}},
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'vehicle' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, vehicle_code = EXCLUDED.vehicle_code,
    vehicle_type = EXCLUDED.vehicle_type, is_rental = EXCLUDED.is_rental,
    source_company = EXCLUDED.source_company, archived_at = EXCLUDED.archived_at,
    synced_at = EXCLUDED.synced_at

-- @step upsert dim_vehicle_rate
{{rates vehicle}}

-- @step upsert dim_jobsite
INSERT INTO dim_jobsite AS t (mongo_id, name, jobcode, active, archived_at, synced_at)
SELECT s.key, {{fit dim_jobsite name s.key COALESCE(s.doc ->> 'name', '')}},
       {{fit dim_jobsite jobcode s.key NULLIF(s.doc ->> 'jobcode', '')}},
       -- The app's schema default: a jobsite without `active` is inactive.
       cdc.bool(s.doc -> 'active'),
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'jobsite' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, jobcode = EXCLUDED.jobcode, active = EXCLUDED.active,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_company
INSERT INTO dim_company AS t (mongo_id, name, archived_at, synced_at)
SELECT s.key, {{fit dim_company name s.key COALESCE(s.doc ->> 'name', '')}}, cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'company' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_material
INSERT INTO dim_material AS t (mongo_id, name, archived_at, synced_at)
SELECT s.key, {{fit dim_material name s.key COALESCE(s.doc ->> 'name', '')}}, cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'material' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @step upsert dim_crew
INSERT INTO dim_crew AS t (mongo_id, name, type, synced_at)
SELECT s.key, {{fit dim_crew name s.key COALESCE(s.doc ->> 'name', '')}},
       {{fit dim_crew type s.key COALESCE(NULLIF(s.doc ->> 'type', ''), 'Unknown')}}, $2
FROM pg_temp.cdc_affected a
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
WHERE a.entity = 'crew' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, type = EXCLUDED.type, synced_at = EXCLUDED.synced_at

-- @step cleanup dim_crew
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

-- @step archive_deleted
-- Deleted dimension documents: soft archive at the deleting event's wall time (the row and
-- the facts referencing it stay; the facts keep their hours, their rates become 0 as for any
-- missing rate), and an employee's or vehicle's rates go with its rates[].
WITH e AS (
    {{archive_dim dim_employee employee}}
), er AS (
    {{drop_rates employee}}
), vr AS (
    {{drop_rates vehicle}}
), v AS (
    {{archive_dim dim_vehicle vehicle}}
), j AS (
    {{archive_dim dim_jobsite jobsite}}
), c AS (
    {{archive_dim dim_company company}}
), m AS (
    {{archive_dim dim_material material}}
)
SELECT (SELECT count(*) FROM e) + (SELECT count(*) FROM v) + (SELECT count(*) FROM j)
     + (SELECT count(*) FROM c) + (SELECT count(*) FROM m) + (SELECT count(*) FROM er)
     + (SELECT count(*) FROM vr)
