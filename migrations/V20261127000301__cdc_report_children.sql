-- Projection speed (docs/projection.md). No change to what the star schema holds.
--
-- A daily-report child finds its report (the lowest-key live report listing it) through this
-- link table instead of GIN indexes on the report's arrays: a btree lookup, with no recheck
-- that reads the report document. The projection rewrites a report's links whenever the
-- report's mirror row changes (src/project/sql/mirror.sql), in the same transaction.
CREATE TABLE cdc.report_child (
    entity     text NOT NULL,   -- the child's entity: employee_work, vehicle_work,
                                -- material_shipment or production
    child_key  text NOT NULL,
    report_key text NOT NULL,   -- a live daily report whose array lists the child
    PRIMARY KEY (entity, child_key, report_key)
);

COMMENT ON TABLE cdc.report_child IS
    'Child -> live daily report listing it, from the mirror''s report arrays.';

INSERT INTO cdc.report_child (entity, child_key, report_key)
SELECT DISTINCT f.child, cdc.oid(e.v), r.key
FROM cdc.source_doc r
CROSS JOIN (VALUES ('employee_work', 'employeeWork'), ('vehicle_work', 'vehicleWork'),
                   ('material_shipment', 'materialShipment'), ('production', 'production'))
           AS f(child, field)
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(r.doc -> f.field)) AS e(v)
WHERE r.entity = 'daily_report' AND r.doc IS NOT NULL AND cdc.oid(e.v) IS NOT NULL;

DROP INDEX cdc.source_doc_report_employee_work;
DROP INDEX cdc.source_doc_report_vehicle_work;
DROP INDEX cdc.source_doc_report_material_shipment;
DROP INDEX cdc.source_doc_report_production;
