//! The catalog a migrated database must have, written out from the legacy schema (and
//! the `cdc` contract of the brief), never read back from the migrations.

/// `fact_employee_work.hours` and `fact_production.hours`, as `pg_get_expr` prints them.
pub const HOURS_EXPR: &str = "
CASE
    WHEN (EXTRACT(epoch FROM (end_time AT TIME ZONE 'UTC'::text)) < EXTRACT(epoch FROM (start_time AT TIME ZONE 'UTC'::text))) THEN (((EXTRACT(epoch FROM (end_time AT TIME ZONE 'UTC'::text)) + (86400)::numeric) - EXTRACT(epoch FROM (start_time AT TIME ZONE 'UTC'::text))) / (3600)::numeric)
    ELSE ((EXTRACT(epoch FROM (end_time AT TIME ZONE 'UTC'::text)) - EXTRACT(epoch FROM (start_time AT TIME ZONE 'UTC'::text))) / (3600)::numeric)
END";

/// `fact_employee_work.total_cost`.
pub const EMPLOYEE_COST_EXPR: &str = "
CASE
    WHEN (EXTRACT(epoch FROM (end_time AT TIME ZONE 'UTC'::text)) < EXTRACT(epoch FROM (start_time AT TIME ZONE 'UTC'::text))) THEN ((((EXTRACT(epoch FROM (end_time AT TIME ZONE 'UTC'::text)) + (86400)::numeric) - EXTRACT(epoch FROM (start_time AT TIME ZONE 'UTC'::text))) / (3600)::numeric) * hourly_rate)
    ELSE (((EXTRACT(epoch FROM (end_time AT TIME ZONE 'UTC'::text)) - EXTRACT(epoch FROM (start_time AT TIME ZONE 'UTC'::text))) / (3600)::numeric) * hourly_rate)
END";

/// Tables and views with their columns in order: `name type [not null] [default …]`;
/// generated columns read `generated <NAME>` and are checked separately against the constants
/// above. Tables first (schema, name), then views.
pub const RELATIONS: &str = r#"
table cdc.checkpoint
  pipeline text not null
  resume_token jsonb not null
  cluster_time_t bigint
  cluster_time_i bigint
  event_id text
  updated_at timestamp with time zone not null default now()
table public.dim_company
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  name character varying(255) not null
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.dim_crew
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  name character varying(255) not null
  type character varying(100) not null
  synced_at timestamp with time zone not null default now()
table public.dim_daily_report
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  jobsite_id uuid not null
  crew_id uuid not null
  report_date date not null
  approved boolean not null default false
  payroll_complete boolean not null default false
  archived boolean not null default false
  synced_at timestamp with time zone not null default now()
table public.dim_employee
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  name character varying(255) not null
  job_title character varying(255)
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.dim_employee_rate
  id uuid not null default gen_random_uuid()
  employee_id uuid not null
  mongo_id character varying(24)
  rate numeric(10,2) not null
  effective_date date not null
  synced_at timestamp with time zone not null default now()
table public.dim_jobsite
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  name character varying(255) not null
  jobcode character varying(100)
  active boolean not null default true
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.dim_jobsite_material
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  jobsite_id uuid not null
  material_id uuid not null
  supplier_id uuid not null
  quantity numeric(12,3) not null
  unit character varying(50) not null
  cost_type character varying(50) not null
  delivered boolean not null default false
  synced_at timestamp with time zone not null default now()
table public.dim_jobsite_material_rate
  id uuid not null default gen_random_uuid()
  jobsite_material_id uuid not null
  mongo_id character varying(24)
  rate numeric(10,2) not null
  effective_date date not null
  estimated boolean not null default false
  synced_at timestamp with time zone not null default now()
table public.dim_material
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  name character varying(255) not null
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.dim_vehicle
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  name character varying(255) not null
  vehicle_code character varying(50) not null
  vehicle_type character varying(100) not null default 'General'::character varying
  is_rental boolean not null default false
  source_company character varying(255) not null default 'Bow Mark'::character varying
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.dim_vehicle_rate
  id uuid not null default gen_random_uuid()
  vehicle_id uuid not null
  mongo_id character varying(24)
  rate numeric(10,2) not null
  effective_date date not null
  synced_at timestamp with time zone not null default now()
