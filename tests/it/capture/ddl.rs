//! Drops, renames and `$out` that touch a watched collection: never silence. Under
//! `history_lost = "fail"` the capture stops with an explained error (and a restart meets the
//! same change again: the checkpoint stays before it); under `"backfill"` it re-snapshots, the
//! mirror converges on MongoDB and the stream goes on after the change.

use std::collections::BTreeSet;

use bowmark_cdc::backfill::{BackfillOptions, ProgressMode, run_backfill};
use bowmark_cdc::event::mongo_key;
use futures_util::TryStreamExt;

use super::*;

/// What is done to the database while the capture tails it.
#[derive(Clone, Copy, Debug)]
enum Ddl {
    /// `staging` (unwatched) renamed to `materials` (watched, new).
    RenameIn,
    /// `crews` (watched) renamed to `crews_old` (unwatched).
    RenameOut,
    /// `staging` renamed onto `crews` with `dropTarget`.
    RenameOnto,
    /// An aggregation on `staging` with `$out: "crews"`.
    Out,
    /// `crews` dropped.
    Drop,
}

impl Ddl {
    async fn apply(self, fx: &Fixture) {
        let db = fx.m.db_name().to_string();
        let rename = |from: &str, to: &str, drop_target: bool| {
            doc! {"renameCollection": format!("{db}.{from}"), "to": format!("{db}.{to}"),
            "dropTarget": drop_target}
        };
        let admin = fx.mongo.database("admin");
        match self {
            Ddl::RenameIn => {
                admin
                    .run_command(rename("staging", "materials", false))
                    .await
                    .unwrap();
            }
            Ddl::RenameOut => {
                admin
                    .run_command(rename("crews", "crews_old", false))
                    .await
                    .unwrap();
            }
            Ddl::RenameOnto => {
                admin
                    .run_command(rename("staging", "crews", true))
                    .await
                    .unwrap();
            }
            Ddl::Out => {
                let out: Vec<Document> = fx
                    .coll("staging")
                    .aggregate([doc! {"$match": {}}, doc! {"$out": "crews"}])
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                assert!(out.is_empty());
            }
            Ddl::Drop => fx.coll("crews").drop().await.unwrap(),
        }
    }

    /// What the stop message must name.
    fn named(self) -> &'static [&'static str] {
        match self {
            Ddl::RenameIn => &["`rename`", ".staging", ".materials"],
            Ddl::RenameOut => &["`rename`", ".crews", ".crews_old"],
            Ddl::RenameOnto => &["`rename`", ".staging", ".crews"],
            Ddl::Out => &["`rename`", ".tmp.agg_out.", ".crews", "$out"],
            Ddl::Drop => &["`drop`", ".crews"],
        }
    }
}

/// Live mirror keys of `entity`.
async fn mirror_keys(fx: &Fixture, entity: &str) -> BTreeSet<String> {
    fx.db
        .client()
        .await
        .query(
            "SELECT key FROM cdc.source_doc WHERE entity = $1 AND NOT deleted",
            &[&entity],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The mirror keys MongoDB's collection `coll` stands for now.
async fn source_keys(fx: &Fixture, coll: &str) -> BTreeSet<String> {
    let docs: Vec<Document> = fx
        .coll(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| mongo_key(d.get("_id").unwrap()))
        .collect()
}

async fn mirror_equals_source(fx: &Fixture) -> Option<()> {
    for (entity, coll) in [
        ("crew", "crews"),
        ("material", "materials"),
        ("jobsite", "jobsites"),
    ] {
        if mirror_keys(fx, entity).await != source_keys(fx, coll).await {
            return None;
        }
    }
    Some(())
}

async fn backfill(fx: &Fixture) {
    let opts = BackfillOptions {
        restart: true,
        progress: ProgressMode::Log,
        ..BackfillOptions::default()
    };
    run_backfill(&fx.settings, opts)
        .await
        .expect("initial backfill");
}

async fn scenario(ddl: Ddl) {
    // Given watched `crews` and `jobsites`, an unwatched `staging`, all in the mirror, and a
    // capture tailing under history_lost = "fail"
    let mut fx = Fixture::new("paving").await;
    let crews: Vec<Document> = (1..=3)
        .map(|i| doc! {"_id": oid(i), "name": format!("C{i}")})
        .collect();
    fx.coll("crews").insert_many(crews).await.unwrap();
    fx.coll("jobsites")
        .insert_one(doc! {"_id": oid(50), "name": "J"})
        .await
        .unwrap();
    let staging: Vec<Document> = (100..102)
        .map(|i| doc! {"_id": oid(i), "name": format!("S{i}")})
        .collect();
    fx.coll("staging").insert_many(staging).await.unwrap();
    backfill(&fx).await;
    assert_eq!(mirror_keys(&fx, "crew").await.len(), 3);
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    // When the collection is dropped, renamed or replaced
    ddl.apply(&fx).await;
    // Then the capture stops with an error naming the operation, the namespaces and the way out
    let err = tokio::time::timeout(WAIT, run.handle)
        .await
        .unwrap_or_else(|_| panic!("{ddl:?}: the capture stops instead of going on silently"))
        .unwrap()
        .expect_err("a stop is an error");
    assert_eq!(err.class(), ErrorClass::Fatal);
    let msg = err.to_string();
    for part in ddl.named() {
        assert!(msg.contains(part), "{ddl:?}: {part} missing in: {msg}");
    }
    assert!(
        msg.contains("bowmark-cdc backfill --pipeline") && msg.contains("--restart"),
        "{msg}"
    );
    assert!(
        mirror_equals_source(&fx).await.is_none(),
        "{ddl:?}: the mirror is stale"
    );
    // When it is restarted under history_lost = "backfill"
    fx.settings.pipeline.history_lost = HistoryLostPolicy::Backfill;
    let run = fx.spawn(Health::default());
    // Then it meets the same change (its checkpoint stayed before it), re-snapshots, and the
    // mirror equals MongoDB
    eventually("the mirror equal to MongoDB", WAIT, || {
        mirror_equals_source(&fx)
    })
    .await;
    // And it streams on after the change
    fx.coll("jobsites")
        .insert_one(doc! {"_id": oid(51), "name": "After"})
        .await
        .unwrap();
    let want = oid(51).to_hex();
    tap.until("the write after the re-snapshot", |g| {
        g.iter().any(|d| d.event.key == want)
    })
    .await;
    assert!(
        !run.handle.is_finished(),
        "{ddl:?}: the capture is still running"
    );
    run.stop().await;
}

#[tokio::test]
async fn renaming_an_unwatched_collection_to_a_watched_name_stops_or_resnapshots() {
    scenario(Ddl::RenameIn).await;
}

#[tokio::test]
async fn renaming_a_watched_collection_away_stops_or_resnapshots() {
    scenario(Ddl::RenameOut).await;
}

#[tokio::test]
async fn renaming_onto_a_watched_collection_with_drop_target_stops_or_resnapshots() {
    scenario(Ddl::RenameOnto).await;
}

#[tokio::test]
async fn an_out_aggregation_onto_a_watched_collection_stops_or_resnapshots() {
    scenario(Ddl::Out).await;
}

#[tokio::test]
async fn dropping_a_watched_collection_stops_or_resnapshots() {
    scenario(Ddl::Drop).await;
}
