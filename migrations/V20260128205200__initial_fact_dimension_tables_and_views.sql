-- Legacy version 20260128205200 (dbmate): the reporting star schema of spec-legacy-sync.md §1.
-- Dimensions, facts, their indexes, the six cost/issue views and the four report functions.
-- Applied as is on an empty database; recorded as a baseline (never re-run) on a database the
-- legacy dbmate migrations already built. Never edit this file: its checksum is recorded.

-- ---------------------------------------------------------------------------------------------
-- Dimensions
-- ---------------------------------------------------------------------------------------------

CREATE TABLE dim_employee (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id    VARCHAR(24) NOT NULL UNIQUE,
    name        VARCHAR(255) NOT NULL,
    job_title   VARCHAR(255),
    archived_at TIMESTAMPTZ,
    synced_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_employee_mongo_id ON dim_employee (mongo_id);
CREATE INDEX idx_dim_employee_name ON dim_employee (name);

-- Rate history; mongo_id is never written (always NULL).
CREATE TABLE dim_employee_rate (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    employee_id    UUID NOT NULL REFERENCES dim_employee (id) ON DELETE CASCADE,
    mongo_id       VARCHAR(24),
    rate           DECIMAL(10, 2) NOT NULL,
    effective_date DATE NOT NULL,
    synced_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_employee_rate_lookup ON dim_employee_rate (employee_id, effective_date);

CREATE TABLE dim_vehicle (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id       VARCHAR(24) NOT NULL UNIQUE,
    name           VARCHAR(255) NOT NULL,
    vehicle_code   VARCHAR(50) NOT NULL,
    vehicle_type   VARCHAR(100) NOT NULL DEFAULT 'General',
    is_rental      BOOLEAN NOT NULL DEFAULT FALSE,
    source_company VARCHAR(255) NOT NULL DEFAULT 'Bow Mark',
    archived_at    TIMESTAMPTZ,
    synced_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_vehicle_mongo_id ON dim_vehicle (mongo_id);
CREATE INDEX idx_dim_vehicle_code ON dim_vehicle (vehicle_code);

CREATE TABLE dim_vehicle_rate (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    vehicle_id     UUID NOT NULL REFERENCES dim_vehicle (id) ON DELETE CASCADE,
    mongo_id       VARCHAR(24),
    rate           DECIMAL(10, 2) NOT NULL,
    effective_date DATE NOT NULL,
    synced_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_vehicle_rate_lookup ON dim_vehicle_rate (vehicle_id, effective_date);

CREATE TABLE dim_jobsite (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id    VARCHAR(24) NOT NULL UNIQUE,
    name        VARCHAR(255) NOT NULL,
    jobcode     VARCHAR(100),
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    archived_at TIMESTAMPTZ,
    synced_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_jobsite_mongo_id ON dim_jobsite (mongo_id);
CREATE INDEX idx_dim_jobsite_jobcode ON dim_jobsite (jobcode);
CREATE INDEX idx_dim_jobsite_active ON dim_jobsite (active);

-- Suppliers and invoice counterparties.
CREATE TABLE dim_company (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id    VARCHAR(24) NOT NULL UNIQUE,
    name        VARCHAR(255) NOT NULL,
    archived_at TIMESTAMPTZ,
    synced_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_company_mongo_id ON dim_company (mongo_id);

CREATE TABLE dim_material (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id    VARCHAR(24) NOT NULL UNIQUE,
    name        VARCHAR(255) NOT NULL,
    archived_at TIMESTAMPTZ,
    synced_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_material_mongo_id ON dim_material (mongo_id);

-- A material as configured on one jobsite (supplier plus costing).
CREATE TABLE dim_jobsite_material (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id    VARCHAR(24) NOT NULL UNIQUE,
    jobsite_id  UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    material_id UUID NOT NULL REFERENCES dim_material (id) ON DELETE CASCADE,
    supplier_id UUID NOT NULL REFERENCES dim_company (id) ON DELETE CASCADE,
    quantity    DECIMAL(12, 3) NOT NULL,
    unit        VARCHAR(50) NOT NULL,
    cost_type   VARCHAR(50) NOT NULL,
    delivered   BOOLEAN NOT NULL DEFAULT FALSE,
    synced_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_jobsite_material_mongo_id ON dim_jobsite_material (mongo_id);
CREATE INDEX idx_dim_jobsite_material_jobsite ON dim_jobsite_material (jobsite_id);

-- mongo_id is the discriminator: NULL = standard rate, otherwise a deliveredRates[] or
-- scenarios[] entry _id.
CREATE TABLE dim_jobsite_material_rate (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    jobsite_material_id UUID NOT NULL REFERENCES dim_jobsite_material (id) ON DELETE CASCADE,
    mongo_id            VARCHAR(24),
    rate                DECIMAL(10, 2) NOT NULL,
    effective_date      DATE NOT NULL,
    estimated           BOOLEAN NOT NULL DEFAULT FALSE,
    synced_at           TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_jobsite_material_rate_lookup
    ON dim_jobsite_material_rate (jobsite_material_id, effective_date);

CREATE TABLE dim_crew (
    id        UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id  VARCHAR(24) NOT NULL UNIQUE,
    name      VARCHAR(255) NOT NULL,
    type      VARCHAR(100) NOT NULL,
    synced_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_crew_mongo_id ON dim_crew (mongo_id);

-- Degenerate dimension: one row per daily report.
CREATE TABLE dim_daily_report (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id         VARCHAR(24) NOT NULL UNIQUE,
    jobsite_id       UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    crew_id          UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    report_date      DATE NOT NULL,
    approved         BOOLEAN NOT NULL DEFAULT FALSE,
    payroll_complete BOOLEAN NOT NULL DEFAULT FALSE,
    archived         BOOLEAN NOT NULL DEFAULT FALSE,
    synced_at        TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_dim_daily_report_mongo_id ON dim_daily_report (mongo_id);
CREATE INDEX idx_dim_daily_report_date ON dim_daily_report (report_date);
CREATE INDEX idx_dim_daily_report_jobsite_date ON dim_daily_report (jobsite_id, report_date);

-- ---------------------------------------------------------------------------------------------
-- Facts
-- ---------------------------------------------------------------------------------------------

-- Hours and cost are computed in UTC so the expressions are immutable. An end before the start
-- is an overnight shift (+24 h); longer spans are kept as they are. total_cost uses the
-- unrounded hours.
CREATE TABLE fact_employee_work (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id        VARCHAR(24) NOT NULL UNIQUE,
    daily_report_id UUID NOT NULL REFERENCES dim_daily_report (id) ON DELETE CASCADE,
    jobsite_id      UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    employee_id     UUID NOT NULL REFERENCES dim_employee (id) ON DELETE CASCADE,
    crew_id         UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    crew_type       VARCHAR(100) NOT NULL,
    work_date       DATE NOT NULL,
    start_time      TIMESTAMPTZ NOT NULL,
    end_time        TIMESTAMPTZ NOT NULL,
    job_title       VARCHAR(255) NOT NULL,
    hours           DECIMAL(10, 2) GENERATED ALWAYS AS (
        CASE
            WHEN EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC'))
                 < EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))
            THEN (EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC')) + 86400
                  - EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))) / 3600
            ELSE (EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC'))
                  - EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))) / 3600
        END
    ) STORED,
    hourly_rate     DECIMAL(10, 2) NOT NULL,
    total_cost      DECIMAL(12, 2) GENERATED ALWAYS AS (
        CASE
            WHEN EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC'))
                 < EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))
            THEN (EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC')) + 86400
                  - EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))) / 3600 * hourly_rate
            ELSE (EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC'))
                  - EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))) / 3600 * hourly_rate
        END
    ) STORED,
    archived_at     TIMESTAMPTZ,
    synced_at       TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_employee_work_mongo_id ON fact_employee_work (mongo_id);
