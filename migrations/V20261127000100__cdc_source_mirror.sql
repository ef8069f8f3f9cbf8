-- The projector's source mirror (DESIGN §5): the latest state of every source document, per
-- entity and _id, with its version. The star schema is derived from this table alone.
-- The schema `cdc` itself comes from V20261127000001.

CREATE TABLE cdc.source_doc (
    entity      text        NOT NULL,          -- singular snake_case entity (event.rs)
    key         text        NOT NULL,          -- hex _id
    ct_t        bigint      NOT NULL,          -- version = (ct_t, ct_i, ordinal), compared as a row
    ct_i        bigint      NOT NULL,
    ordinal     bigint      NOT NULL,
    wall_time   timestamptz NOT NULL,          -- wall time of the event that wrote this version
    doc         jsonb       NULL,              -- relaxed extended JSON; NULL once deleted
    deleted     boolean     NOT NULL DEFAULT false,
    deleted_at  timestamptz NULL,              -- wall time of the deleting event
    PRIMARY KEY (entity, key)
);

COMMENT ON TABLE cdc.source_doc IS
    'Latest source document per (entity, _id) with its change-stream version; tombstone on delete.';

-- Helpers reading relaxed extended JSON ------------------------------------------------------

-- ObjectId: {"$oid": "..."} (or a bare string) -> hex text.
CREATE FUNCTION cdc.oid(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
        WHEN 'object' THEN j ->> '$oid'
        WHEN 'string' THEN j #>> '{}'
    END
$$;

-- Date: {"$date": "ISO"} | {"$date": {"$numberLong": "ms"}} | {"$date": ms} | "ISO" -> timestamptz.
CREATE FUNCTION cdc.ts(j jsonb) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN j IS NULL OR jsonb_typeof(j) = 'null' THEN NULL
        WHEN jsonb_typeof(j) = 'string' THEN (j #>> '{}')::timestamptz
        WHEN jsonb_typeof(j) <> 'object' OR NOT (j ? '$date') THEN NULL
        WHEN jsonb_typeof(j -> '$date') = 'string' THEN (j ->> '$date')::timestamptz
        WHEN jsonb_typeof(j -> '$date') = 'number' THEN to_timestamp((j ->> '$date')::numeric / 1000)
        WHEN jsonb_typeof(j -> '$date') = 'object' THEN
            to_timestamp((j -> '$date' ->> '$numberLong')::numeric / 1000)
    END
$$;

-- Number: JSON number | {"$numberDecimal"|"$numberLong"|"$numberInt"|"$numberDouble": "..."} | "..."
CREATE FUNCTION cdc.num(j jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
        WHEN 'number' THEN (j #>> '{}')::numeric
        WHEN 'string' THEN (j #>> '{}')::numeric
        WHEN 'object' THEN COALESCE(j ->> '$numberDecimal', j ->> '$numberLong',
                                    j ->> '$numberInt', j ->> '$numberDouble')::numeric
    END
$$;

-- Boolean: only JSON true is true (missing / null count as false, as in the legacy sync).
CREATE FUNCTION cdc.bool(j jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(j = 'true'::jsonb, false)
$$;

-- The calendar date of an instant in the pipeline's report time zone (DESIGN §7.1).
CREATE FUNCTION cdc.day(t timestamptz, tz text) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (t AT TIME ZONE tz)::date
$$;

-- A JSON array (or an empty one for anything else): safe input for jsonb_array_elements.
CREATE FUNCTION cdc.arr(j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(j) = 'array' THEN j ELSE '[]'::jsonb END
$$;

-- The array holding one ObjectId, the probe for `@>` lookups in the child arrays.
CREATE FUNCTION cdc.oid_probe(key text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_array(jsonb_build_object('$oid', key))
$$;

-- When a daily-report child stopped being derivable, the wall time of the event that caused
-- it: the child's own delete; else the event of its last report that deleted the report or
-- dropped the child from its array; else the later of the two documents' last events.
CREATE FUNCTION cdc.detach_time(p_entity text, p_key text, p_field text, p_report text)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN c.deleted OR r.key IS NULL THEN c.wall_time
        WHEN r.deleted OR NOT (cdc.arr(r.doc -> p_field) @> cdc.oid_probe(p_key)) THEN r.wall_time
        ELSE greatest(c.wall_time, r.wall_time)
    END
    FROM cdc.source_doc c
    LEFT JOIN cdc.source_doc r ON r.entity = 'daily_report' AND r.key = p_report
    WHERE c.entity = p_entity AND c.key = p_key
$$;

-- Parent and reference lookups ---------------------------------------------------------------

-- A child -> its daily report(s), through the report's arrays.
CREATE INDEX source_doc_report_employee_work ON cdc.source_doc
    USING gin ((doc -> 'employeeWork') jsonb_path_ops) WHERE entity = 'daily_report';
CREATE INDEX source_doc_report_vehicle_work ON cdc.source_doc
    USING gin ((doc -> 'vehicleWork') jsonb_path_ops) WHERE entity = 'daily_report';
CREATE INDEX source_doc_report_material_shipment ON cdc.source_doc
    USING gin ((doc -> 'materialShipment') jsonb_path_ops) WHERE entity = 'daily_report';
CREATE INDEX source_doc_report_production ON cdc.source_doc
    USING gin ((doc -> 'production') jsonb_path_ops) WHERE entity = 'daily_report';

-- A jobsite material or invoice -> the jobsite (or jobsite material) listing it.
CREATE INDEX source_doc_jobsite_materials ON cdc.source_doc
    USING gin ((doc -> 'materials') jsonb_path_ops) WHERE entity = 'jobsite';
CREATE INDEX source_doc_jobsite_revenue_invoices ON cdc.source_doc
    USING gin ((doc -> 'revenueInvoices') jsonb_path_ops) WHERE entity = 'jobsite';
CREATE INDEX source_doc_jobsite_expense_invoices ON cdc.source_doc
    USING gin ((doc -> 'expenseInvoices') jsonb_path_ops) WHERE entity = 'jobsite';
CREATE INDEX source_doc_jobsite_material_invoices ON cdc.source_doc
    USING gin ((doc -> 'invoices') jsonb_path_ops) WHERE entity = 'jobsite_material';

-- The daily reports of a month (invoice-month rates).
CREATE INDEX source_doc_report_date ON cdc.source_doc (cdc.ts(doc -> 'date'))
    WHERE entity = 'daily_report';

-- A dimension -> the documents referencing it.
CREATE INDEX source_doc_report_jobsite ON cdc.source_doc (cdc.oid(doc -> 'jobsite'))
    WHERE entity = 'daily_report';
CREATE INDEX source_doc_report_crew ON cdc.source_doc (cdc.oid(doc -> 'crew'))
    WHERE entity = 'daily_report';
CREATE INDEX source_doc_employee_work_employee ON cdc.source_doc (cdc.oid(doc -> 'employee'))
    WHERE entity = 'employee_work';
CREATE INDEX source_doc_vehicle_work_vehicle ON cdc.source_doc (cdc.oid(doc -> 'vehicle'))
    WHERE entity = 'vehicle_work';
CREATE INDEX source_doc_shipment_jobsite_material ON cdc.source_doc
    (cdc.oid(doc -> 'jobsiteMaterial')) WHERE entity = 'material_shipment';