table public.fact_employee_work
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  daily_report_id uuid not null
  jobsite_id uuid not null
  employee_id uuid not null
  crew_id uuid not null
  crew_type character varying(100) not null
  work_date date not null
  start_time timestamp with time zone not null
  end_time timestamp with time zone not null
  job_title character varying(255) not null
  hours numeric(10,2) generated HOURS
  hourly_rate numeric(10,2) not null
  total_cost numeric(12,2) generated EMPLOYEE_COST
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.fact_invoice
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  jobsite_id uuid not null
  company_id uuid not null
  invoice_date date not null
  direction character varying(10) not null
  invoice_type character varying(20) not null
  invoice_number character varying(100) not null
  amount numeric(12,2) not null
  description text
  synced_at timestamp with time zone not null default now()
table public.fact_material_shipment
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  daily_report_id uuid not null
  jobsite_id uuid not null
  jobsite_material_id uuid not null
  crew_id uuid not null
  crew_type character varying(100) not null
  work_date date not null
  quantity numeric(12,3) not null
  unit character varying(50) not null
  rate numeric(10,2) not null
  total_cost numeric(12,2) generated (quantity * rate)
  estimated boolean not null default false
  delivered_rate_id character varying(24)
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
  vehicle_type character varying(100)
  rate_scenario_id character varying(24)
table public.fact_non_costed_material
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  daily_report_id uuid not null
  jobsite_id uuid not null
  crew_id uuid not null
  crew_type character varying(100) not null
  work_date date not null
  material_name character varying(255) not null
  supplier_name character varying(255) not null
  shipment_type character varying(255)
  quantity numeric(12,3) not null
  unit character varying(50)
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.fact_production
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  daily_report_id uuid not null
  jobsite_id uuid not null
  crew_id uuid not null
  crew_type character varying(100) not null
  work_date date not null
  job_title text not null
  quantity numeric(12,3) not null
  unit character varying(50) not null
  start_time timestamp with time zone not null
  end_time timestamp with time zone not null
  description text
  hours numeric(10,2) generated HOURS
  synced_at timestamp with time zone not null default now()
table public.fact_trucking
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  daily_report_id uuid not null
  jobsite_id uuid not null
  crew_id uuid not null
  vehicle_id uuid
  crew_type character varying(100) not null
  work_date date not null
  trucking_type character varying(255) not null
  quantity numeric(12,3) not null
  hours numeric(6,2)
  rate numeric(10,2) not null
  rate_type character varying(20) not null
  total_cost numeric(12,2) not null
  vehicle_source character varying(255)
  vehicle_type character varying(100)
  vehicle_code character varying(50)
  trucking_rate_id character varying(24)
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.fact_vehicle_work
  id uuid not null default gen_random_uuid()
  mongo_id character varying(24) not null
  daily_report_id uuid not null
  jobsite_id uuid not null
  vehicle_id uuid not null
  crew_id uuid not null
  crew_type character varying(100) not null
  work_date date not null
  job_title character varying(255)
  hours numeric(10,2) not null
  hourly_rate numeric(10,2) not null
  total_cost numeric(12,2) generated (hours * hourly_rate)
  archived_at timestamp with time zone
  synced_at timestamp with time zone not null default now()
table public.refinery_schema_history
  version bigint not null
  name character varying(255)
  applied_on character varying(255)
  checksum character varying(255)
view public.crew_hours_by_day
  jobsite_id uuid
  work_date date
  crew_type character varying(100)
  avg_crew_hours numeric
  total_man_hours numeric
  total_employees numeric
  crew_count bigint
view public.crew_max_hours
  jobsite_id uuid
  work_date date
  daily_report_id uuid
  crew_type character varying(100)
  crew_hours numeric
  total_man_hours numeric
  employee_count bigint
view public.jobsite_all_costs
  jobsite_id uuid
  date date
  crew_type character varying(100)
  cost_type text
  entity_id uuid
  entity_name character varying
  quantity numeric
  quantity_unit text
  rate numeric
  total_cost numeric
  estimated boolean
  daily_report_id uuid
view public.jobsite_daily_crew_type_summary
  jobsite_id uuid
  date date
  crew_type character varying(100)
  employee_hours numeric
  employee_cost numeric
  vehicle_hours numeric
  vehicle_cost numeric
  material_quantity numeric
  material_cost numeric
  non_costed_material_quantity numeric
  trucking_quantity numeric
  trucking_hours numeric
  trucking_cost numeric
  total_cost numeric