CREATE INDEX idx_fact_employee_work_date ON fact_employee_work (work_date);
CREATE INDEX idx_fact_employee_work_jobsite_date ON fact_employee_work (jobsite_id, work_date);
CREATE INDEX idx_fact_employee_work_daily_report ON fact_employee_work (daily_report_id);
CREATE INDEX idx_fact_employee_work_employee_date ON fact_employee_work (employee_id, work_date);

-- Hours are taken from the document as they are.
CREATE TABLE fact_vehicle_work (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id        VARCHAR(24) NOT NULL UNIQUE,
    daily_report_id UUID NOT NULL REFERENCES dim_daily_report (id) ON DELETE CASCADE,
    jobsite_id      UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    vehicle_id      UUID NOT NULL REFERENCES dim_vehicle (id) ON DELETE CASCADE,
    crew_id         UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    crew_type       VARCHAR(100) NOT NULL,
    work_date       DATE NOT NULL,
    job_title       VARCHAR(255),
    hours           DECIMAL(10, 2) NOT NULL,
    hourly_rate     DECIMAL(10, 2) NOT NULL,
    total_cost      DECIMAL(12, 2) GENERATED ALWAYS AS (hours * hourly_rate) STORED,
    archived_at     TIMESTAMPTZ,
    synced_at       TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_vehicle_work_mongo_id ON fact_vehicle_work (mongo_id);
CREATE INDEX idx_fact_vehicle_work_date ON fact_vehicle_work (work_date);
CREATE INDEX idx_fact_vehicle_work_jobsite_date ON fact_vehicle_work (jobsite_id, work_date);
CREATE INDEX idx_fact_vehicle_work_daily_report ON fact_vehicle_work (daily_report_id);
CREATE INDEX idx_fact_vehicle_work_vehicle_date ON fact_vehicle_work (vehicle_id, work_date);

-- A costed shipment (it points at a jobsite material). vehicle_type and rate_scenario_id are
-- added by later versions, so they come last.
CREATE TABLE fact_material_shipment (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id            VARCHAR(24) NOT NULL UNIQUE,
    daily_report_id     UUID NOT NULL REFERENCES dim_daily_report (id) ON DELETE CASCADE,
    jobsite_id          UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    jobsite_material_id UUID NOT NULL REFERENCES dim_jobsite_material (id) ON DELETE CASCADE,
    crew_id             UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    crew_type           VARCHAR(100) NOT NULL,
    work_date           DATE NOT NULL,
    quantity            DECIMAL(12, 3) NOT NULL,
    unit                VARCHAR(50) NOT NULL,
    rate                DECIMAL(10, 2) NOT NULL,
    total_cost          DECIMAL(12, 2) GENERATED ALWAYS AS (quantity * rate) STORED,
    estimated           BOOLEAN NOT NULL DEFAULT FALSE,
    delivered_rate_id   VARCHAR(24),
    archived_at         TIMESTAMPTZ,
    synced_at           TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_material_shipment_mongo_id ON fact_material_shipment (mongo_id);
CREATE INDEX idx_fact_material_shipment_date ON fact_material_shipment (work_date);
CREATE INDEX idx_fact_material_shipment_jobsite_date
    ON fact_material_shipment (jobsite_id, work_date);
CREATE INDEX idx_fact_material_shipment_daily_report ON fact_material_shipment (daily_report_id);
CREATE INDEX idx_fact_material_shipment_material ON fact_material_shipment (jobsite_material_id);

-- A shipment of free-text material (noJobsiteMaterial). shipment_type is never written.
CREATE TABLE fact_non_costed_material (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id        VARCHAR(24) NOT NULL UNIQUE,
    daily_report_id UUID NOT NULL REFERENCES dim_daily_report (id) ON DELETE CASCADE,
    jobsite_id      UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    crew_id         UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    crew_type       VARCHAR(100) NOT NULL,
    work_date       DATE NOT NULL,
    material_name   VARCHAR(255) NOT NULL,
    supplier_name   VARCHAR(255) NOT NULL,
    shipment_type   VARCHAR(255),
    quantity        DECIMAL(12, 3) NOT NULL,
    unit            VARCHAR(50),
    archived_at     TIMESTAMPTZ,
    synced_at       TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_non_costed_material_mongo_id ON fact_non_costed_material (mongo_id);
CREATE INDEX idx_fact_non_costed_material_date ON fact_non_costed_material (work_date);
CREATE INDEX idx_fact_non_costed_material_jobsite_date
    ON fact_non_costed_material (jobsite_id, work_date);
CREATE INDEX idx_fact_non_costed_material_daily_report
    ON fact_non_costed_material (daily_report_id);

-- Trucking cost of a costed shipment; mongo_id is the shipment's _id. total_cost is written by
-- the sync (not generated); vehicle_id is always NULL.
CREATE TABLE fact_trucking (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id         VARCHAR(24) NOT NULL UNIQUE,
    daily_report_id  UUID NOT NULL REFERENCES dim_daily_report (id) ON DELETE CASCADE,
    jobsite_id       UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    crew_id          UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    vehicle_id       UUID REFERENCES dim_vehicle (id) ON DELETE SET NULL,
    crew_type        VARCHAR(100) NOT NULL,
    work_date        DATE NOT NULL,
    trucking_type    VARCHAR(255) NOT NULL,
    quantity         DECIMAL(12, 3) NOT NULL,
    hours            DECIMAL(6, 2),
    rate             DECIMAL(10, 2) NOT NULL,
    rate_type        VARCHAR(20) NOT NULL,
    total_cost       DECIMAL(12, 2) NOT NULL,
    vehicle_source   VARCHAR(255),
    vehicle_type     VARCHAR(100),
    vehicle_code     VARCHAR(50),
    trucking_rate_id VARCHAR(24),
    archived_at      TIMESTAMPTZ,
    synced_at        TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_trucking_mongo_id ON fact_trucking (mongo_id);
CREATE INDEX idx_fact_trucking_date ON fact_trucking (work_date);
CREATE INDEX idx_fact_trucking_jobsite_date ON fact_trucking (jobsite_id, work_date);
CREATE INDEX idx_fact_trucking_daily_report ON fact_trucking (daily_report_id);

-- Output records; hard-deleted, so no archive column.
CREATE TABLE fact_production (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id        VARCHAR(24) NOT NULL UNIQUE,
    daily_report_id UUID NOT NULL REFERENCES dim_daily_report (id) ON DELETE CASCADE,
    jobsite_id      UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    crew_id         UUID NOT NULL REFERENCES dim_crew (id) ON DELETE CASCADE,
    crew_type       VARCHAR(100) NOT NULL,
    work_date       DATE NOT NULL,
    job_title       TEXT NOT NULL,
    quantity        DECIMAL(12, 3) NOT NULL,
    unit            VARCHAR(50) NOT NULL,
    start_time      TIMESTAMPTZ NOT NULL,
    end_time        TIMESTAMPTZ NOT NULL,
    description     TEXT,
    hours           DECIMAL(10, 2) GENERATED ALWAYS AS (
        CASE
            WHEN EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC'))
                 < EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))
            THEN (EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC')) + 86400
                  - EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))) / 3600
            ELSE (EXTRACT(EPOCH FROM (end_time AT TIME ZONE 'UTC'))
                  - EXTRACT(EPOCH FROM (start_time AT TIME ZONE 'UTC'))) / 3600
        END
    ) STORED,
    synced_at       TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_production_mongo_id ON fact_production (mongo_id);
CREATE INDEX idx_fact_production_date ON fact_production (work_date);
CREATE INDEX idx_fact_production_jobsite_date ON fact_production (jobsite_id, work_date);
CREATE INDEX idx_fact_production_daily_report ON fact_production (daily_report_id);

-- Invoices are not tied to a daily report; hard-deleted.
CREATE TABLE fact_invoice (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    mongo_id       VARCHAR(24) NOT NULL UNIQUE,
    jobsite_id     UUID NOT NULL REFERENCES dim_jobsite (id) ON DELETE CASCADE,
    company_id     UUID NOT NULL REFERENCES dim_company (id) ON DELETE CASCADE,
    invoice_date   DATE NOT NULL,
    direction      VARCHAR(10) NOT NULL,
    invoice_type   VARCHAR(20) NOT NULL,
    invoice_number VARCHAR(100) NOT NULL,
    amount         DECIMAL(12, 2) NOT NULL,
    description    TEXT,
    synced_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_fact_invoice_mongo_id ON fact_invoice (mongo_id);
CREATE INDEX idx_fact_invoice_date ON fact_invoice (invoice_date);
CREATE INDEX idx_fact_invoice_jobsite_date ON fact_invoice (jobsite_id, invoice_date);
CREATE INDEX idx_fact_invoice_direction ON fact_invoice (direction);

-- ---------------------------------------------------------------------------------------------
-- Report views. A cost line counts when its fact is not archived and its daily report is
-- approved and not archived (the old Mongo report behaviour). Invoices have no such filter.
-- ---------------------------------------------------------------------------------------------

-- One row per cost line (production and invoices are not cost lines).
CREATE VIEW jobsite_all_costs AS
SELECT ew.jobsite_id,
       ew.work_date            AS date,
       ew.crew_type,
       'employee'::text        AS cost_type,
       ew.employee_id          AS entity_id,
       NULL::varchar           AS entity_name,
       ew.hours                AS quantity,
       'hours'::text           AS quantity_unit,
       ew.hourly_rate          AS rate,
       ew.total_cost,
       FALSE                   AS estimated,
       ew.daily_report_id
  FROM fact_employee_work ew
  JOIN dim_daily_report dr ON dr.id = ew.daily_report_id
 WHERE ew.archived_at IS NULL AND dr.approved AND NOT dr.archived
UNION ALL
SELECT vw.jobsite_id, vw.work_date, vw.crew_type, 'vehicle'::text, vw.vehicle_id, NULL::varchar,
       vw.hours, 'hours'::text, vw.hourly_rate, vw.total_cost, FALSE, vw.daily_report_id
  FROM fact_vehicle_work vw
  JOIN dim_daily_report dr ON dr.id = vw.daily_report_id
 WHERE vw.archived_at IS NULL AND dr.approved AND NOT dr.archived
UNION ALL
SELECT ms.jobsite_id, ms.work_date, ms.crew_type, 'material'::text, ms.jobsite_material_id,
       NULL::varchar, ms.quantity, ms.unit::text, ms.rate, ms.total_cost, ms.estimated,
       ms.daily_report_id
  FROM fact_material_shipment ms
  JOIN dim_daily_report dr ON dr.id = ms.daily_report_id
 WHERE ms.archived_at IS NULL AND dr.approved AND NOT dr.archived
UNION ALL
SELECT nc.jobsite_id, nc.work_date, nc.crew_type, 'non_costed_material'::text, NULL::uuid,
       nc.material_name, nc.quantity, nc.unit::text, 0::numeric, 0::numeric, FALSE,
       nc.daily_report_id
  FROM fact_non_costed_material nc
  JOIN dim_daily_report dr ON dr.id = nc.daily_report_id
 WHERE nc.archived_at IS NULL AND dr.approved AND NOT dr.archived
UNION ALL
SELECT tr.jobsite_id, tr.work_date, tr.crew_type, 'trucking'::text, NULL::uuid,
       tr.trucking_type, tr.quantity, tr.rate_type::text, tr.rate, tr.total_cost, FALSE,
       tr.daily_report_id
  FROM fact_trucking tr
  JOIN dim_daily_report dr ON dr.id = tr.daily_report_id
 WHERE tr.archived_at IS NULL AND dr.approved AND NOT dr.archived;

-- Per jobsite and day: every cost metric, with trucking hours summed from the trucking facts.
CREATE VIEW jobsite_daily_summary AS
WITH day_trucking AS (
    SELECT tr.jobsite_id, tr.work_date, SUM(COALESCE(tr.hours, 0)) AS hours
      FROM fact_trucking tr
      JOIN dim_daily_report dr ON dr.id = tr.daily_report_id
     WHERE tr.archived_at IS NULL AND dr.approved AND NOT dr.archived
     GROUP BY tr.jobsite_id, tr.work_date
)
SELECT c.jobsite_id,
       c.date,
       js.name AS jobsite_name,
       js.jobcode,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'employee'), 0) AS employee_hours,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'employee'), 0) AS employee_cost,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'vehicle'), 0) AS vehicle_hours,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'vehicle'), 0) AS vehicle_cost,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'material'), 0) AS material_quantity,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'material'), 0) AS material_cost,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'non_costed_material'), 0)
           AS non_costed_material_quantity,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'trucking'), 0) AS trucking_quantity,
       COALESCE(MAX(dt.hours), 0) AS trucking_hours,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'trucking'), 0) AS trucking_cost,
       SUM(c.total_cost) AS total_cost,
       BOOL_OR(c.estimated) AS has_estimated_costs,
       ARRAY_AGG(DISTINCT c.crew_type) AS crew_types
  FROM jobsite_all_costs c
  LEFT JOIN dim_jobsite js ON js.id = c.jobsite_id
  LEFT JOIN day_trucking dt ON dt.jobsite_id = c.jobsite_id AND dt.work_date = c.date
 GROUP BY c.jobsite_id, c.date, js.name, js.jobcode;

