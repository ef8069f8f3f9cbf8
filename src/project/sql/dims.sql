-- Dimensions are eager (DESIGN §7.5): every live document of a dimension collection has its
-- row. A deleted document keeps its row, archived at the deleting event's wall time where the
-- table has archived_at; a deleted crew's row is removed (dim_crew has no archive column). Rate tables mirror rates[]
-- exactly (§7.6). $1 = report time zone, $2 = this apply's synced_at stamp.

-- @stmt dim_employee
INSERT INTO dim_employee AS t (mongo_id, name, job_title, archived_at, synced_at)
SELECT s.key, COALESCE(s.doc ->> 'name', ''), NULLIF(s.doc ->> 'jobTitle', ''),
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
WHERE a.entity = 'employee' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, job_title = EXCLUDED.job_title,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @stmt dim_employee_rate
WITH gone AS (
    DELETE FROM dim_employee_rate r
    USING pg_temp.cdc_affected a, dim_employee t
    WHERE a.entity = 'employee' AND t.mongo_id = a.key AND t.synced_at = $2
      AND r.employee_id = t.id
)
INSERT INTO dim_employee_rate (employee_id, mongo_id, rate, effective_date, synced_at)
SELECT t.id, NULL, cdc.num(e.v -> 'rate'), cdc.day(cdc.ts(e.v -> 'date'), $1), $2
FROM pg_temp.cdc_affected a
JOIN dim_employee t ON t.mongo_id = a.key AND t.synced_at = $2
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) AS e(v)
WHERE a.entity = 'employee'
  AND cdc.num(e.v -> 'rate') IS NOT NULL AND cdc.ts(e.v -> 'date') IS NOT NULL

-- @stmt dim_vehicle
INSERT INTO dim_vehicle AS t
    (mongo_id, name, vehicle_code, vehicle_type, is_rental, source_company, archived_at, synced_at)
SELECT s.key, COALESCE(s.doc ->> 'name', ''), COALESCE(s.doc ->> 'vehicleCode', 'noCode'),
       COALESCE(s.doc ->> 'vehicleType', 'General'), cdc.bool(s.doc -> 'rental'),
       COALESCE(s.doc ->> 'sourceCompany', 'Bow Mark'), cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
WHERE a.entity = 'vehicle' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, vehicle_code = EXCLUDED.vehicle_code,
    vehicle_type = EXCLUDED.vehicle_type, is_rental = EXCLUDED.is_rental,
    source_company = EXCLUDED.source_company, archived_at = EXCLUDED.archived_at,
    synced_at = EXCLUDED.synced_at

-- @stmt dim_vehicle_rate
WITH gone AS (
    DELETE FROM dim_vehicle_rate r
    USING pg_temp.cdc_affected a, dim_vehicle t
    WHERE a.entity = 'vehicle' AND t.mongo_id = a.key AND t.synced_at = $2
      AND r.vehicle_id = t.id
)
INSERT INTO dim_vehicle_rate (vehicle_id, mongo_id, rate, effective_date, synced_at)
SELECT t.id, NULL, cdc.num(e.v -> 'rate'), cdc.day(cdc.ts(e.v -> 'date'), $1), $2
FROM pg_temp.cdc_affected a
JOIN dim_vehicle t ON t.mongo_id = a.key AND t.synced_at = $2
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) AS e(v)
WHERE a.entity = 'vehicle'
  AND cdc.num(e.v -> 'rate') IS NOT NULL AND cdc.ts(e.v -> 'date') IS NOT NULL

-- @stmt dim_jobsite
INSERT INTO dim_jobsite AS t (mongo_id, name, jobcode, active, archived_at, synced_at)
SELECT s.key, COALESCE(s.doc ->> 'name', ''), NULLIF(s.doc ->> 'jobcode', ''),
       CASE WHEN jsonb_typeof(s.doc -> 'active') = 'boolean' THEN (s.doc -> 'active')::boolean
            ELSE true END,
       cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
WHERE a.entity = 'jobsite' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, jobcode = EXCLUDED.jobcode, active = EXCLUDED.active,
    archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @stmt dim_company
INSERT INTO dim_company AS t (mongo_id, name, archived_at, synced_at)
SELECT s.key, COALESCE(s.doc ->> 'name', ''), cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
WHERE a.entity = 'company' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @stmt dim_material
INSERT INTO dim_material AS t (mongo_id, name, archived_at, synced_at)
SELECT s.key, COALESCE(s.doc ->> 'name', ''), cdc.ts(s.doc -> 'archivedAt'), $2
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
WHERE a.entity = 'material' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, archived_at = EXCLUDED.archived_at, synced_at = EXCLUDED.synced_at

-- @stmt dim_crew
INSERT INTO dim_crew AS t (mongo_id, name, type, synced_at)
SELECT s.key, COALESCE(s.doc ->> 'name', ''), COALESCE(NULLIF(s.doc ->> 'type', ''), 'Unknown'), $2
FROM pg_temp.cdc_affected a
JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
WHERE a.entity = 'crew' AND NOT s.deleted AND s.doc IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    name = EXCLUDED.name, type = EXCLUDED.type, synced_at = EXCLUDED.synced_at

-- @stmt dim_crew
-- A deleted crew goes (dim_crew has no archive column); its reports are not derivable any
-- more, so only archived rows cascade with it.
DELETE FROM dim_crew t
USING pg_temp.cdc_affected a, cdc.source_doc s
WHERE a.entity = 'crew' AND s.entity = a.entity AND s.key = a.key AND s.deleted
  AND t.mongo_id = a.key

-- @stmt dim_*
-- Deleted dimension documents: soft archive at the deleting event's wall time.
WITH e AS (
    UPDATE dim_employee t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
    WHERE a.entity = 'employee' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1
), v AS (
    UPDATE dim_vehicle t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
    WHERE a.entity = 'vehicle' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1
), j AS (
    UPDATE dim_jobsite t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
    WHERE a.entity = 'jobsite' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1
), c AS (
    UPDATE dim_company t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
    WHERE a.entity = 'company' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1
), m AS (
    UPDATE dim_material t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a JOIN cdc.source_doc s ON s.entity = a.entity AND s.key = a.key
    WHERE a.entity = 'material' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM e) + (SELECT count(*) FROM v) + (SELECT count(*) FROM j)
     + (SELECT count(*) FROM c) + (SELECT count(*) FROM m)