view public.jobsite_daily_financial_summary
  jobsite_id uuid
  date date
  jobsite_name character varying(255)
  jobcode character varying(100)
  employee_hours numeric
  employee_cost numeric
  vehicle_hours numeric
  vehicle_cost numeric
  material_quantity numeric
  material_cost numeric
  non_costed_material_quantity numeric
  trucking_quantity numeric
  trucking_hours numeric
  trucking_cost numeric
  total_cost numeric
  external_revenue numeric
  internal_revenue numeric
  accrual_revenue numeric
  external_expense numeric
  internal_expense numeric
  accrual_expense numeric
  net_income numeric
  has_estimated_costs boolean
  crew_types character varying[]
  employees_with_zero_rate bigint
  vehicles_with_zero_rate bigint
  materials_with_zero_rate bigint
  materials_with_estimated_rate bigint
  non_costed_material_shipments numeric
view public.jobsite_daily_summary
  jobsite_id uuid
  date date
  jobsite_name character varying(255)
  jobcode character varying(100)
  employee_hours numeric
  employee_cost numeric
  vehicle_hours numeric
  vehicle_cost numeric
  material_quantity numeric
  material_cost numeric
  non_costed_material_quantity numeric
  trucking_quantity numeric
  trucking_hours numeric
  trucking_cost numeric
  total_cost numeric
  has_estimated_costs boolean
  crew_types character varying[]
view public.jobsite_issues_summary
  jobsite_id uuid
  date date
  employees_with_zero_rate bigint
  vehicles_with_zero_rate bigint
  materials_with_zero_rate bigint
  materials_with_estimated_rate bigint
  non_costed_material_shipments numeric
view public.jobsite_report_issues
  jobsite_id uuid
  date date
  issue_type text
  entity_id uuid
  entity_table text
  entity_name character varying
  occurrence_count bigint
"#;