-- The same metrics per jobsite, day and crew type.
CREATE VIEW jobsite_daily_crew_type_summary AS
WITH crew_trucking AS (
    SELECT tr.jobsite_id, tr.work_date, tr.crew_type, SUM(COALESCE(tr.hours, 0)) AS hours
      FROM fact_trucking tr
      JOIN dim_daily_report dr ON dr.id = tr.daily_report_id
     WHERE tr.archived_at IS NULL AND dr.approved AND NOT dr.archived
     GROUP BY tr.jobsite_id, tr.work_date, tr.crew_type
)
SELECT c.jobsite_id,
       c.date,
       c.crew_type,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'employee'), 0) AS employee_hours,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'employee'), 0) AS employee_cost,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'vehicle'), 0) AS vehicle_hours,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'vehicle'), 0) AS vehicle_cost,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'material'), 0) AS material_quantity,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'material'), 0) AS material_cost,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'non_costed_material'), 0)
           AS non_costed_material_quantity,
       COALESCE(SUM(c.quantity) FILTER (WHERE c.cost_type = 'trucking'), 0) AS trucking_quantity,
       COALESCE(MAX(ct.hours), 0) AS trucking_hours,
       COALESCE(SUM(c.total_cost) FILTER (WHERE c.cost_type = 'trucking'), 0) AS trucking_cost,
       SUM(c.total_cost) AS total_cost
  FROM jobsite_all_costs c
  LEFT JOIN crew_trucking ct
         ON ct.jobsite_id = c.jobsite_id AND ct.work_date = c.date AND ct.crew_type = c.crew_type
 GROUP BY c.jobsite_id, c.date, c.crew_type;

