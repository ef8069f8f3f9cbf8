-- The report-child links' primary key leads with the child's key instead of its entity (four
-- values): every lookup gives both, and most comparisons of the key then end at the first
-- column. A bulk backfill rebuilds this key after loading the reports: about 30 % faster so.
ALTER TABLE cdc.report_child
    DROP CONSTRAINT report_child_pkey,
    ADD CONSTRAINT report_child_pkey PRIMARY KEY (child_key, entity, report_key);
