//! Quarantine: when PostgreSQL rejects a derived row, find the documents whose own rows fail
//! (statement by statement, halving the keys), record them in `cdc.quarantine` and leave them
//! out; the gauge of quarantined documents.

use super::*;

/// Bring `cdc.quarantine` up to date after a derivation (and its gauge, when it changed).
pub(super) async fn sync_quarantine(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
) -> Result<(), ProjectError> {
    let changed: i64 = tx
        .query_typed(sql::QUARANTINE_SYNC, &[])
        .await
        .map_err(ProjectError::pg("cdc.quarantine"))?
        .first()
        .map_or(0, |r| r.get(0));
    // The gauge is set when the quarantine changed, and on a pipeline's first apply in this
    // process (every entity then has its series, 0 where nothing is quarantined).
    static SEEDED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let first = SEEDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(pipeline.name.clone());
    if changed > 0 || first {
        let counts = quarantined(tx)
            .await
            .map_err(ProjectError::pg("cdc.quarantine"))?;
        set_quarantine_gauge(pipeline, &counts);
    }
    Ok(())
}

/// Documents in `cdc.quarantine`, by entity.
pub async fn quarantined(
    client: &impl tokio_postgres::GenericClient,
) -> Result<BTreeMap<String, i64>, tokio_postgres::Error> {
    Ok(client
        .query(sql::QUARANTINE_COUNTS, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// `cdc_project_quarantined_documents` for every entity (0 where none is quarantined).
pub fn set_quarantine_gauge(pipeline: &Pipeline, counts: &BTreeMap<String, i64>) {
    for e in Entity::ALL {
        let n = counts.get(e.as_str()).copied().unwrap_or(0);
        metrics::gauge!(m::PROJECT_QUARANTINED_DOCUMENTS,
            m::LABEL_PIPELINE => pipeline.name.clone(), m::LABEL_ENTITY => e.as_str())
        .set(n as f64);
    }
}

/// Run `stmt` in a savepoint. When it fails on the data, find the documents of its entity
/// whose rows it rejects, quarantine them, and run it again without them (their keys stay
/// affected, so the table's next statement archives or removes their earlier rows).
pub(super) async fn run_quarantining(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stmt: &plan::Step,
    needed: &[&str],
    stats: &mut ApplyStats,
) -> Result<u64, ProjectError> {
    let [entity] = needed else {
        return ctx.run(tx, stmt, stmt.name).await;
    };
    let exec = |sql: &'static str| async move {
        tx.batch_execute(sql)
            .await
            .map_err(ProjectError::pg("quarantine savepoint"))
    };
    loop {
        exec("SAVEPOINT cdc_stmt").await?;
        let e = match ctx.run(tx, stmt, stmt.name).await {
            Ok(n) => {
                exec("RELEASE SAVEPOINT cdc_stmt").await?;
                // Quarantined keys of this entity leave the statement's input only.
                tx.execute(
                    "INSERT INTO pg_temp.cdc_affected (entity, key)
                     SELECT entity, key FROM pg_temp.cdc_quarantined WHERE entity = $1
                     ON CONFLICT DO NOTHING",
                    &[entity],
                )
                .await
                .map_err(ProjectError::pg("quarantine"))?;
                return Ok(n);
            }
            Err(e) if e.class() == ErrorClass::Poison => e,
            Err(e) => return Err(e),
        };
        exec("ROLLBACK TO SAVEPOINT cdc_stmt; RELEASE SAVEPOINT cdc_stmt").await?;
        let keys: Vec<String> = tx
            .query(
                "SELECT key FROM pg_temp.cdc_affected WHERE entity = $1 ORDER BY key",
                &[entity],
            )
            .await
            .map_err(ProjectError::pg("quarantine"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let culprits = culprits(tx, ctx, stmt, entity, keys).await?;
        if culprits.is_empty() {
            return Err(e);
        }
        let reason = e.to_string();
        for key in &culprits {
            tracing::warn!(entity, key = %key, reason = %reason,
                "document quarantined: its rows are rejected by PostgreSQL and left out");
            stats.quarantined.insert((entity.to_string(), key.clone()));
        }
        tx.execute(
            "WITH q AS (
                 INSERT INTO pg_temp.cdc_quarantined (entity, key, reason)
                 SELECT $1, k, $3 FROM unnest($2::text[]) AS k ON CONFLICT DO NOTHING)
             , c AS (DELETE FROM pg_temp.cdc_ctx WHERE entity = $1 AND key = ANY($2))
             DELETE FROM pg_temp.cdc_affected WHERE entity = $1 AND key = ANY($2)",
            &[entity, &culprits, &reason],
        )
        .await
        .map_err(ProjectError::pg("quarantine"))?;
    }
}

/// The keys (of `entity`, among `keys`, with which `stmt` fails) whose own rows `stmt` rejects:
/// halves are tried in savepoints, each with only its keys as input, down to single keys. Keys
/// that fail only together are all returned.
async fn culprits(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stmt: &plan::Step,
    entity: &str,
    keys: Vec<String>,
) -> Result<Vec<String>, ProjectError> {
    let mut out = Vec::new();
    let mut failing = vec![keys];
    while let Some(set) = failing.pop() {
        if set.len() <= 1 {
            out.extend(set);
            continue;
        }
        let (a, b) = set.split_at(set.len() / 2);
        let (fa, fb) = (
            fails_with(tx, ctx, stmt, entity, a).await?,
            fails_with(tx, ctx, stmt, entity, b).await?,
        );
        match (fa, fb) {
            (false, false) => out.extend(set),
            _ => {
                if fa {
                    failing.push(a.to_vec());
                }
                if fb {
                    failing.push(b.to_vec());
                }
            }
        }
    }
    Ok(out)
}

/// Whether `stmt` fails on the data with only `keys` of `entity` as its input (everything is
/// rolled back).
async fn fails_with(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stmt: &plan::Step,
    entity: &str,
    keys: &[String],
) -> Result<bool, ProjectError> {
    let pg = ProjectError::pg("quarantine probe");
    tx.batch_execute("SAVEPOINT cdc_probe").await.map_err(pg)?;
    let keys = keys.to_vec();
    tx.execute(
        "WITH c AS (DELETE FROM pg_temp.cdc_ctx WHERE entity = $1 AND NOT key = ANY($2))
         DELETE FROM pg_temp.cdc_affected WHERE entity = $1 AND NOT key = ANY($2)",
        &[&entity, &keys],
    )
    .await
    .map_err(ProjectError::pg("quarantine probe"))?;
    let r = ctx.run(tx, stmt, stmt.name).await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT cdc_probe; RELEASE SAVEPOINT cdc_probe")
        .await
        .map_err(ProjectError::pg("quarantine probe"))?;
    match r {
        Ok(_) => Ok(false),
        Err(e) if e.class() == ErrorClass::Poison => Ok(true),
        Err(e) => Err(e),
    }
}

/// Isolate one document whose projection keeps timing out (PostgreSQL's `statement_timeout`
/// or `lock_timeout`, even applied alone): store it in the mirror, list it in
/// `cdc.quarantine` with `reason`, and derive nothing (its star rows stay as they were, so no
/// lock is waited on again). Its next version, a `reproject`, or any later derivation of it
/// that succeeds takes it out. A version the mirror already has (or a newer one) changes
/// nothing.
pub async fn quarantine_underived(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    doc: &SourceDoc,
    reason: &str,
) -> Result<ApplyStats, ProjectError> {
    let (batch, skipped) = dedupe(std::slice::from_ref(doc))?;
    let mut stats = ApplyStats {
        stale: skipped,
        ..ApplyStats::default()
    };
    tx.batch_execute(&format!("{}; {}", sql::LOCK_EXCLUSIVE, sql::SCRATCH))
        .await
        .map_err(ProjectError::pg("scratch"))?;
    if batch.is_empty() {
        return Ok(stats);
    }
    let storable = storable(&batch, &mut stats);
    stats.changed = upsert_mirror(tx, &batch, &storable, Versions::Newer).await?;
    stats.applied = stats.changed.len() as u64;
    stats.stale += batch.len() as u64 - stats.applied;
    for (entity, key) in &stats.changed {
        tracing::warn!(entity = entity.as_str(), key = %key, reason = %reason,
            "document quarantined: its projection keeps timing out in PostgreSQL; it is in \
             the mirror, its star rows are not derived");
        tx.execute(
            "INSERT INTO pg_temp.cdc_quarantined (entity, key, reason) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&entity.as_str(), key, &reason],
        )
        .await
        .map_err(ProjectError::pg("quarantine"))?;
        stats
            .quarantined
            .insert((entity.as_str().to_string(), key.clone()));
    }
    sync_quarantine(tx, pipeline).await?;
    Ok(stats)
}
