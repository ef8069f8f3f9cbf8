-- cdc.run_plan with statements prepared once per session: the same rules as V20261202150000
-- (which statements run, in order), and with `names` given, each statement becomes a
-- temporary PL/pgSQL function of that name (pg_temp, so it lives as long as the session; the
-- binary names a statement by a hash of its text, so a changed plan gets new names), whose
-- plan PL/pgSQL caches, run with a generic plan: a small apply then pays no planning, which
-- was most of its time. Without `names` (large batches, the backfill, verify and reproject)
-- the statements are planned for each call, as before. The previous function stays, for a
-- binary of the previous release during a rolling update.
--
-- With `names` given, `stmts` may be NULL: the statement texts are then sent only when the
-- session lacks one of the functions. Such a call runs nothing and returns the single row
-- (step -1), and the caller repeats it with the texts.
CREATE OR REPLACE FUNCTION cdc.run_plan(
    tz text, stamp timestamptz, present text[],
    stmts text[], selects boolean[], kinds text[], tables text[],
    sources text[], targets text[], names text[]
) RETURNS TABLE (step integer, n bigint, ms double precision)
LANGUAGE plpgsql AS $$
DECLARE
    affected jsonb;
    upserted jsonb := '{}';
    srcs text[];
    cnt bigint;
    t0 timestamptz;
    i integer;
    have text[];
    mode text;
BEGIN
    IF names IS NOT NULL THEN
        have := ARRAY(SELECT p.proname::text FROM pg_proc p
                      WHERE p.pronamespace = pg_my_temp_schema() AND p.proname = ANY (names));
        IF stmts IS NULL AND NOT (names <@ have) THEN
            step := -1; n := 0; ms := 0;
            RETURN NEXT;
            RETURN;
        END IF;
        mode := current_setting('plan_cache_mode');
        PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
    END IF;
    FOR i IN 1 .. coalesce(array_length(kinds, 1), 0) LOOP
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
        IF names IS NOT NULL THEN
            IF NOT (names[i] = ANY (have)) THEN
                -- $1 and $2 of the statement are the function's arguments.
                EXECUTE format(
                    E'CREATE FUNCTION pg_temp.%I(text, timestamptz) RETURNS bigint LANGUAGE plpgsql\n'
                    'AS $cdc_plan_step$ DECLARE cdc_rows_ bigint; BEGIN\n%s\n%s;\n%s\n'
                    'RETURN cdc_rows_; END $cdc_plan_step$',
                    names[i], stmts[i],
                    CASE WHEN selects[i] THEN 'INTO cdc_rows_' ELSE '' END,
                    CASE WHEN selects[i] THEN '' ELSE 'GET DIAGNOSTICS cdc_rows_ = ROW_COUNT;' END);
                have := have || names[i];
            END IF;
            EXECUTE format('SELECT pg_temp.%I($1, $2)', names[i]) INTO cnt USING tz, stamp;
        ELSIF selects[i] THEN
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
    IF names IS NOT NULL THEN
        PERFORM set_config('plan_cache_mode', mode, true);
    END IF;
END
$$;

COMMENT ON FUNCTION cdc.run_plan(text, timestamptz, text[], text[], boolean[], text[], text[], text[], text[], text[]) IS
    'Runs the projection plan''s statements passed by bowmark-cdc in one call, prepared once per session when named (see src/project/server.rs).';
