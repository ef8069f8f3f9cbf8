-- Employee work, vehicle work and production facts, from the child context (`pg_temp.cdc_ctx`,
-- sql/ctx.sql): each affected live child with its derivable parent report, the report's dim
-- row, work date and crew type.
-- Rows of affected children that are not derivable any more are archived at the wall time
-- of the event that deleted or detached them (production: hard-deleted, as legacy).
-- $1 = report time zone, $2 = this apply's synced_at stamp.

-- @step placeholder employee_work
-- The employee a work item names has a row even when its document is gone (placeholder).
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(c.doc -> 'employee') AS k FROM pg_temp.cdc_ctx c WHERE c.entity = 'employee_work'
), p AS (
    {{placeholder dim_employee k}}
)
SELECT count(*) FROM p

-- @step upsert fact_employee_work
WITH x AS MATERIALIZED (
    -- Each date parsed once (OFFSET 0 keeps the planner from repeating the calls).
    SELECT c.*, cdc.oid(c.doc -> 'employee') AS dim_key, t.st, t.et
    FROM pg_temp.cdc_ctx c
    CROSS JOIN LATERAL (SELECT cdc.ts(c.doc -> 'startTime') AS st,
                               cdc.ts(c.doc -> 'endTime') AS et OFFSET 0) t
    WHERE c.entity = 'employee_work'
), {{work_dims employee e}}
INSERT INTO fact_employee_work AS t
    (mongo_id, daily_report_id, jobsite_id, crew_id, employee_id, crew_type, work_date,
     start_time, end_time, job_title, hourly_rate, archived_at, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, x.crew_id, e.id, x.crew_type, x.work_date,
       x.st, x.et, {{fit fact_employee_work job_title x.key COALESCE(x.doc ->> 'jobTitle', '')}},
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

-- @step cleanup fact_employee_work
{{archive fact_employee_work employee_work employeeWork}}

-- @step placeholder vehicle_work
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(c.doc -> 'vehicle') AS k FROM pg_temp.cdc_ctx c WHERE c.entity = 'vehicle_work'
), p AS (
    {{placeholder dim_vehicle k}}
)
SELECT count(*) FROM p

-- @step upsert fact_vehicle_work
WITH x AS MATERIALIZED (
    SELECT c.*, cdc.oid(c.doc -> 'vehicle') AS dim_key
    FROM pg_temp.cdc_ctx c WHERE c.entity = 'vehicle_work'
), {{work_dims vehicle v}}
INSERT INTO fact_vehicle_work AS t
    (mongo_id, daily_report_id, jobsite_id, vehicle_id, crew_id, crew_type, work_date,
     job_title, hours, hourly_rate, archived_at, synced_at)
SELECT x.key, x.daily_report_id, x.jobsite_id, v.id, x.crew_id, x.crew_type, x.work_date,
       {{fit fact_vehicle_work job_title x.key NULLIF(x.doc ->> 'jobTitle', '')}},
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

-- @step cleanup fact_vehicle_work
{{archive fact_vehicle_work vehicle_work vehicleWork}}

-- @step upsert fact_production
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
       {{fit fact_production job_title x.key COALESCE(x.doc ->> 'jobTitle', '')}},
       COALESCE(cdc.num(x.doc -> 'quantity'), 0),
       {{fit fact_production unit x.key COALESCE(x.doc ->> 'unit', '')}}, x.st, x.et,
       {{fit fact_production description x.key NULLIF(x.doc ->> 'description', '')}}, $2
FROM x
WHERE x.st IS NOT NULL AND x.et IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    daily_report_id = EXCLUDED.daily_report_id, jobsite_id = EXCLUDED.jobsite_id,
    crew_id = EXCLUDED.crew_id, crew_type = EXCLUDED.crew_type,
    work_date = EXCLUDED.work_date, job_title = EXCLUDED.job_title,
    quantity = EXCLUDED.quantity, unit = EXCLUDED.unit, start_time = EXCLUDED.start_time,
    end_time = EXCLUDED.end_time, description = EXCLUDED.description,
    synced_at = EXCLUDED.synced_at

-- @step cleanup fact_production
DELETE FROM fact_production t
USING pg_temp.cdc_affected a
WHERE a.entity = 'production' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2
