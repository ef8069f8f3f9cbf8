-- Projection lookup performance (docs/projection.md). No change to what is stored.
--
-- The GIN indexes on the mirror's child arrays serve point lookups (`@>` one ObjectId) for
-- every affected child, several times per batch. With the default fastupdate = on, new
-- entries wait in the index's pending list until a vacuum (or 4 MB of them) merges them, and
-- every lookup scans the whole pending list: a lookup costs O(recent inserts), which made
-- each batch slower as the mirror grew (and never recovers where autovacuum is off). Insert
-- new entries straight into the tree, and merge what is pending now.
ALTER INDEX cdc.source_doc_report_employee_work SET (fastupdate = off);
ALTER INDEX cdc.source_doc_report_vehicle_work SET (fastupdate = off);
ALTER INDEX cdc.source_doc_report_material_shipment SET (fastupdate = off);
ALTER INDEX cdc.source_doc_report_production SET (fastupdate = off);
ALTER INDEX cdc.source_doc_jobsite_materials SET (fastupdate = off);
ALTER INDEX cdc.source_doc_jobsite_revenue_invoices SET (fastupdate = off);
ALTER INDEX cdc.source_doc_jobsite_expense_invoices SET (fastupdate = off);
ALTER INDEX cdc.source_doc_jobsite_material_invoices SET (fastupdate = off);

SELECT gin_clean_pending_list(i::regclass) FROM unnest(ARRAY[
    'cdc.source_doc_report_employee_work', 'cdc.source_doc_report_vehicle_work',
    'cdc.source_doc_report_material_shipment', 'cdc.source_doc_report_production',
    'cdc.source_doc_jobsite_materials', 'cdc.source_doc_jobsite_revenue_invoices',
    'cdc.source_doc_jobsite_expense_invoices', 'cdc.source_doc_jobsite_material_invoices'
]) AS i;