/// Constraints (primary keys, unique keys, foreign keys with their ON DELETE rule), by table
/// then name.
pub const CONSTRAINTS: &str = r#"
cdc.checkpoint checkpoint_pkey PRIMARY KEY (pipeline)
public.dim_company dim_company_mongo_id_key UNIQUE (mongo_id)
public.dim_company dim_company_pkey PRIMARY KEY (id)
public.dim_crew dim_crew_mongo_id_key UNIQUE (mongo_id)
public.dim_crew dim_crew_pkey PRIMARY KEY (id)
public.dim_daily_report dim_daily_report_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.dim_daily_report dim_daily_report_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.dim_daily_report dim_daily_report_mongo_id_key UNIQUE (mongo_id)
public.dim_daily_report dim_daily_report_pkey PRIMARY KEY (id)
public.dim_employee dim_employee_mongo_id_key UNIQUE (mongo_id)
public.dim_employee dim_employee_pkey PRIMARY KEY (id)
public.dim_employee_rate dim_employee_rate_employee_id_fkey FOREIGN KEY (employee_id) REFERENCES dim_employee(id) ON DELETE CASCADE
public.dim_employee_rate dim_employee_rate_pkey PRIMARY KEY (id)
public.dim_jobsite dim_jobsite_mongo_id_key UNIQUE (mongo_id)
public.dim_jobsite dim_jobsite_pkey PRIMARY KEY (id)
public.dim_jobsite_material dim_jobsite_material_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.dim_jobsite_material dim_jobsite_material_material_id_fkey FOREIGN KEY (material_id) REFERENCES dim_material(id) ON DELETE CASCADE
public.dim_jobsite_material dim_jobsite_material_mongo_id_key UNIQUE (mongo_id)
public.dim_jobsite_material dim_jobsite_material_pkey PRIMARY KEY (id)
public.dim_jobsite_material dim_jobsite_material_supplier_id_fkey FOREIGN KEY (supplier_id) REFERENCES dim_company(id) ON DELETE CASCADE
public.dim_jobsite_material_rate dim_jobsite_material_rate_jobsite_material_id_fkey FOREIGN KEY (jobsite_material_id) REFERENCES dim_jobsite_material(id) ON DELETE CASCADE
public.dim_jobsite_material_rate dim_jobsite_material_rate_pkey PRIMARY KEY (id)
public.dim_material dim_material_mongo_id_key UNIQUE (mongo_id)
public.dim_material dim_material_pkey PRIMARY KEY (id)
public.dim_vehicle dim_vehicle_mongo_id_key UNIQUE (mongo_id)
public.dim_vehicle dim_vehicle_pkey PRIMARY KEY (id)
public.dim_vehicle_rate dim_vehicle_rate_pkey PRIMARY KEY (id)
public.dim_vehicle_rate dim_vehicle_rate_vehicle_id_fkey FOREIGN KEY (vehicle_id) REFERENCES dim_vehicle(id) ON DELETE CASCADE
public.fact_employee_work fact_employee_work_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.fact_employee_work fact_employee_work_daily_report_id_fkey FOREIGN KEY (daily_report_id) REFERENCES dim_daily_report(id) ON DELETE CASCADE
public.fact_employee_work fact_employee_work_employee_id_fkey FOREIGN KEY (employee_id) REFERENCES dim_employee(id) ON DELETE CASCADE
public.fact_employee_work fact_employee_work_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_employee_work fact_employee_work_mongo_id_key UNIQUE (mongo_id)
public.fact_employee_work fact_employee_work_pkey PRIMARY KEY (id)
public.fact_invoice fact_invoice_company_id_fkey FOREIGN KEY (company_id) REFERENCES dim_company(id) ON DELETE CASCADE
public.fact_invoice fact_invoice_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_invoice fact_invoice_mongo_id_key UNIQUE (mongo_id)
public.fact_invoice fact_invoice_pkey PRIMARY KEY (id)
public.fact_material_shipment fact_material_shipment_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.fact_material_shipment fact_material_shipment_daily_report_id_fkey FOREIGN KEY (daily_report_id) REFERENCES dim_daily_report(id) ON DELETE CASCADE
public.fact_material_shipment fact_material_shipment_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_material_shipment fact_material_shipment_jobsite_material_id_fkey FOREIGN KEY (jobsite_material_id) REFERENCES dim_jobsite_material(id) ON DELETE CASCADE
public.fact_material_shipment fact_material_shipment_mongo_id_key UNIQUE (mongo_id)
public.fact_material_shipment fact_material_shipment_pkey PRIMARY KEY (id)
public.fact_non_costed_material fact_non_costed_material_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.fact_non_costed_material fact_non_costed_material_daily_report_id_fkey FOREIGN KEY (daily_report_id) REFERENCES dim_daily_report(id) ON DELETE CASCADE
public.fact_non_costed_material fact_non_costed_material_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_non_costed_material fact_non_costed_material_mongo_id_key UNIQUE (mongo_id)
public.fact_non_costed_material fact_non_costed_material_pkey PRIMARY KEY (id)
public.fact_production fact_production_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.fact_production fact_production_daily_report_id_fkey FOREIGN KEY (daily_report_id) REFERENCES dim_daily_report(id) ON DELETE CASCADE
public.fact_production fact_production_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_production fact_production_mongo_id_key UNIQUE (mongo_id)
public.fact_production fact_production_pkey PRIMARY KEY (id)
public.fact_trucking fact_trucking_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.fact_trucking fact_trucking_daily_report_id_fkey FOREIGN KEY (daily_report_id) REFERENCES dim_daily_report(id) ON DELETE CASCADE
public.fact_trucking fact_trucking_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_trucking fact_trucking_mongo_id_key UNIQUE (mongo_id)
public.fact_trucking fact_trucking_pkey PRIMARY KEY (id)
public.fact_trucking fact_trucking_vehicle_id_fkey FOREIGN KEY (vehicle_id) REFERENCES dim_vehicle(id) ON DELETE SET NULL
public.fact_vehicle_work fact_vehicle_work_crew_id_fkey FOREIGN KEY (crew_id) REFERENCES dim_crew(id) ON DELETE CASCADE
public.fact_vehicle_work fact_vehicle_work_daily_report_id_fkey FOREIGN KEY (daily_report_id) REFERENCES dim_daily_report(id) ON DELETE CASCADE
public.fact_vehicle_work fact_vehicle_work_jobsite_id_fkey FOREIGN KEY (jobsite_id) REFERENCES dim_jobsite(id) ON DELETE CASCADE
public.fact_vehicle_work fact_vehicle_work_mongo_id_key UNIQUE (mongo_id)
public.fact_vehicle_work fact_vehicle_work_pkey PRIMARY KEY (id)
public.fact_vehicle_work fact_vehicle_work_vehicle_id_fkey FOREIGN KEY (vehicle_id) REFERENCES dim_vehicle(id) ON DELETE CASCADE
public.refinery_schema_history refinery_schema_history_pkey PRIMARY KEY (version)
"#;

