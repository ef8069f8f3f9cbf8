//! Re-derivation from the mirror alone: `reproject` (the live star, under the projection lock)
//! and `verify`'s fresh projection into temporary tables.

use super::*;

/// Rebuild every star row derivable from the mirror alone (after a schema or rule change).
/// Rows whose documents are no longer derivable are archived or deleted as in [`project`];
/// rows of documents the mirror never saw are left alone.
pub async fn reproject_all(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
) -> Result<ApplyStats, ProjectError> {
    reproject(tx, pipeline, None).await
}

/// The source entities whose documents derive `tables` (star table names, from the entity
/// catalog): a reprojection of those entities' documents rebuilds these tables, and every
/// other table derived from the same documents (e.g. `fact_trucking` with
/// `fact_material_shipment`). `Err` names an unknown table.
pub fn entities_of_tables(tables: &[String]) -> Result<Vec<Entity>, String> {
    let mut out = BTreeSet::new();
    for t in tables {
        let Some(e) = crate::model::owner(t) else {
            return Err(format!(
                "unknown star table {t:?} (known: {})",
                crate::model::star_tables().join(", ")
            ));
        };
        out.insert(e);
    }
    Ok(out.into_iter().collect())
}

/// Rebuild the star rows derived from the mirror's documents of `entities` (every entity when
/// `None`), as [`reproject_all`] does, under the projection lock held exclusive (readers see
/// the old rows until the caller commits). A document whose rows PostgreSQL rejects is
/// quarantined and everything else is rebuilt (as the projector does).
pub async fn reproject(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    entities: Option<&[Entity]>,
) -> Result<ApplyStats, ProjectError> {
    let started = Instant::now();
    let stats = rederive(tx, pipeline, entities, Target::Live).await?;
    record(pipeline, &stats, started);
    Ok(stats)
}

/// Derive every star row of the mirror afresh into the star tables the session's search path
/// resolves to: `verify` shadows them with empty temporary tables of the same names. Takes no
/// projection lock and leaves `cdc.quarantine` alone (the documents whose rows PostgreSQL
/// rejects are only returned in [`ApplyStats::quarantined`]); the caller rolls back.
pub async fn derive_afresh(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
) -> Result<ApplyStats, ProjectError> {
    rederive(tx, pipeline, None, Target::Scratch).await
}

/// Where a re-derivation writes: the live star tables (exclusive projection lock, quarantine
/// kept up to date) or the scratch tables of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Live,
    Scratch,
}

/// Re-derive the rows of the mirror's documents of `entities` (all when `None`).
async fn rederive(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    entities: Option<&[Entity]>,
    target: Target,
) -> Result<ApplyStats, ProjectError> {
    let mut stats = ApplyStats::default();
    let lock = match target {
        Target::Live => sql::LOCK_EXCLUSIVE,
        Target::Scratch => "SELECT 1",
    };
    tx.batch_execute(&format!("{lock}; {}", sql::SCRATCH))
        .await
        .map_err(ProjectError::pg("scratch"))?;
    match entities {
        None => tx.batch_execute(sql::AFFECT_ALL).await,
        Some(list) => {
            let names: Vec<&str> = list.iter().map(|e| e.as_str()).collect();
            tx.execute(
                &format!("{} WHERE entity = ANY($1)", sql::AFFECT_ALL),
                &[&names],
            )
            .await
            .map(|_| ())
        }
    }
    .map_err(ProjectError::pg("affected"))?;
    let ctx = Ctx::new(pipeline);
    let pg = ProjectError::pg("reproject savepoint");
    tx.batch_execute("SAVEPOINT cdc_reproject")
        .await
        .map_err(pg)?;
    match derive(tx, &ctx, &mut stats, false).await {
        Ok(()) => tx
            .batch_execute("RELEASE SAVEPOINT cdc_reproject")
            .await
            .map_err(ProjectError::pg("reproject savepoint"))?,
        Err(e) if e.class() == ErrorClass::Poison => {
            tx.batch_execute(
                "ROLLBACK TO SAVEPOINT cdc_reproject; RELEASE SAVEPOINT cdc_reproject",
            )
            .await
            .map_err(ProjectError::pg("reproject savepoint"))?;
            stats = ApplyStats::default();
            derive(tx, &ctx, &mut stats, true).await?;
        }
        Err(e) => return Err(e),
    }
    cut_values(tx, &mut stats, target == Target::Live).await?;
    if target == Target::Live {
        sync_quarantine(tx, pipeline).await?;
    }
    Ok(stats)
}
