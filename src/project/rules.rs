//! The projection rules version: which rules derived a pipeline's star rows.
//!
//! [`RULES_VERSION`] is bumped whenever the projection's SQL semantics change (a row derived
//! from the same mirror would differ). `bowmark-cdc reproject` and a backfill that completes
//! every watched collection record it in `cdc.projection_rules`; `status` and `run` compare
//! the recorded version with the binary's.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// The projection rules of this binary. Bump it with every change of the projection's SQL
/// semantics; the star rows of a database then need `bowmark-cdc reproject`.
pub const RULES_VERSION: i32 = 2;

/// The rules version that last derived a pipeline's star rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesState {
    /// Recorded by a reproject or a complete backfill.
    Recorded { version: i32, at: DateTime<Utc> },
    /// Nothing recorded and the mirror is empty: no star row was derived yet.
    Empty,
    /// Nothing recorded but the mirror holds documents: rows derived before the rules were
    /// tracked (older than version 2).
    Unknown,
}

/// Record that every star row of `pipeline` was just derived by this binary's rules.
pub async fn record_rules_version(
    client: &impl GenericClient,
    pipeline: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO cdc.projection_rules (pipeline, version, reprojected_at) \
             VALUES ($1, $2, now()) \
             ON CONFLICT (pipeline) DO UPDATE \
             SET version = EXCLUDED.version, reprojected_at = EXCLUDED.reprojected_at",
            &[&pipeline, &RULES_VERSION],
        )
        .await?;
    Ok(())
}

/// The rules that derived `pipeline`'s star rows.
pub async fn rules_state(
    client: &impl GenericClient,
    pipeline: &str,
) -> Result<RulesState, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT version, reprojected_at FROM cdc.projection_rules WHERE pipeline = $1",
            &[&pipeline],
        )
        .await?;
    if let Some(r) = row {
        return Ok(RulesState::Recorded {
            version: r.get(0),
            at: r.get(1),
        });
    }
    let any: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM cdc.source_doc)", &[])
        .await?
        .get(0);
    Ok(if any {
        RulesState::Unknown
    } else {
        RulesState::Empty
    })
}

/// At the daemon's start: record the rules when no star row was derived yet (everything to
/// come is derived by this binary), and return the state to warn about when it is outdated.
pub async fn check_at_start(
    client: &impl GenericClient,
    pipeline: &str,
) -> Result<RulesState, tokio_postgres::Error> {
    let state = rules_state(client, pipeline).await?;
    if state == RulesState::Empty {
        record_rules_version(client, pipeline).await?;
    }
    Ok(state)
}