/// Indexes that back no constraint, by name.
pub const INDEXES: &str = r#"
CREATE INDEX idx_dim_company_mongo_id ON public.dim_company USING btree (mongo_id)
CREATE INDEX idx_dim_crew_mongo_id ON public.dim_crew USING btree (mongo_id)
CREATE INDEX idx_dim_daily_report_date ON public.dim_daily_report USING btree (report_date)
CREATE INDEX idx_dim_daily_report_jobsite_date ON public.dim_daily_report USING btree (jobsite_id, report_date)
CREATE INDEX idx_dim_daily_report_mongo_id ON public.dim_daily_report USING btree (mongo_id)
CREATE INDEX idx_dim_employee_mongo_id ON public.dim_employee USING btree (mongo_id)
CREATE INDEX idx_dim_employee_name ON public.dim_employee USING btree (name)
CREATE INDEX idx_dim_employee_rate_lookup ON public.dim_employee_rate USING btree (employee_id, effective_date)
CREATE INDEX idx_dim_jobsite_active ON public.dim_jobsite USING btree (active)
CREATE INDEX idx_dim_jobsite_jobcode ON public.dim_jobsite USING btree (jobcode)
CREATE INDEX idx_dim_jobsite_material_jobsite ON public.dim_jobsite_material USING btree (jobsite_id)
CREATE INDEX idx_dim_jobsite_material_mongo_id ON public.dim_jobsite_material USING btree (mongo_id)
CREATE INDEX idx_dim_jobsite_material_rate_lookup ON public.dim_jobsite_material_rate USING btree (jobsite_material_id, effective_date)
CREATE INDEX idx_dim_jobsite_mongo_id ON public.dim_jobsite USING btree (mongo_id)
CREATE INDEX idx_dim_material_mongo_id ON public.dim_material USING btree (mongo_id)
CREATE INDEX idx_dim_vehicle_code ON public.dim_vehicle USING btree (vehicle_code)
CREATE INDEX idx_dim_vehicle_mongo_id ON public.dim_vehicle USING btree (mongo_id)
CREATE INDEX idx_dim_vehicle_rate_lookup ON public.dim_vehicle_rate USING btree (vehicle_id, effective_date)
CREATE INDEX idx_fact_employee_work_daily_report ON public.fact_employee_work USING btree (daily_report_id)
CREATE INDEX idx_fact_employee_work_date ON public.fact_employee_work USING btree (work_date)
CREATE INDEX idx_fact_employee_work_employee_date ON public.fact_employee_work USING btree (employee_id, work_date)
CREATE INDEX idx_fact_employee_work_jobsite_date ON public.fact_employee_work USING btree (jobsite_id, work_date)
CREATE INDEX idx_fact_employee_work_mongo_id ON public.fact_employee_work USING btree (mongo_id)
CREATE INDEX idx_fact_invoice_date ON public.fact_invoice USING btree (invoice_date)
CREATE INDEX idx_fact_invoice_direction ON public.fact_invoice USING btree (direction)
CREATE INDEX idx_fact_invoice_jobsite_date ON public.fact_invoice USING btree (jobsite_id, invoice_date)
CREATE INDEX idx_fact_invoice_mongo_id ON public.fact_invoice USING btree (mongo_id)
CREATE INDEX idx_fact_material_shipment_daily_report ON public.fact_material_shipment USING btree (daily_report_id)
CREATE INDEX idx_fact_material_shipment_date ON public.fact_material_shipment USING btree (work_date)
CREATE INDEX idx_fact_material_shipment_jobsite_date ON public.fact_material_shipment USING btree (jobsite_id, work_date)
CREATE INDEX idx_fact_material_shipment_material ON public.fact_material_shipment USING btree (jobsite_material_id)
CREATE INDEX idx_fact_material_shipment_mongo_id ON public.fact_material_shipment USING btree (mongo_id)
CREATE INDEX idx_fact_material_shipment_vehicle_type ON public.fact_material_shipment USING btree (vehicle_type) WHERE (vehicle_type IS NOT NULL)
CREATE INDEX idx_fact_non_costed_material_daily_report ON public.fact_non_costed_material USING btree (daily_report_id)
CREATE INDEX idx_fact_non_costed_material_date ON public.fact_non_costed_material USING btree (work_date)
CREATE INDEX idx_fact_non_costed_material_jobsite_date ON public.fact_non_costed_material USING btree (jobsite_id, work_date)
CREATE INDEX idx_fact_non_costed_material_mongo_id ON public.fact_non_costed_material USING btree (mongo_id)
CREATE INDEX idx_fact_production_daily_report ON public.fact_production USING btree (daily_report_id)
CREATE INDEX idx_fact_production_date ON public.fact_production USING btree (work_date)
CREATE INDEX idx_fact_production_jobsite_date ON public.fact_production USING btree (jobsite_id, work_date)
CREATE INDEX idx_fact_production_mongo_id ON public.fact_production USING btree (mongo_id)
CREATE INDEX idx_fact_trucking_daily_report ON public.fact_trucking USING btree (daily_report_id)
CREATE INDEX idx_fact_trucking_date ON public.fact_trucking USING btree (work_date)
CREATE INDEX idx_fact_trucking_jobsite_date ON public.fact_trucking USING btree (jobsite_id, work_date)
CREATE INDEX idx_fact_trucking_mongo_id ON public.fact_trucking USING btree (mongo_id)
CREATE INDEX idx_fact_vehicle_work_daily_report ON public.fact_vehicle_work USING btree (daily_report_id)
CREATE INDEX idx_fact_vehicle_work_date ON public.fact_vehicle_work USING btree (work_date)
CREATE INDEX idx_fact_vehicle_work_jobsite_date ON public.fact_vehicle_work USING btree (jobsite_id, work_date)
CREATE INDEX idx_fact_vehicle_work_mongo_id ON public.fact_vehicle_work USING btree (mongo_id)
CREATE INDEX idx_fact_vehicle_work_vehicle_date ON public.fact_vehicle_work USING btree (vehicle_id, work_date)
"#;

