-- Projection speed (docs/projection.md). No change to what cdc.ts returns: it already returned
-- NULL for NULL. As STRICT, a NULL argument (an absent field: `archivedAt` on most documents)
-- skips the PL/pgSQL call altogether.
ALTER FUNCTION cdc.ts(jsonb) STRICT;
