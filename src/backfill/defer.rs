//! Bulk loading: a backfill into empty star tables drops their non-unique indexes and foreign
//! keys for the load and rebuilds them afterwards, as `pg_restore` does. Maintaining five
//! secondary indexes and checking four foreign keys row by row costs more than half of a fact
//! row's insert; building an index once over the loaded rows and validating a foreign key
//! with one join costs a fraction of it.
//!
//! The unique constraints stay: the projection's `ON CONFLICT` needs them, and they keep the
//! load idempotent (the one exception is the report links' key, [`LINKS`]). So do primary keys
//! that foreign keys reference; a fact table's surrogate `id` key, which nothing references
//! and no statement looks up, is deferred like an index.
//! Every definition dropped is first recorded in `cdc.deferred_ddl`, in the same transaction
//! as the drop, so a killed backfill leaves a record of what to rebuild; the next backfill of
//! the database or `bowmark-cdc migrate` rebuilds it ([`restore`]). Deferring takes the
//! projection lock exclusive and rebuilding takes it shared, so a streaming projection never
//! sees a table half-altered.

use std::time::Instant;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::event::Entity;
use crate::project::PROJECT_LOCK_KEY;

/// The star tables a collection loads in bulk (tens of thousands of rows per business line);
/// the dimension tables of the other collections are small.
pub(crate) fn bulk_tables(e: Entity) -> &'static [&'static str] {
    crate::model::model(e).bulk_tables
}

/// The report-child links: loaded in bulk with the reports. Their primary key is deferred too
/// (nothing reads the links while the reports load on a first load, [`defer`]'s `keys`).
pub(crate) const LINKS: &str = "cdc.report_child";

/// Record and drop the non-unique indexes, the foreign keys and a primary key nothing
/// references (when a unique constraint stays) of every table in `tables` that holds no rows,
/// and with `keys` its primary key and unique constraints too (only for a
/// table no statement of the load upserts into or looks up). Returns the tables deferred now;
/// tables already deferred by an earlier, interrupted run stay deferred.
///
/// A role that does not own the tables cannot alter them: then nothing is deferred, the load
/// keeps the indexes in place, and a warning says why.
pub(crate) async fn defer(
    client: &mut Client,
    tables: &[&str],
    keys: bool,
) -> Result<Vec<String>, tokio_postgres::Error> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    match defer_in_tx(client, tables, keys).await {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::warn!(tables = tables.join(","), error = %e,
                "bulk load unavailable (the role does not own the tables): loading with their \
                 indexes and foreign keys in place, which is slower");
            Ok(Vec::new())
        }
        other => other,
    }
}

async fn defer_in_tx(
    client: &mut Client,
    tables: &[&str],
    keys: bool,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut deferred = Vec::new();
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PROJECT_LOCK_KEY])
        .await?;
    for &table in tables {
        let empty: bool = tx
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"), &[])
            .await?
            .get(0);
        if !empty {
            continue;
        }
        let dropped = tx
            .query(
                "SELECT i.relname::text, 'index', pg_get_indexdef(x.indexrelid),
                        format('DROP INDEX %s', x.indexrelid::regclass)
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                 WHERE x.indrelid = $1::text::regclass AND NOT x.indisunique AND NOT x.indisprimary
                 UNION ALL
                 SELECT c.conname::text, 'constraint',
                        -- An ON DELETE CASCADE foreign key: first what the cascade would have
                        -- deleted had a referenced row gone meanwhile (the daemon may delete a
                        -- crew or jobsite material while the key is away).
                        CASE WHEN c.contype = 'f' AND c.confdeltype = 'c'
                                  AND cardinality(c.conkey) = 1 THEN
                            format('DELETE FROM %s t WHERE t.%I IS NOT NULL AND NOT EXISTS '
                                   '(SELECT 1 FROM %s r WHERE r.%I = t.%I)' || E'\n' || ';',
                                   c.conrelid::regclass, fk.attname, c.confrelid::regclass,
                                   pk.attname, fk.attname)
                        ELSE '' END
                        || format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass,
                                  c.conname, pg_get_constraintdef(c.oid)),
                        format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname)
                 FROM pg_constraint c
                 LEFT JOIN pg_attribute fk ON fk.attrelid = c.conrelid AND fk.attnum = c.conkey[1]
                 LEFT JOIN pg_attribute pk ON pk.attrelid = c.confrelid AND pk.attnum = c.confkey[1]
                 WHERE c.conrelid = $1::text::regclass
                   AND (c.contype = 'f' OR ($2 AND c.contype IN ('p', 'u'))
                        -- A surrogate primary key that no foreign key references, beside
                        -- the natural key the upserts conflict on: an index like the others.
                        OR (c.contype = 'p'
                            AND EXISTS (SELECT 1 FROM pg_constraint u
                                        WHERE u.conrelid = c.conrelid AND u.contype = 'u')
                            AND NOT EXISTS (SELECT 1 FROM pg_constraint r
                                            WHERE r.confrelid = c.conrelid AND r.contype = 'f')))",
                &[&table, &keys],
            )
            .await?;
        for row in &dropped {
            let (name, kind, statement, drop): (&str, &str, &str, &str) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            tx.execute(
                "INSERT INTO cdc.deferred_ddl (table_name, name, kind, statement)
                 VALUES ($1, $2, $3, $4)",
                &[&table, &name, &kind, &statement],
            )
            .await?;
            tx.batch_execute(drop).await?;
        }
        if !dropped.is_empty() {
            deferred.push(table.to_string());
        }
    }
    tx.commit().await?;
    Ok(deferred)
}

