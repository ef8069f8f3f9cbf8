-- Projection speed (docs/projection.md). No change to what any function returns.
--
-- cdc.ts parses an extended-JSON date. As a SQL function it cannot be inlined (the text ->
-- timestamptz cast is only STABLE while the function must be IMMUTABLE for the report-date
-- index), so every call ran through the SQL-function executor: about 3 µs, called a dozen
-- times per derived fact row. The same logic in PL/pgSQL costs about 1 µs per call.
CREATE OR REPLACE FUNCTION cdc.ts(j jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    d jsonb;
BEGIN
    CASE jsonb_typeof(j)
        WHEN 'string' THEN
            RETURN (j #>> '{}')::timestamptz;
        WHEN 'object' THEN
            d := j -> '$date';
            CASE jsonb_typeof(d)
                WHEN 'string' THEN RETURN (d #>> '{}')::timestamptz;
                WHEN 'number' THEN RETURN to_timestamp((d #>> '{}')::numeric / 1000);
                WHEN 'object' THEN RETURN to_timestamp((d ->> '$numberLong')::numeric / 1000);
                ELSE RETURN NULL;
            END CASE;
        ELSE
            RETURN NULL;
    END CASE;
END
$$;