-- Data-quality findings, one row per jobsite, day, issue and entity.
CREATE VIEW jobsite_report_issues AS
SELECT ew.jobsite_id,
       ew.work_date                AS date,
       'EMPLOYEE_RATE_ZERO'::text  AS issue_type,
       ew.employee_id              AS entity_id,
       'dim_employee'::text        AS entity_table,
       NULL::varchar               AS entity_name,
       COUNT(*)                    AS occurrence_count
  FROM fact_employee_work ew
  JOIN dim_daily_report dr ON dr.id = ew.daily_report_id
 WHERE ew.hourly_rate = 0 AND ew.archived_at IS NULL AND dr.approved AND NOT dr.archived
 GROUP BY ew.jobsite_id, ew.work_date, ew.employee_id
UNION ALL
SELECT vw.jobsite_id, vw.work_date, 'VEHICLE_RATE_ZERO'::text, vw.vehicle_id,
       'dim_vehicle'::text, NULL::varchar, COUNT(*)
  FROM fact_vehicle_work vw
  JOIN dim_daily_report dr ON dr.id = vw.daily_report_id
 WHERE vw.hourly_rate = 0 AND vw.archived_at IS NULL AND dr.approved AND NOT dr.archived
 GROUP BY vw.jobsite_id, vw.work_date, vw.vehicle_id