/// Rebuild the deferred indexes and foreign keys of `tables` (every deferred table when
/// `None`): per table, in one transaction, the indexes first, then the foreign keys (each
/// validated by one join). Returns how many were rebuilt.
///
/// A rebuild takes the projection lock shared, like a backfill chunk: the backfill's other
/// workers keep loading (the tables it locks are ones they don't write), a streaming
/// projection waits. Rebuilds take a lock of their own exclusive, so two never wait for each
/// other's locks on the same dimension tables in different orders.
pub(crate) async fn restore(
    client: &mut Client,
    tables: Option<&[&str]>,
) -> Result<usize, tokio_postgres::Error> {
    let tables: Vec<String> = client
        .query(
            "SELECT DISTINCT table_name FROM cdc.deferred_ddl
             WHERE $1::text[] IS NULL OR table_name = ANY ($1::text[]) ORDER BY table_name",
            &[&tables],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut rebuilt = 0;
    for table in tables {
        let started = Instant::now();
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2)",
            &[&PROJECT_LOCK_KEY, &REBUILD_LOCK_KEY],
        )
        .await?;
        let pending = tx
            .query(
                "DELETE FROM cdc.deferred_ddl WHERE table_name = $1 RETURNING kind, statement",
                &[&table],
            )
            .await?;
        let mut statements: Vec<(&str, &str)> =
            pending.iter().map(|r| (r.get(0), r.get(1))).collect();
        // "constraint" sorts after "index": build the indexes before validating foreign keys.
        statements.sort();
        for (_, sql) in &statements {
            let sql = match sql.split_once(CASCADE_SEPARATOR) {
                Some((cascade, add)) => {
                    let gone = tx.execute(cascade, &[]).await?;
                    if gone > 0 {
                        tracing::warn!(
                            table,
                            rows = gone,
                            "rows whose referenced row was deleted while the foreign key was \
                             away removed, as its ON DELETE CASCADE would have"
                        );
                    }
                    add
                }
                None => sql,
            };
            tx.batch_execute(sql).await?;
        }
        tx.commit().await?;
        rebuilt += statements.len();
        tracing::info!(
            table,
            rebuilt = statements.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "bulk load: indexes and foreign keys rebuilt"
        );
    }
    Ok(rebuilt)
}

/// Rebuild every deferred index and foreign key (what an interrupted bulk load left dropped):
/// `migrate` and every backfill call this. Returns how many were rebuilt.
pub async fn rebuild_all(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    restore(client, None).await
}

/// What an unfinished bulk load left dropped (`cdc.deferred_ddl`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Index and constraint definitions waiting to be rebuilt.
    pub definitions: i64,
    pub tables: Vec<String>,
}

/// The deferred definitions not rebuilt yet (the daemon warns about them at start).
pub async fn pending(client: &Client) -> Result<Pending, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(array_agg(DISTINCT table_name ORDER BY table_name), '{}') \
             FROM cdc.deferred_ddl",
            &[],
        )
        .await?;
    Ok(Pending {
        definitions: row.get(0),
        tables: row.get(1),
    })
}

/// Between the cascade's DELETE and the ALTER TABLE of a recorded foreign key.
const CASCADE_SEPARATOR: &str = "\n;";

/// Serializes rebuilds (see [`restore`]).
const REBUILD_LOCK_KEY: i64 = crate::locks::REBUILD;
