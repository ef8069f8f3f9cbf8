-- Invoices: revenue or expense through the jobsite arrays only (first jobsite by key, revenue
-- before expense). An invoice listed by any jobsite material feeds that material's
-- invoice-month rate and is not written here (README, "Differences from the legacy sync" 3). Hard delete, as legacy.
-- $1 = report time zone, $2 = this apply's synced_at stamp.

-- @step placeholder invoice
-- An invoice's company has a row even when its document is gone (placeholder).
WITH refs AS MATERIALIZED (
    SELECT cdc.oid(s.doc -> 'company') AS k
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.doc FROM cdc.source_doc s0
                        WHERE s0.entity = a.entity AND s0.key = a.key AND NOT s0.deleted OFFSET 0) s
    WHERE a.entity = 'invoice'
), p AS (
    {{placeholder dim_company k}}
)
SELECT count(*) FROM p

-- @step upsert fact_invoice
-- (MATERIALIZED: the owner lookups run once per invoice, not once per use below.)
WITH i0 AS MATERIALIZED (
    SELECT s.key, s.doc,
           (SELECT min(k) FROM (
               SELECT js.key AS k FROM cdc.source_doc js
               WHERE js.entity = 'jobsite' AND js.doc -> 'revenueInvoices' @> cdc.oid_probe(s.key)
               OFFSET 0) r) AS revenue_jobsite,
           (SELECT min(k) FROM (
               SELECT js.key AS k FROM cdc.source_doc js
               WHERE js.entity = 'jobsite' AND js.doc -> 'expenseInvoices' @> cdc.oid_probe(s.key)
               OFFSET 0) e) AS expense_jobsite
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = 'invoice' AND NOT s.deleted AND s.doc IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM cdc.source_doc jm
                      WHERE jm.entity = 'jobsite_material'
                        AND jm.doc -> 'invoices' @> cdc.oid_probe(s.key))
), i AS (
    SELECT key, doc,
           CASE WHEN revenue_jobsite IS NOT NULL THEN ARRAY[revenue_jobsite, 'revenue']
                WHEN expense_jobsite IS NOT NULL THEN ARRAY[expense_jobsite, 'expense'] END AS owner
    FROM i0
)
INSERT INTO fact_invoice AS t
    (mongo_id, jobsite_id, company_id, invoice_date, direction, invoice_type, invoice_number,
     amount, description, synced_at)
SELECT i.key, j.id, c.id, cdc.day(cdc.ts(i.doc -> 'date'), $1), i.owner[2],
       CASE WHEN cdc.bool(i.doc -> 'accrual') THEN 'accrual'
            WHEN cdc.bool(i.doc -> 'internal') THEN 'internal'
            ELSE 'external' END,
       {{fit fact_invoice invoice_number i.key COALESCE(i.doc ->> 'invoiceNumber', '')}},
       COALESCE(cdc.num(i.doc -> 'cost'), 0),
       {{fit fact_invoice description i.key NULLIF(i.doc ->> 'description', '')}}, $2
FROM i
JOIN dim_jobsite j ON j.mongo_id = i.owner[1]
JOIN dim_company c ON c.mongo_id = cdc.oid(i.doc -> 'company')
WHERE cdc.ts(i.doc -> 'date') IS NOT NULL
ON CONFLICT (mongo_id) DO UPDATE SET
    jobsite_id = EXCLUDED.jobsite_id, company_id = EXCLUDED.company_id,
    invoice_date = EXCLUDED.invoice_date, direction = EXCLUDED.direction,
    invoice_type = EXCLUDED.invoice_type, invoice_number = EXCLUDED.invoice_number,
    amount = EXCLUDED.amount, description = EXCLUDED.description,
    synced_at = EXCLUDED.synced_at

-- @step cleanup fact_invoice
DELETE FROM fact_invoice t
USING pg_temp.cdc_affected a
WHERE a.entity = 'invoice' AND t.mongo_id = a.key AND t.synced_at IS DISTINCT FROM $2