UNION ALL
SELECT ms.jobsite_id, ms.work_date, 'MATERIAL_RATE_ZERO'::text, ms.jobsite_material_id,
       'dim_jobsite_material'::text, NULL::varchar, COUNT(*)
  FROM fact_material_shipment ms
  JOIN dim_daily_report dr ON dr.id = ms.daily_report_id
 WHERE ms.rate = 0 AND ms.archived_at IS NULL AND dr.approved AND NOT dr.archived
 GROUP BY ms.jobsite_id, ms.work_date, ms.jobsite_material_id
UNION ALL
SELECT ms.jobsite_id, ms.work_date, 'MATERIAL_ESTIMATED_RATE'::text, ms.jobsite_material_id,
       'dim_jobsite_material'::text, NULL::varchar, COUNT(*)
  FROM fact_material_shipment ms
  JOIN dim_daily_report dr ON dr.id = ms.daily_report_id
 WHERE ms.estimated AND ms.archived_at IS NULL AND dr.approved AND NOT dr.archived
 GROUP BY ms.jobsite_id, ms.work_date, ms.jobsite_material_id
UNION ALL
SELECT nc.jobsite_id, nc.work_date, 'NON_COSTED_MATERIALS'::text, NULL::uuid, NULL::text,
       (nc.material_name || ' (' || nc.supplier_name || ')')::varchar, COUNT(*)
  FROM fact_non_costed_material nc
  JOIN dim_daily_report dr ON dr.id = nc.daily_report_id
 WHERE nc.archived_at IS NULL AND dr.approved AND NOT dr.archived
 GROUP BY nc.jobsite_id, nc.work_date, nc.material_name, nc.supplier_name;

