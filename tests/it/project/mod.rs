//! The projection core against a real PostgreSQL: the legacy behaviour checklist with its
//! seed, each departure from the legacy rules (README, "Differences from the legacy sync"), the gaps the legacy tests left, propagation of dimension
//! changes, and THE LAW as a property test.

pub mod seed;

mod checklist;
mod departures;
mod gaps;
pub mod law;
mod propagation;
mod real_data;

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::event::Entity;
use bowmark_cdc::project::{self, ApplyStats, Lock, Projected, SourceDoc, Versions};
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::support::{self, TestDb};

/// A migrated private database and a client, plus a version clock for new documents.
pub struct Harness {
    /// Kept alive for the test: dropping it drops the database.
    #[allow(dead_code)]
    pub db: TestDb,
    pub client: Client,
    pub pipeline: Pipeline,
    pub t: u32,
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_pipeline(support::pipeline("paving")).await
    }

    pub async fn with_pipeline(pipeline: Pipeline) -> Harness {
        let db = support::migrated_db().await;
        let client = db.client().await;
        Harness {
            db,
            client,
            pipeline,
            t: 1000,
        }
    }

    /// The next version (cluster time) for a document written now.
    pub fn tick(&mut self) -> u32 {
        self.t += 1;
        self.t
    }

    /// Apply a batch in its own transaction as the projector does (newer versions only) and
    /// commit; documents whose rows PostgreSQL rejects are quarantined.
    pub async fn apply(&mut self, docs: &[SourceDoc]) -> ApplyStats {
        self.project(docs, Versions::Newer).await.stats
    }

    /// Apply a batch through the projection's entry point under `versions`, and commit.
    pub async fn project(&mut self, docs: &[SourceDoc], versions: Versions) -> Projected {
        let mut tx = self.client.transaction().await.expect("begin");
        let out = project::project(&mut tx, &self.pipeline, docs, versions, Lock::Exclusive)
            .await
            .unwrap_or_else(|e| panic!("apply failed: {e}: {:?}", std::error::Error::source(&e)));
        tx.commit().await.expect("commit");
        out
    }

    /// Upsert one document at the next version.
    pub async fn put(&mut self, entity: Entity, key: &str, doc: Value) -> ApplyStats {
        let t = self.tick();
        self.apply(&[seed::upsert(entity, key, doc, t)]).await
    }

    /// Delete one document at the next version.
    pub async fn del(&mut self, entity: Entity, key: &str) -> ApplyStats {
        let t = self.tick();
        self.apply(&[seed::delete(entity, key, t)]).await
    }

    /// The whole legacy seed, one batch.
    pub async fn seed(&mut self) -> ApplyStats {
        let docs = seed::Seed::legacy().source_docs(self.t + 1);
        self.t += docs.len() as u32 + 1;
        self.apply(&docs).await
    }

    pub async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        self.client
            .query(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    pub async fn count(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
        self.client
            .query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    }

    /// One numeric column of the row with this mongo_id, as text (e.g. "25.00").
    pub async fn num(&self, table: &str, column: &str, mongo_id: &str) -> String {
        let sql = format!("SELECT {column}::text FROM {table} WHERE mongo_id = $1");
        let row = self
            .client
            .query_opt(&sql, &[&mongo_id])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        row.map(|r| {
            r.get::<_, Option<String>>(0)
                .unwrap_or_else(|| "NULL".into())
        })
        .unwrap_or_else(|| "NO ROW".into())
    }

    /// Is the row with this mongo_id archived? None when there is no row.
    pub async fn archived(&self, table: &str, mongo_id: &str) -> Option<bool> {
        let sql = format!("SELECT archived_at IS NOT NULL FROM {table} WHERE mongo_id = $1");
        self.client
            .query_opt(&sql, &[&mongo_id])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .map(|r| r.get(0))
    }
}
