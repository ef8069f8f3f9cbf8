//! Backfill from a live MongoDB (the simulator, or `MONGO_TEST_URI`): a generated workload,
//! the change-stream handoff, and documents deleted before the scan.

use std::time::Duration;

use bowmark_cdc::backfill::{BackfillOptions, CheckpointOutcome, ProgressMode, run_backfill};
use bowmark_cdc::config::{Pipeline, Settings};
use bson::{Bson, Document, doc};
use futures_util::StreamExt;
use mongodb::change_stream::event::ResumeToken;

use super::workload::{Shape, Workload};
use super::{count, temp_pipeline};
use crate::support::mongo::TestMongo;
use crate::support::{self, TestDb};

fn settings(m: &TestMongo, db: &TestDb, chunk: usize) -> (Settings, super::TempPipeline) {
    let tp = temp_pipeline("paving", Some(m.db_name()), Some(chunk));
    let p = Pipeline::load(&tp.path).expect("pipeline");
    (support::settings(p, db, None, Some(m.uri())), tp)
}

fn opts() -> BackfillOptions {
    BackfillOptions {
        progress: ProgressMode::Log,
        ..BackfillOptions::default()
    }
}

/// The cluster time now, as (t, i).
async fn now(m: &TestMongo) -> (i64, i64) {
    let r = m.db().run_command(doc! {"ping": 1}).await.expect("ping");
    let ts = r.get_timestamp("operationTime").expect("operationTime");
    (i64::from(ts.time), i64::from(ts.increment))
}

async fn checkpoint(c: &tokio_postgres::Client) -> (serde_json::Value, i64, i64) {
    let r = c
        .query_one(
            "SELECT resume_token, cluster_time_t, cluster_time_i FROM cdc.checkpoint \
             WHERE pipeline = 'paving'",
            &[],
        )
        .await
        .expect("a capture checkpoint");
    (r.get(0), r.get(1), r.get(2))
}