-- Per jobsite and day: distinct entities per rate issue, and non-costed shipment count.
CREATE VIEW jobsite_issues_summary AS
SELECT i.jobsite_id,
       i.date,
       COUNT(DISTINCT i.entity_id) FILTER (WHERE i.issue_type = 'EMPLOYEE_RATE_ZERO')
           AS employees_with_zero_rate,
       COUNT(DISTINCT i.entity_id) FILTER (WHERE i.issue_type = 'VEHICLE_RATE_ZERO')
           AS vehicles_with_zero_rate,
       COUNT(DISTINCT i.entity_id) FILTER (WHERE i.issue_type = 'MATERIAL_RATE_ZERO')
           AS materials_with_zero_rate,
       COUNT(DISTINCT i.entity_id) FILTER (WHERE i.issue_type = 'MATERIAL_ESTIMATED_RATE')
           AS materials_with_estimated_rate,
       COALESCE(SUM(i.occurrence_count) FILTER (WHERE i.issue_type = 'NON_COSTED_MATERIALS'), 0)
           AS non_costed_material_shipments
  FROM jobsite_report_issues i
 GROUP BY i.jobsite_id, i.date;

-- Costs, invoices and issues per jobsite and day. The cost summary drives it, so invoices on a
-- day without approved cost lines do not appear. Accruals are shown but not in net income.
CREATE VIEW jobsite_daily_financial_summary AS
WITH day_invoices AS (
    SELECT inv.jobsite_id,
           inv.invoice_date AS date,
           SUM(inv.amount) FILTER (WHERE inv.direction = 'revenue' AND inv.invoice_type = 'external')
               AS external_revenue,
           SUM(inv.amount) FILTER (WHERE inv.direction = 'revenue' AND inv.invoice_type = 'internal')
               AS internal_revenue,
           SUM(inv.amount) FILTER (WHERE inv.direction = 'revenue' AND inv.invoice_type = 'accrual')
               AS accrual_revenue,
           SUM(inv.amount) FILTER (WHERE inv.direction = 'expense' AND inv.invoice_type = 'external')
               AS external_expense,
           SUM(inv.amount) FILTER (WHERE inv.direction = 'expense' AND inv.invoice_type = 'internal')
               AS internal_expense,
           SUM(inv.amount) FILTER (WHERE inv.direction = 'expense' AND inv.invoice_type = 'accrual')
               AS accrual_expense
      FROM fact_invoice inv
     GROUP BY inv.jobsite_id, inv.invoice_date
)
SELECT s.jobsite_id,
       s.date,
       s.jobsite_name,
       s.jobcode,
       s.employee_hours,
       s.employee_cost,
       s.vehicle_hours,
       s.vehicle_cost,
       s.material_quantity,
       s.material_cost,
       s.non_costed_material_quantity,
       s.trucking_quantity,
       s.trucking_hours,
       s.trucking_cost,
       s.total_cost,
       COALESCE(di.external_revenue, 0) AS external_revenue,
       COALESCE(di.internal_revenue, 0) AS internal_revenue,
       COALESCE(di.accrual_revenue, 0) AS accrual_revenue,
       COALESCE(di.external_expense, 0) AS external_expense,
       COALESCE(di.internal_expense, 0) AS internal_expense,
       COALESCE(di.accrual_expense, 0) AS accrual_expense,
       (COALESCE(di.external_revenue, 0) + COALESCE(di.internal_revenue, 0))
         - (s.total_cost + COALESCE(di.external_expense, 0) + COALESCE(di.internal_expense, 0))
           AS net_income,
       s.has_estimated_costs,
       s.crew_types,
       COALESCE(iss.employees_with_zero_rate, 0) AS employees_with_zero_rate,
       COALESCE(iss.vehicles_with_zero_rate, 0) AS vehicles_with_zero_rate,
       COALESCE(iss.materials_with_zero_rate, 0) AS materials_with_zero_rate,
       COALESCE(iss.materials_with_estimated_rate, 0) AS materials_with_estimated_rate,
       COALESCE(iss.non_costed_material_shipments, 0) AS non_costed_material_shipments
  FROM jobsite_daily_summary s
  LEFT JOIN day_invoices di ON di.jobsite_id = s.jobsite_id AND di.date = s.date
  LEFT JOIN jobsite_issues_summary iss ON iss.jobsite_id = s.jobsite_id AND iss.date = s.date;

