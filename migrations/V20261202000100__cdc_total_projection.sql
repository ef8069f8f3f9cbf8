-- A total projection (docs/projection.md, "A total projection"): a value that a valid MongoDB
-- document can hold never makes PostgreSQL reject the rows derived from it.
--
-- * Numbers: a string or an extended-JSON number that is not a finite decimal (NaN, Infinity,
--   free text) counts as missing instead of failing the cast.
-- * Dates: a date PostgreSQL cannot hold (beyond 294276 AD or before 4713 BC) and a string
--   that is not a date count as missing instead of failing the cast.
-- * Text wider than its column is cut to the column's width (in characters) by
--   cdc.fit_slow, called by the derivation only when a value is too wide; each cut is noted
--   in pg_temp.cdc_adjusted (created by the projection per session) so the projection can
--   count and log it.
--
-- No stored result changes: each function returns what it returned before for every input
-- that did not raise an error.

CREATE OR REPLACE FUNCTION cdc.num_text(t text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN t ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,4})?\s*$'
                THEN t::numeric END
$$;

CREATE OR REPLACE FUNCTION cdc.num(j jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
        WHEN 'number' THEN (j #>> '{}')::numeric
        WHEN 'string' THEN cdc.num_text(j #>> '{}')
        WHEN 'object' THEN cdc.num_text(COALESCE(j ->> '$numberDecimal', j ->> '$numberLong',
                                                 j ->> '$numberInt', j ->> '$numberDouble'))
    END
$$;

-- Milliseconds since the epoch as a timestamp, or NULL outside PostgreSQL's range.
CREATE OR REPLACE FUNCTION cdc.ts_ms(ms numeric) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms BETWEEN -210866803200000 AND 9224318015999000
                THEN to_timestamp(ms / 1000) END
$$;

CREATE OR REPLACE FUNCTION cdc.ts(j jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    d jsonb;
BEGIN
    CASE jsonb_typeof(j)
        WHEN 'string' THEN
            -- A date stored as text: whatever PostgreSQL cannot read counts as missing.
            BEGIN
                RETURN (j #>> '{}')::timestamptz;
            EXCEPTION WHEN data_exception THEN
                RETURN NULL;
            END;
        WHEN 'object' THEN
            d := j -> '$date';
            CASE jsonb_typeof(d)
                -- Relaxed extended JSON writes dates of years 1970-9999 as ISO-8601 text.
                WHEN 'string' THEN RETURN (d #>> '{}')::timestamptz;
                WHEN 'number' THEN RETURN cdc.ts_ms((d #>> '{}')::numeric);
                WHEN 'object' THEN RETURN cdc.ts_ms(cdc.num_text(d ->> '$numberLong'));
                ELSE RETURN NULL;
            END CASE;
        ELSE
            RETURN NULL;
    END CASE;
END
$$;

-- The slow path of the derivation's text fitting: V is wider than W characters (or W is NULL:
-- the column has no width). Notes the cut for the projection to count and log (never the
-- value: its table, column, the document's key and the original length).
CREATE OR REPLACE FUNCTION cdc.fit_slow(v text, w int, tbl text, col text, doc_key text)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF v IS NULL OR w IS NULL OR length(v) <= w THEN
        RETURN v;
    END IF;
    INSERT INTO pg_temp.cdc_adjusted (tbl, col, doc_key, adjustment, original_length)
    VALUES (tbl, col, doc_key, 'truncated', length(v));
    RETURN left(v, w);
END
$$;

-- A shipment's vehicle type as the legacy wrote it: the app's schema default "Truck" when the
-- vehicle object lacks the field, then `value || null` (an empty string is NULL).
CREATE OR REPLACE FUNCTION cdc.vehicle_type(vo jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(vo) = 'object' AND NOT (vo ? 'vehicleType') THEN 'Truck'
                ELSE NULLIF(vo ->> 'vehicleType', '') END
$$;
