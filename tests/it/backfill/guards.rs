//! The start guards a user meets through the binary when the source is not the one meant:
//! a `MONGO_URI` naming another database than the pipeline file, a database or dump folder
//! holding none of the watched collections (for the backfill and the capture alike), and a
//! backfill that would mark most of the mirror deleted.

use std::time::{Duration, Instant};

use bson::{Document, doc};

use super::workload::{Shape, Workload};
use super::{assert_success, count, run_cli, temp_pipeline, text};
use crate::support::mongo::TestMongo;
use crate::support::{self, TestDb, TestVhost};

/// `bowmark-cdc backfill --pipeline <file> <args>` to completion, off the test's runtime (the
/// simulator serves MongoDB from it meanwhile).
async fn backfill(
    db: &TestDb,
    pipeline: &std::path::Path,
    mongo_uri: &str,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = support::cdc_bin();
    cmd.arg("backfill")
        .arg("--pipeline")
        .arg(pipeline)
        .args(args)
        .envs(support::child_env(db, None, Some(mongo_uri)));
    tokio::task::spawn_blocking(move || cmd.output().expect("run bowmark-cdc backfill"))
        .await
        .unwrap()
}

/// `uri` with `database` as its path (`mongodb://host/<database>?…`), as production's
/// `mongoURI` holds it.
fn with_database(uri: &str, database: &str) -> String {
    match uri.split_once("/?") {
        Some((hosts, query)) => format!("{hosts}/{database}?{query}"),
        None => format!("{}/{database}", uri.trim_end_matches('/')),
    }
}

/// A MongoDB database that holds one collection, none the pipeline watches ("sessions").
async fn unwatched_database() -> TestMongo {
    let m = TestMongo::start().await;
    m.db()
        .collection::<Document>("sessions")
        .insert_one(doc! {"user": "x"})
        .await
        .unwrap();
    m
}