/// Functions with their signatures and language, by name.
pub const FUNCTIONS: &str = r#"
public.employee_productivity(p_employee_id uuid, p_start_date date, p_end_date date) RETURNS TABLE(employee_id uuid, employee_name character varying, jobsite_id uuid, jobsite_name character varying, total_hours numeric, total_cost numeric, days_worked bigint, avg_hours_per_day numeric) LANGUAGE plpgsql
public.jobsite_comparison(p_jobsite_ids uuid[], p_start_date date, p_end_date date) RETURNS TABLE(jobsite_id uuid, jobsite_name character varying, jobcode character varying, total_cost numeric, total_revenue numeric, net_income numeric, employee_hours numeric, days_worked bigint, cost_per_day numeric, revenue_per_day numeric) LANGUAGE plpgsql
public.jobsite_period_summary(p_jobsite_id uuid, p_start_date date, p_end_date date) RETURNS TABLE(jobsite_id uuid, jobsite_name character varying, jobcode character varying, period_start date, period_end date, employee_hours numeric, employee_cost numeric, vehicle_hours numeric, vehicle_cost numeric, material_quantity numeric, material_cost numeric, non_costed_material_quantity numeric, trucking_quantity numeric, trucking_hours numeric, trucking_cost numeric, total_cost numeric, external_revenue numeric, internal_revenue numeric, accrual_revenue numeric, external_expense numeric, internal_expense numeric, accrual_expense numeric, net_income numeric, days_worked bigint, has_estimated_costs boolean) LANGUAGE plpgsql
public.vehicle_utilization(p_vehicle_id uuid, p_start_date date, p_end_date date) RETURNS TABLE(vehicle_id uuid, vehicle_name character varying, vehicle_code character varying, jobsite_id uuid, jobsite_name character varying, total_hours numeric, total_cost numeric, days_used bigint, avg_hours_per_day numeric) LANGUAGE plpgsql
"#;

/// Every comment on a table or column, by object.
pub const COMMENTS: &str = r#"
public.fact_material_shipment.rate_scenario_id: Scenario _id (24-char hex) from JobsiteMaterial.scenarios when the shipment is costed via the rate-model scenario system. NULL for legacy cost types.
public.fact_material_shipment.vehicle_type: Vehicle type from vehicleObject (e.g., "Tandem", "Tri-axle"). Used for load-to-tonne conversions.
"#;

/// Lines of one of the lists above.
pub fn lines(list: &str) -> Vec<String> {
    list.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}