-- ---------------------------------------------------------------------------------------------
-- Report functions. Every column is qualified: the RETURNS TABLE names are plpgsql variables.
-- ---------------------------------------------------------------------------------------------

-- Every jobsite_daily_financial_summary metric of one jobsite summed over a date range.
CREATE FUNCTION jobsite_period_summary(p_jobsite_id uuid, p_start_date date, p_end_date date)
RETURNS TABLE (
    jobsite_id uuid, jobsite_name varchar, jobcode varchar, period_start date, period_end date,
    employee_hours numeric, employee_cost numeric, vehicle_hours numeric, vehicle_cost numeric,
    material_quantity numeric, material_cost numeric, non_costed_material_quantity numeric,
    trucking_quantity numeric, trucking_hours numeric, trucking_cost numeric,
    total_cost numeric, external_revenue numeric, internal_revenue numeric,
    accrual_revenue numeric, external_expense numeric, internal_expense numeric,
    accrual_expense numeric, net_income numeric, days_worked bigint, has_estimated_costs boolean
)
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN QUERY
    SELECT d.jobsite_id, d.jobsite_name, d.jobcode, p_start_date, p_end_date,
           SUM(d.employee_hours)::decimal(10, 2),
           SUM(d.employee_cost)::decimal(12, 2),
           SUM(d.vehicle_hours)::decimal(10, 2),
           SUM(d.vehicle_cost)::decimal(12, 2),
           SUM(d.material_quantity)::decimal(12, 3),
           SUM(d.material_cost)::decimal(12, 2),
           SUM(d.non_costed_material_quantity)::decimal(12, 3),
           SUM(d.trucking_quantity)::decimal(12, 3),
           SUM(d.trucking_hours)::decimal(10, 2),
           SUM(d.trucking_cost)::decimal(12, 2),
           SUM(d.total_cost)::decimal(12, 2),
           SUM(d.external_revenue)::decimal(12, 2),
           SUM(d.internal_revenue)::decimal(12, 2),
           SUM(d.accrual_revenue)::decimal(12, 2),
           SUM(d.external_expense)::decimal(12, 2),
           SUM(d.internal_expense)::decimal(12, 2),
           SUM(d.accrual_expense)::decimal(12, 2),
           SUM(d.net_income)::decimal(12, 2),
           COUNT(DISTINCT d.date),
           BOOL_OR(d.has_estimated_costs)
      FROM jobsite_daily_financial_summary d
     WHERE d.jobsite_id = p_jobsite_id
       AND d.date BETWEEN p_start_date AND p_end_date
     GROUP BY d.jobsite_id, d.jobsite_name, d.jobcode;