/// Given a generated Bow-Mark workload in MongoDB, when it is backfilled from the live source,
/// then every report, child, invoice and dimension has its star row and the capture checkpoint
/// holds the position recorded before the scan.
#[tokio::test]
async fn a_live_backfill_projects_a_generated_workload_and_hands_off_the_pre_scan_position() {
    let m = TestMongo::start().await;
    let w = Workload::generate(7, Shape::small(12));
    w.insert(&m.db()).await.expect("insert workload");
    let before = now(&m).await;
    let db = support::migrated_db().await;
    let (s, _tp) = settings(&m, &db, 7);
    let summary = run_backfill(&s, opts()).await.expect("backfill");
    let c = db.client().await;

    for (table, want) in [
        ("dim_company", w.count("companies")),
        // (and a placeholder row for each deleted crew a report still names)
        ("dim_crew", w.count("crews") + w.gone_crews),
        ("dim_employee", w.count("employees")),
        ("dim_vehicle", w.count("vehicles")),
        ("dim_jobsite", w.count("jobsites")),
        ("dim_material", w.count("materials")),
        ("dim_jobsite_material", w.count("jobsiteMaterials")),
        ("dim_daily_report", w.count("dailyreports")),
        ("fact_employee_work", w.count("employeeworks")),
        ("fact_vehicle_work", w.count("vehicleworks")),
        ("fact_production", w.count("productions")),
        ("fact_invoice", w.linked_invoices()),
        (
            "fact_material_shipment",
            w.shipments(|d| !d.get_bool("noJobsiteMaterial").unwrap_or(false)),
        ),
        (
            "fact_non_costed_material",
            w.shipments(|d| d.get_bool("noJobsiteMaterial").unwrap_or(false)),
        ),
        (
            "fact_trucking",
            w.shipments(|d| {
                d.get_document("vehicleObject")
                    .is_ok_and(|v| v.contains_key("truckingRateId"))
            }),
        ),
    ] {
        let got = count(&c, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(got, want as i64, "{table}");
    }
    let read: u64 = summary.collections.iter().map(|c| c.read).sum();
    assert_eq!(read as usize, w.len());

    let (token, t, i) = checkpoint(&c).await;
    assert!(
        (t, i) >= before,
        "checkpoint {t}.{i} is before the workload ended {before:?}"
    );
    let run_token: serde_json::Value = c
        .query_one("SELECT resume_token FROM cdc.backfill_run", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(token, run_token);
    assert!(
        matches!(summary.checkpoint, CheckpointOutcome::Stored(_)),
        "{:?}",
        summary.checkpoint
    );
    // Every star row is derived by this binary's projection rules, and `status` can say so.
    let rules: i32 = c
        .query_one(
            "SELECT version FROM cdc.projection_rules WHERE pipeline = 'paving'",
            &[],
        )
        .await
        .expect("a complete backfill records the projection rules version")
        .get(0);
    assert_eq!(rules, bowmark_cdc::project::RULES_VERSION);
}

/// Given writes made while a live backfill runs, then the stored capture checkpoint precedes
/// them: a change stream resumed from it delivers every one of them (no gap at the handoff).
#[tokio::test]
async fn writes_made_during_the_scan_are_after_the_stored_position() {
    let m = TestMongo::start().await;
    let w = Workload::generate(11, Shape::small(30));
    w.insert(&m.db()).await.expect("insert workload");
    let db = support::migrated_db().await;
    let c = db.client().await;
    let (s, _tp) = settings(&m, &db, 5);
    let task = tokio::spawn(async move { run_backfill(&s, opts()).await });
    support::eventually("position recorded", Duration::from_secs(30), || async {
        (count(&c, "SELECT count(*) FROM cdc.backfill_run").await > 0).then_some(())
    })
    .await;
    let employee = w.collections["employees"][0].get_object_id("_id").unwrap();
    let invoice = w.collections["invoices"][0].get_object_id("_id").unwrap();
    let mdb = m.db();
    mdb.collection::<Document>("employees")
        .update_one(
            doc! {"_id": employee},
            doc! {"$set": {"name": "Renamed during scan"}},
        )
        .await
        .unwrap();
    mdb.collection::<Document>("crews")
        .insert_one(doc! {"name": "Crew added during scan", "type": "Tech"})
        .await
        .unwrap();
    mdb.collection::<Document>("invoices")
        .delete_one(doc! {"_id": invoice})
        .await
        .unwrap();
    let summary = task.await.unwrap().expect("backfill");
    assert!(matches!(summary.checkpoint, CheckpointOutcome::Stored(_)));

    let (token, _, _) = checkpoint(&c).await;
    let token: ResumeToken =
        bson::deserialize_from_bson(Bson::try_from(token).unwrap()).expect("resume token");
    let mut stream = m
        .db()
        .watch()
        .resume_after(token)
        .max_await_time(Duration::from_millis(200))
        .await
        .expect("resume from the stored checkpoint");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
            Ok(Some(Ok(ev))) => {
                let coll = ev.ns.and_then(|n| n.coll).unwrap_or_default();
                seen.push(format!("{:?} {coll}", ev.operation_type));
            }
            Ok(Some(Err(e))) => panic!("stream: {e}"),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["Update employees", "Insert crews", "Delete invoices"],
        "a stream resumed from the checkpoint must deliver every write made during the scan"
    );
}

/// Given a mirror holding a document that was deleted in MongoDB while no capture ran (lost
/// history), when the pipeline is backfilled again from the live source, then the document is
/// marked deleted in the mirror and its star row goes as a streamed delete would take it.
#[tokio::test]
async fn a_live_backfill_marks_mirror_documents_deleted_that_mongo_no_longer_has() {
    let m = TestMongo::start().await;
    let w = Workload::generate(3, Shape::small(4));
    w.insert(&m.db()).await.expect("insert workload");
    let db = support::migrated_db().await;
    let (s, _tp) = settings(&m, &db, 50);
    run_backfill(&s, opts()).await.expect("first backfill");
    let gone = w.collections["invoices"][0].get_object_id("_id").unwrap();
    m.db()
        .collection::<Document>("invoices")
        .delete_one(doc! {"_id": gone})
        .await
        .unwrap();
    let summary = run_backfill(&s, opts()).await.expect("second backfill");
    let inv = summary
        .collections
        .iter()
        .find(|c| c.collection == "invoices")
        .unwrap();
    assert_eq!(inv.vanished, 1, "{summary}");
    let c = db.client().await;
    let deleted: bool = c
        .query_one(
            "SELECT deleted FROM cdc.source_doc WHERE entity = 'invoice' AND key = $1",
            &[&gone.to_hex()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(deleted);
    assert_eq!(
        count(
            &c,
            &format!(
                "SELECT count(*) FROM fact_invoice WHERE mongo_id = '{}'",
                gone.to_hex()
            )
        )
        .await,
        0,
        "the deleted invoice's fact is gone (invoices are hard-deleted)"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM fact_invoice").await,
        w.linked_invoices() as i64 - 1
    );
}

/// Crews whose `_id`s mix the BSON types a server orders by type class: numbers (int32,
/// int64, double) first, then strings, then ObjectIds.
async fn mixed_id_crews(m: &TestMongo) -> Vec<String> {
    let ids: Vec<Bson> = vec![
        Bson::Int32(3),
        Bson::Int64(1),
        Bson::Double(2.5),
        Bson::String("b".into()),
        Bson::String("a".into()),
        Bson::String("c".into()),
        Bson::ObjectId(bson::oid::ObjectId::new()),
        Bson::ObjectId(bson::oid::ObjectId::new()),
        Bson::ObjectId(bson::oid::ObjectId::new()),
    ];
    let docs: Vec<Document> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| doc! {"_id": id.clone(), "name": format!("Crew {i}"), "type": "Base"})
        .collect();
    m.db()
        .collection::<Document>("crews")
        .insert_many(docs)
        .await
        .expect("insert crews");
    let mut names: Vec<String> = (0..ids.len()).map(|i| format!("Crew {i}")).collect();
    names.sort();
    names
}

/// The crews in the reporting table, by name.
async fn crew_names(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT name FROM dim_crew ORDER BY name", &[])
        .await
        .expect("dim_crew")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Given a collection whose `_id`s are numbers, strings and ObjectIds, when it is backfilled
/// from the live source in chunks smaller than each type's share, then every document reaches
/// the reporting table (a scan paged with `$gt` alone stops after the numbers).
#[tokio::test]
async fn a_live_backfill_loads_every_document_of_a_collection_with_mixed_id_types() {
    let m = TestMongo::start().await;
    let want = mixed_id_crews(&m).await;
    let db = support::migrated_db().await;
    let (s, _tp) = settings(&m, &db, 2);
    let summary = run_backfill(&s, opts()).await.expect("backfill");
    let crews = summary
        .collections
        .iter()
        .find(|c| c.collection == "crews")
        .unwrap();
    assert_eq!((crews.read, crews.done), (9, 9), "{summary}");
    assert_eq!(crew_names(&db.client().await).await, want);
}

/// Given a mirror holding every document of a collection with mixed `_id` types, when the
/// collection is backfilled again in small chunks, then it reads every document again and
/// marks none of them deleted: the reporting table keeps every crew.
#[tokio::test]
async fn a_live_backfill_of_mixed_id_types_marks_none_deleted_that_mongo_still_has() {
    let m = TestMongo::start().await;
    let want = mixed_id_crews(&m).await;
    let db = support::migrated_db().await;
    // One chunk holds the whole collection: the first load does not depend on paging.
    let (whole, _tp) = settings(&m, &db, 100);
    run_backfill(&whole, opts()).await.expect("first backfill");
    let c = db.client().await;
    assert_eq!(crew_names(&c).await, want);
    let (paged, _tp2) = settings(&m, &db, 2);
    let summary = run_backfill(&paged, opts()).await.expect("second backfill");
    let crews = summary
        .collections
        .iter()
        .find(|c| c.collection == "crews")
        .unwrap();
    assert_eq!(crews.vanished, 0, "{summary}");
    assert_eq!(crews.read, 9, "{summary}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM cdc.source_doc WHERE entity = 'crew' AND deleted"
        )
        .await,
        0
    );
    assert_eq!(crew_names(&c).await, want, "every crew is still reported");
}
