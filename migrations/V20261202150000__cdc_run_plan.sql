-- The projection plan run server-side: one call per apply instead of one round trip per
-- statement. The statements come from the caller (the plan in src/project/plan.sql, built by
-- the binary), so changing the plan needs no migration; this function only decides which
-- statements run, in order:
--   * a 'pre' step (the mirror's report-child links, the affected-set closure) runs when one
--     of its source entities is present; a closure then makes its target entities present;
--   * a derivation step runs when one of its source entities has affected keys
--     (pg_temp.cdc_affected, counted once after the 'pre' steps);
--   * a 'cleanup' step of one source entity is skipped when the table's 'upsert' derived a row
--     for every affected key of that entity.
-- $1 of every statement is the report time zone, $2 the synced_at stamp. A statement whose
-- result is a count (selects = true) reports that count, any other its row count. Returns
-- one row per statement run: its index (0-based), rows, and milliseconds.
CREATE OR REPLACE FUNCTION cdc.run_plan(
    tz text, stamp timestamptz, present text[],
    stmts text[], selects boolean[], kinds text[], tables text[],
    sources text[], targets text[]
) RETURNS TABLE (step integer, n bigint, ms double precision)
LANGUAGE plpgsql AS $$
DECLARE
    affected jsonb;
    upserted jsonb := '{}';
    srcs text[];
    cnt bigint;
    t0 timestamptz;
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(stmts, 1), 0) LOOP
        srcs := string_to_array(sources[i], ',');
        IF kinds[i] = 'pre' THEN
            CONTINUE WHEN NOT (srcs && present);
        ELSE
            IF affected IS NULL THEN
                SELECT coalesce(jsonb_object_agg(a.entity, a.c), '{}') INTO affected
                FROM (SELECT entity, count(*) AS c FROM pg_temp.cdc_affected GROUP BY entity) a;
            END IF;
            CONTINUE WHEN NOT (affected ?| srcs);
            CONTINUE WHEN kinds[i] = 'cleanup' AND tables[i] IS NOT NULL
                AND cardinality(srcs) = 1
                AND (upserted ->> tables[i]) IS NOT NULL
                AND (upserted ->> tables[i])::bigint = (affected ->> srcs[1])::bigint;
        END IF;
        t0 := clock_timestamp();
        IF selects[i] THEN
            EXECUTE stmts[i] INTO cnt USING tz, stamp;
        ELSE
            EXECUTE stmts[i] USING tz, stamp;
            GET DIAGNOSTICS cnt = ROW_COUNT;
        END IF;
        cnt := coalesce(cnt, 0);
        IF kinds[i] = 'pre' AND targets[i] <> '' THEN
            present := present || string_to_array(targets[i], ',');
        END IF;
        IF kinds[i] = 'upsert' AND tables[i] IS NOT NULL THEN
            upserted := upserted || jsonb_build_object(tables[i], cnt);
        END IF;
        step := i - 1;
        n := cnt;
        ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION cdc.run_plan(text, timestamptz, text[], text[], boolean[], text[], text[], text[], text[]) IS
    'Runs the projection plan''s statements passed by bowmark-cdc in one call (see src/project/server.rs).';
