//! Source against mirror: every document of MongoDB (or of a mongodump folder) is in
//! `cdc.source_doc` with the same content, and no live mirror document is missing from the
//! source.
//!
//! The source is read as the backfill reads it (same keys, same JSON form, made storable as the
//! mirror stores it) into a temporary table, then compared in SQL. Against a live MongoDB the
//! cluster time is taken before the scan: a mirror document whose version is at or after it was
//! written after the scan began and is left out, and drifted documents are re-checked until
//! `settle` has passed, so that events still on their way through the broker are not reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bson::Document;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::backfill::chunk::Chunk;
use crate::backfill::{self, BackfillError, DocStamp, Selected, dump, mongo};
use crate::config::Settings;
use crate::event::{ClusterTime, Version};
use crate::ops::OpsError;

/// Where the source documents come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// The pipeline's MongoDB.
    Mongo,
    /// A mongodump database folder (`*.bson`).
    Dump(PathBuf),
}

impl SourceSpec {
    pub fn label(&self) -> &'static str {
        match self {
            SourceSpec::Mongo => "mongodb",
            SourceSpec::Dump(_) => "dump",
        }
    }
}

/// How a document drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocDrift {
    /// In the source, not live in the mirror.
    Missing,
    /// Live in the mirror, not in the source.
    Unexpected,
    /// In both with different content.
    Differs,
}

/// One drifted document, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftedDoc {
    pub key: String,
    pub drift: DocDrift,
    /// The top-level fields that differ (for [`DocDrift::Differs`]).
    pub fields: Vec<String>,
}

/// One collection's comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CollectionReport {
    pub collection: String,
    pub entity: String,
    /// Documents read from the source.
    pub source_docs: u64,
    /// Live (not deleted) mirror documents of the entity.
    pub mirror_docs: u64,
    /// Mirror documents written after the scan began (left out).
    pub left_out: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub differing: u64,
    /// Up to the report's key limit.
    pub docs: Vec<DriftedDoc>,
}

impl CollectionReport {
    pub fn drift(&self) -> u64 {
        self.missing + self.unexpected + self.differing
    }
}

const CREATE: &str = "
CREATE TEMP TABLE IF NOT EXISTS cdc_verify_src (
    entity text NOT NULL, key text NOT NULL, doc jsonb NOT NULL, PRIMARY KEY (entity, key)
);
TRUNCATE pg_temp.cdc_verify_src";

const INSERT: &str = "
INSERT INTO pg_temp.cdc_verify_src (entity, key, doc)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[]::jsonb[])
ON CONFLICT (entity, key) DO UPDATE SET doc = EXCLUDED.doc";

/// Drifted documents of one entity: (key, drift, differing top-level fields). A mirror version
/// at or after ($2, $3) was written after the scan began: left out.
const DRIFT: &str = "
WITH m AS (
    SELECT key, doc, deleted, (ct_t, ct_i) >= ($2::int8, $3::int8) AS late
    FROM cdc.source_doc WHERE entity = $1
), v AS (
    SELECT key, doc FROM pg_temp.cdc_verify_src WHERE entity = $1
)
SELECT coalesce(v.key, m.key) AS key,
       CASE WHEN m.key IS NULL OR m.deleted THEN 'missing'
            WHEN v.key IS NULL THEN 'unexpected'
            ELSE 'differs' END AS drift,
       CASE WHEN v.key IS NOT NULL AND m.doc IS NOT NULL THEN
           ARRAY(SELECT k FROM jsonb_object_keys(v.doc || m.doc) k
                 WHERE v.doc -> k IS DISTINCT FROM m.doc -> k ORDER BY k)
       END AS fields
FROM v FULL JOIN m ON m.key = v.key
WHERE NOT coalesce(m.late, false)
  AND ((v.key IS NOT NULL AND (m.key IS NULL OR m.deleted))
       OR (v.key IS NULL AND NOT m.deleted)
       OR (v.key IS NOT NULL AND NOT m.deleted AND v.doc <> m.doc))
ORDER BY 1";

const COUNTS: &str = "
SELECT (SELECT count(*) FROM pg_temp.cdc_verify_src WHERE entity = $1),
       count(*) FILTER (WHERE NOT deleted),
       count(*) FILTER (WHERE (ct_t, ct_i) >= ($2::int8, $3::int8))
FROM cdc.source_doc WHERE entity = $1";