END;
$fn$;

-- Several jobsites side by side over a date range, best net income first.
CREATE FUNCTION jobsite_comparison(p_jobsite_ids uuid[], p_start_date date, p_end_date date)
RETURNS TABLE (
    jobsite_id uuid, jobsite_name varchar, jobcode varchar, total_cost numeric,
    total_revenue numeric, net_income numeric, employee_hours numeric, days_worked bigint,
    cost_per_day numeric, revenue_per_day numeric
)
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN QUERY
    SELECT d.jobsite_id, d.jobsite_name, d.jobcode,
           SUM(d.total_cost)::decimal(12, 2),
           SUM(d.external_revenue + d.internal_revenue)::decimal(12, 2),
           SUM(d.net_income)::decimal(12, 2),
           SUM(d.employee_hours)::decimal(10, 2),
           COUNT(DISTINCT d.date),
           (SUM(d.total_cost) / NULLIF(COUNT(DISTINCT d.date), 0))::decimal(12, 2),
           (SUM(d.external_revenue + d.internal_revenue)
               / NULLIF(COUNT(DISTINCT d.date), 0))::decimal(12, 2)
      FROM jobsite_daily_financial_summary d
     WHERE d.jobsite_id = ANY (p_jobsite_ids)
       AND d.date BETWEEN p_start_date AND p_end_date
     GROUP BY d.jobsite_id, d.jobsite_name, d.jobcode
     ORDER BY SUM(d.net_income) DESC;
END;
$fn$;

-- One employee's hours and cost per jobsite. Only archived facts are left out: no daily-report
-- approval filter here.
CREATE FUNCTION employee_productivity(p_employee_id uuid, p_start_date date, p_end_date date)
RETURNS TABLE (
    employee_id uuid, employee_name varchar, jobsite_id uuid, jobsite_name varchar,
    total_hours numeric, total_cost numeric, days_worked bigint, avg_hours_per_day numeric
)
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN QUERY
    SELECT ew.employee_id, e.name, ew.jobsite_id, js.name,
           SUM(ew.hours)::decimal(10, 2),
           SUM(ew.total_cost)::decimal(12, 2),
           COUNT(DISTINCT ew.work_date),
           (SUM(ew.hours) / NULLIF(COUNT(DISTINCT ew.work_date), 0))::decimal(6, 2)
      FROM fact_employee_work ew
      LEFT JOIN dim_employee e ON e.id = ew.employee_id
      LEFT JOIN dim_jobsite js ON js.id = ew.jobsite_id
     WHERE ew.employee_id = p_employee_id
       AND ew.work_date BETWEEN p_start_date AND p_end_date
       AND ew.archived_at IS NULL
     GROUP BY ew.employee_id, e.name, ew.jobsite_id, js.name
     ORDER BY SUM(ew.hours) DESC;
END;
$fn$;

-- One vehicle's hours and cost per jobsite; like employee_productivity, no approval filter.
CREATE FUNCTION vehicle_utilization(p_vehicle_id uuid, p_start_date date, p_end_date date)
RETURNS TABLE (
    vehicle_id uuid, vehicle_name varchar, vehicle_code varchar, jobsite_id uuid,
    jobsite_name varchar, total_hours numeric, total_cost numeric, days_used bigint,
    avg_hours_per_day numeric
)
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN QUERY
    SELECT vw.vehicle_id, v.name, v.vehicle_code, vw.jobsite_id, js.name,
           SUM(vw.hours)::decimal(10, 2),
           SUM(vw.total_cost)::decimal(12, 2),
           COUNT(DISTINCT vw.work_date),
           (SUM(vw.hours) / NULLIF(COUNT(DISTINCT vw.work_date), 0))::decimal(6, 2)
      FROM fact_vehicle_work vw
      LEFT JOIN dim_vehicle v ON v.id = vw.vehicle_id
      LEFT JOIN dim_jobsite js ON js.id = vw.jobsite_id
     WHERE vw.vehicle_id = p_vehicle_id
       AND vw.work_date BETWEEN p_start_date AND p_end_date
       AND vw.archived_at IS NULL
     GROUP BY vw.vehicle_id, v.name, v.vehicle_code, vw.jobsite_id, js.name
     ORDER BY SUM(vw.hours) DESC;
END;
$fn$;