/// Given a `MONGO_URI` that names a database, when the pipeline file's `mongo.database`
/// agrees, then the backfill reads it; when it names another one, then the binary refuses to
/// start (configuration error, exit 2) naming both values.
#[tokio::test]
async fn the_database_in_mongo_uri_is_used_and_must_agree_with_the_pipeline_file() {
    let m = TestMongo::start().await;
    m.db()
        .collection::<Document>("crews")
        .insert_one(doc! {"_id": 1, "name": "Base crew", "type": "Base"})
        .await
        .unwrap();
    let db = support::migrated_db().await;
    let tp = temp_pipeline("paving", Some(m.db_name()), None);
    let agreeing = with_database(m.uri(), m.db_name());
    let out = backfill(&db, &tp.path, &agreeing, &[]).await;
    assert_success(&out);
    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM dim_crew").await, 1);

    let other = with_database(m.uri(), "bowmark_paving");
    let out = backfill(&db, &tp.path, &other, &["--restart"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mongo.database"), "{stderr}");
    assert!(
        stderr.contains(&format!("{:?}", m.db_name())) && stderr.contains("\"bowmark_paving\""),
        "names both databases: {stderr}"
    );
}

/// Given a MongoDB database that holds none of the watched collections (a wrong database
/// name), when it is backfilled, then the run stops naming the database, the watched
/// collections and what the database holds, and writes nothing.
#[tokio::test]
async fn a_live_backfill_of_a_database_without_the_watched_collections_stops_and_writes_nothing() {
    let m = unwatched_database().await;
    let db = support::migrated_db().await;
    let tp = temp_pipeline("paving", Some(m.db_name()), None);
    let out = backfill(&db, &tp.path, m.uri(), &[]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(m.db_name()), "names the database: {stderr}");
    assert!(
        stderr.contains("holds none of the collections") && stderr.contains("dailyreports"),
        "names the watched collections: {stderr}"
    );
    assert!(stderr.contains("sessions"), "says what it holds: {stderr}");
    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM cdc.backfill_run").await, 0);
}

/// Given mongodump's output one folder too high (`OUT/dump/<database>/*.bson` given as
/// `OUT`), when it is backfilled, then the run stops naming the folder and the watched
/// collections, says which folders it found, and writes nothing.
#[tokio::test]
async fn a_dump_folder_one_level_too_high_stops_and_writes_nothing() {
    let out_dir = tempfile::tempdir().unwrap();
    Workload::generate(5, Shape::small(2))
        .write_dump(&out_dir.path().join("dump").join("paving"))
        .unwrap();
    let db = support::migrated_db().await;
    let pipeline = support::project_root().join("pipeline/paving.toml");
    let given = out_dir.path().to_str().unwrap();
    let out = run_cli(&db, &pipeline, None, &["--from-dump", given]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(given), "names the folder: {stderr}");
    assert!(stderr.contains("holds none of the collections"), "{stderr}");
    assert!(
        stderr.contains("folders dump"),
        "says what it holds: {stderr}"
    );
    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM cdc.backfill_run").await, 0);
    assert_eq!(count(&c, "SELECT count(*) FROM cdc.source_doc").await, 0);
}

/// Given a mirror loaded from MongoDB, when every collection has been emptied (the collections
/// still exist) and the pipeline is backfilled again, then the run stops before writing
/// anything and says why; with `--allow-deletes` it marks the documents deleted.
#[tokio::test]
async fn a_backfill_that_would_mark_the_mirror_deleted_stops_unless_deletes_are_allowed() {
    let m = TestMongo::start().await;
    let w = Workload::generate(11, Shape::small(4));
    w.insert(&m.db()).await.expect("insert workload");
    let db = support::migrated_db().await;
    let tp = temp_pipeline("paving", Some(m.db_name()), None);
    assert_success(&backfill(&db, &tp.path, m.uri(), &[]).await);
    let c = db.client().await;
    let invoices = count(&c, "SELECT count(*) FROM fact_invoice").await;
    assert!(invoices > 0);
    let live = "SELECT count(*) FROM cdc.source_doc WHERE NOT deleted";
    let mirrored = count(&c, live).await;
    let run_started = "SELECT started_at::text FROM cdc.backfill_run WHERE pipeline = 'paving'";
    let first_run: String = c.query_one(run_started, &[]).await.unwrap().get(0);
    for coll in w.collections.keys() {
        m.db()
            .collection::<Document>(coll)
            .delete_many(doc! {})
            .await
            .unwrap();
    }

    let out = backfill(&db, &tp.path, m.uri(), &[]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("refusing to mark {mirrored} of the {mirrored}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("invoices: "),
        "counts per collection: {stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(stderr.contains("--allow-deletes"), "{stderr}");
    assert_eq!(
        count(&c, live).await,
        mirrored,
        "no document marked deleted"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM fact_invoice").await,
        invoices
    );
    let run_now: String = c.query_one(run_started, &[]).await.unwrap().get(0);
    assert_eq!(run_now, first_run, "no new run recorded");

    let out = backfill(&db, &tp.path, m.uri(), &["--allow-deletes"]).await;
    assert_success(&out);
    assert_eq!(count(&c, live).await, 0, "{}", text(&out.stdout));
    assert_eq!(count(&c, "SELECT count(*) FROM fact_invoice").await, 0);
}

/// Given a MongoDB database that holds none of the watched collections, when the daemon is
/// started with the capture, then it exits non-zero at start naming the database and the
/// collections instead of tailing nothing.
#[tokio::test]
async fn the_capture_refuses_to_start_on_a_database_without_the_watched_collections() {
    let m = unwatched_database().await;
    let db = support::migrated_db().await;
    let vhost = TestVhost::new();
    let tp = temp_pipeline("paving", Some(m.db_name()), None);
    let mut child = support::cdc_bin()
        .args(["run", "--role", "capture", "--pipeline"])
        .arg(&tp.path)
        .envs(support::child_env(&db, Some(&vhost), Some(m.uri())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bowmark-cdc run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon kept running on a database without the watched collections");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(m.db_name()), "names the database: {stderr}");
    assert!(
        stderr.contains("holds none of the collections") && stderr.contains("dailyreports"),
        "names the watched collections: {stderr}"
    );
    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM cdc.checkpoint").await, 0);
}

/// Given a mirror loaded from MongoDB, when every document has been replaced by one with a
/// new `_id` (as many documents as before, so the counts look right) and the pipeline is
/// backfilled again, then the run stops before marking more than a tenth of the mirror
/// deleted and says why; the same run continued with `--allow-deletes` completes.
#[tokio::test]
async fn a_backfill_whose_source_ids_all_changed_stops_before_its_tombstones_exceed_a_tenth() {
    let m = TestMongo::start().await;
    let w = Workload::generate(13, Shape::small(4));
    w.insert(&m.db()).await.expect("insert workload");
    let db = support::migrated_db().await;
    let tp = temp_pipeline("paving", Some(m.db_name()), None);
    assert_success(&backfill(&db, &tp.path, m.uri(), &[]).await);
    let c = db.client().await;
    let live = "SELECT count(*) FROM cdc.source_doc WHERE NOT deleted";
    let mirrored = count(&c, live).await;
    for (coll, docs) in &w.collections {
        let coll = m.db().collection::<Document>(coll);
        coll.delete_many(doc! {}).await.unwrap();
        let renewed: Vec<Document> = docs
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.insert("_id", bson::oid::ObjectId::new());
                d
            })
            .collect();
        coll.insert_many(renewed).await.unwrap();
    }

    let out = backfill(&db, &tp.path, m.uri(), &[]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to mark"), "{stderr}");
    assert!(
        stderr.contains("the collection stays unfinished"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-deletes"), "{stderr}");
    let deleted = count(&c, "SELECT count(*) FROM cdc.source_doc WHERE deleted").await;
    assert!(
        deleted * 10 <= mirrored,
        "{deleted} of {mirrored} mirror documents marked deleted"
    );

    let out = backfill(&db, &tp.path, m.uri(), &["--allow-deletes"]).await;
    assert_success(&out);
    assert_eq!(
        count(&c, "SELECT count(*) FROM cdc.source_doc WHERE deleted").await,
        mirrored,
        "every replaced document is marked deleted: {}",
        text(&out.stdout)
    );
    assert_eq!(count(&c, live).await, mirrored, "and every new one loaded");
}
