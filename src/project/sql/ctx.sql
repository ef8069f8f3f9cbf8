-- The daily-report child context, computed once per apply for every fact statement: each
-- affected live child with its parent daily report (the lowest-key live report whose array
-- lists it) when that report is derivable, the report's dim row, jobsite, work date and crew
-- type ("Unknown" fallback, README difference 7). Runs after the reports are derived.

-- @step context employee_work
INSERT INTO pg_temp.cdc_ctx {{ctx employee_work}}

-- @step context vehicle_work
INSERT INTO pg_temp.cdc_ctx {{ctx vehicle_work}}

-- @step context production
INSERT INTO pg_temp.cdc_ctx {{ctx production}}

-- @step context material_shipment
INSERT INTO pg_temp.cdc_ctx {{ctx material_shipment}}