/// Compare the source with the mirror, collection by collection.
pub async fn check(
    pg: &Client,
    settings: &Settings,
    spec: &SourceSpec,
    max_keys: usize,
    settle: Duration,
) -> Result<Vec<CollectionReport>, OpsError> {
    let p = &settings.pipeline;
    let collections = backfill::select(p, &[]).map_err(OpsError::Source)?;
    pg.batch_execute(CREATE)
        .await
        .map_err(OpsError::pg("cdc_verify_src"))?;
    // Mirror versions at or after this cluster time are left out ((max, max): none).
    let mut start = ClusterTime {
        t: u32::MAX,
        i: u32::MAX,
    };
    let mongo = match spec {
        SourceSpec::Mongo => {
            let client = mongo::connect(settings.mongo_uri.expose(), true)
                .await
                .map_err(OpsError::Source)?;
            start = mongo::position(&client, &p.mongo_database)
                .await
                .map_err(OpsError::Source)?
                .cluster_time;
            Some(client)
        }
        SourceSpec::Dump(_) => None,
    };
    for Selected {
        collection: coll,
        entity,
    } in &collections
    {
        let (tx, mut rx) = mpsc::channel(4);
        let stamp = DocStamp {
            version: Version::ZERO,
            wall_time: chrono::Utc::now(),
        };
        let chunk_size = p.backfill.chunk_size;
        match (spec, &mongo) {
            (SourceSpec::Dump(dir), _) => match dump::locate(dir, coll).map_err(dump_err)? {
                dump::DumpEntry::Missing { reason } => {
                    tracing::warn!(collection = %coll, reason, "verify: the dump holds no documents of the collection");
                    drop(tx);
                }
                dump::DumpEntry::Data(file) => {
                    let reader = dump::DumpReader::open(&file, 0).map_err(dump_err)?;
                    let entity = *entity;
                    tokio::task::spawn_blocking(move || {
                        dump::produce(reader, entity, chunk_size, stamp, tx)
                    });
                }
            },
            (SourceSpec::Mongo, Some(client)) => {
                let c = client
                    .database(&p.mongo_database)
                    .collection::<Document>(coll);
                tokio::spawn(mongo::scan(c, *entity, chunk_size, None, stamp, tx));
            }
            (SourceSpec::Mongo, None) => unreachable!("connected above"),
        }
        let mut read = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(OpsError::Source)?;
            read += chunk.read;
            load(pg, chunk).await?;
        }
        tracing::info!(collection = %coll, documents = read, "verify: source collection read");
    }
    let deadline = Instant::now() + settle;
    loop {
        let reports = compare(pg, &collections, start, max_keys).await?;
        let drift: u64 = reports.iter().map(CollectionReport::drift).sum();
        if drift == 0 || mongo.is_none() || Instant::now() >= deadline {
            return Ok(reports);
        }
        tracing::info!(
            drift,
            "verify: source and mirror differ; re-checking while events in flight arrive"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn dump_err(e: dump::DumpError) -> OpsError {
    OpsError::Source(BackfillError::Dump(e))
}

/// Put one chunk of source documents, made storable as the mirror stores them, into the
/// temporary table.
async fn load(pg: &Client, chunk: Chunk) -> Result<(), OpsError> {
    let mut entities = Vec::with_capacity(chunk.docs.len());
    let mut keys = Vec::with_capacity(chunk.docs.len());
    let mut docs = Vec::with_capacity(chunk.docs.len());
    for d in chunk.docs {
        let Some(raw) = d.doc else { continue };
        let text = match crate::project::storable_form(raw.get()) {
            Some((v, _)) => v.to_string(),
            None => raw.get().to_string(),
        };
        entities.push(d.entity.as_str());
        keys.push(d.key);
        docs.push(text);
    }
    pg.execute(INSERT, &[&entities, &keys, &docs])
        .await
        .map_err(OpsError::pg("cdc_verify_src"))?;
    Ok(())
}

async fn compare(
    pg: &Client,
    collections: &[Selected],
    start: ClusterTime,
    max_keys: usize,
) -> Result<Vec<CollectionReport>, OpsError> {
    let (t, i) = (i64::from(start.t), i64::from(start.i));
    let mut out = Vec::new();
    for Selected {
        collection: coll,
        entity,
    } in collections
    {
        let e = entity.as_str();
        let c = pg
            .query_one(COUNTS, &[&e, &t, &i])
            .await
            .map_err(OpsError::pg("cdc.source_doc"))?;
        let mut rep = CollectionReport {
            collection: coll.clone(),
            entity: e.to_string(),
            source_docs: c.get::<_, i64>(0) as u64,
            mirror_docs: c.get::<_, i64>(1) as u64,
            left_out: c.get::<_, i64>(2) as u64,
            ..CollectionReport::default()
        };
        for r in pg
            .query(DRIFT, &[&e, &t, &i])
            .await
            .map_err(OpsError::pg("cdc.source_doc"))?
        {
            let drift = match r.get::<_, &str>(1) {
                "missing" => {
                    rep.missing += 1;
                    DocDrift::Missing
                }
                "unexpected" => {
                    rep.unexpected += 1;
                    DocDrift::Unexpected
                }
                _ => {
                    rep.differing += 1;
                    DocDrift::Differs
                }
            };
            if rep.docs.len() < max_keys {
                rep.docs.push(DriftedDoc {
                    key: r.get(0),
                    drift,
                    fields: r.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
                });
            }
        }
        out.push(rep);
    }
    Ok(out)
}
