//! The capture role against the `mongosim` simulator, a real RabbitMQ vhost and a real
//! PostgreSQL database per test. A test queue bound on the vhost's exchange shows what a
//! consumer of `bowmark.sync` would see.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bowmark_cdc::capture::{CaptureError, CaptureStage, ErrorClass};
use bowmark_cdc::config::{HistoryLostPolicy, Settings};
use bowmark_cdc::event::{ChangeEvent, Entity};
use bowmark_cdc::health::{Health, RoleState, Stage};
use bson::{Document, doc, oid::ObjectId};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, ExchangeKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb, TestVhost, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// The `cdc.checkpoint` table as the schema migration defines it.
async fn checkpoint_table(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS cdc;
             CREATE TABLE IF NOT EXISTS cdc.checkpoint (
               pipeline text PRIMARY KEY, resume_token jsonb NOT NULL,
               cluster_time_t bigint, cluster_time_i bigint, event_id text,
               updated_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .expect("checkpoint table");
}

/// A stored checkpoint: (resume token, last event id).
async fn checkpoint(db: &TestDb, pipeline: &str) -> Option<(serde_json::Value, Option<String>)> {
    db.client()
        .await
        .query_opt(
            "SELECT resume_token, event_id FROM cdc.checkpoint WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .expect("read checkpoint")
        .map(|r| (r.get(0), r.get(1)))
}

/// A queue bound on the vhost's exchange (declared as the capture declares it).
struct Tap {
    channel: Channel,
    consumer: Consumer,
    queue: String,
    _conn: lapin::Connection,
}

impl Tap {
    async fn new(vhost: &TestVhost, patterns: &[&str]) -> Tap {
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel
            .exchange_declare(
                "bowmark.sync".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = "test.tap".to_string();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let tap_consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let tap = Tap {
            channel,
            consumer: tap_consumer,
            queue,
            _conn: conn,
        };
        for p in patterns {
            tap.bind(p).await;
        }
        tap
    }

    async fn bind(&self, pattern: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                "bowmark.sync".into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    async fn unbind(&self, pattern: &str) {
        self.channel
            .queue_unbind(
                self.queue.as_str().into(),
                "bowmark.sync".into(),
                pattern.into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Next delivery within `within`, decoded; `None` on timeout.
    async fn next(&mut self, within: Duration) -> Option<Delivered> {
        let d = tokio::time::timeout(within, self.consumer.next())
            .await
            .ok()??
            .expect("delivery");
        let event: ChangeEvent = serde_json::from_slice(&d.data).expect("v1 event JSON");
        Some(Delivered {
            routing_key: d.routing_key.to_string(),
            properties: d.properties.clone(),
            event,
        })
    }

    /// Read until `done` says the collection is complete (or panic after `WAIT`).
    async fn until(&mut self, what: &str, done: impl Fn(&[Delivered]) -> bool) -> Vec<Delivered> {
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while !done(&got) {
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; got {} events",
                got.len()
            );
            if let Some(d) = self.next(Duration::from_millis(500)).await {
                got.push(d);
            }
        }
        got
    }

    async fn take(&mut self, n: usize) -> Vec<Delivered> {
        self.until(&format!("{n} events"), |g| g.len() >= n).await
    }

    /// Everything that arrives until `quiet` passes without a delivery.
    async fn drain(&mut self, quiet: Duration) -> Vec<Delivered> {
        let mut got = Vec::new();
        while let Some(d) = self.next(quiet).await {
            got.push(d);
        }
        got
    }

    async fn delete_queue(&self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

struct Delivered {
    routing_key: String,
    properties: lapin::BasicProperties,
    event: ChangeEvent,
}

/// Simulator + database + vhost for one pipeline.
struct Fixture {
    sim: mongosim::Sim,
    mongo: mongodb::Client,
    db: TestDb,
    vhost: TestVhost,
    settings: Settings,
}

impl Fixture {
    async fn new(pipeline: &str) -> Fixture {
        let sim = mongosim::Sim::start().await;
        Fixture::with_sim(sim, pipeline, TestDb::new().await).await
    }

    async fn with_sim(sim: mongosim::Sim, pipeline: &str, db: TestDb) -> Fixture {
        let mongo = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
        checkpoint_table(&db).await;
        let vhost = TestVhost::new();
        let mut settings = support::settings(
            support::pipeline(pipeline),
            &db,
            Some(&vhost),
            Some(&sim.uri()),
        );
        settings.pipeline.capture.max_await_ms = 200;
        Fixture {
            sim,
            mongo,
            db,
            vhost,
            settings,
        }
    }

    fn coll(&self, name: &str) -> mongodb::Collection<Document> {
        self.mongo
            .database(&self.settings.pipeline.mongo_database)
            .collection(name)
    }

    /// Start a capture and wait until its stream is open (the first checkpoint is stored).
    async fn start(&self) -> Running {
        let r = self.spawn(Health::default());
        self.wait_checkpoint().await;
        r
    }

    fn spawn(&self, health: Health) -> Running {
        let shutdown = CancellationToken::new();
        let stage = CaptureStage::new(self.settings.clone(), health.clone());
        let handle = tokio::spawn(stage.run(shutdown.clone()));
        Running {
            shutdown,
            handle,
            health,
        }
    }

    async fn wait_checkpoint(&self) -> (serde_json::Value, Option<String>) {
        let name = self.settings.pipeline.name.clone();
        eventually("the first checkpoint", WAIT, || checkpoint(&self.db, &name)).await
    }

    async fn checkpoint(&self) -> Option<(serde_json::Value, Option<String>)> {
        checkpoint(&self.db, &self.settings.pipeline.name).await
    }
}

struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), CaptureError>>,
    health: Health,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("capture stops within the deadline")
            .expect("capture task");
        r.expect("graceful stop returns Ok");
    }

    /// Kill without any cleanup of ours (the task is dropped where it stands).
    async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

fn oid(n: u32) -> ObjectId {
    ObjectId::from_bytes([
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        (n >> 24) as u8,
        (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ])
}

/// Version order of event ids `<pipeline>:<t>.<i>.<ordinal>`.
fn version(e: &ChangeEvent) -> (u32, u32, u32) {
    (e.cluster_time.t, e.cluster_time.i, e.ordinal)
}

fn version_of_id(id: &str) -> (u32, u32, u32) {
    let v: Vec<u32> = id
        .rsplit(':')
        .next()
        .unwrap()
        .split('.')
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

#[tokio::test]
async fn golden_events_for_insert_update_replace_delete() {
    // Given a running capture of the paving pipeline and a queue bound `#`
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("employeeworks");
    let id = oid(1);
    // When a document is inserted, updated, replaced and deleted
    c.insert_one(doc! {"_id": id, "hours": 8, "jobTitle": "Operator", "gone": 1})
        .await
        .unwrap();
    c.update_one(
        doc! {"_id": id},
        doc! {"$set": {"hours": 9.5}, "$unset": {"gone": ""}},
    )
    .await
    .unwrap();
    c.replace_one(doc! {"_id": id}, doc! {"hours": 10, "jobTitle": "Foreman"})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": id}).await.unwrap();
    // Then four v1 events arrive, in order, with the contract's fields and properties
    let got = tap.take(4).await;
    let keys: Vec<&str> = got.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "employee_work.created",
            "employee_work.updated",
            "employee_work.updated",
            "employee_work.deleted"
        ]
    );
    let hex = id.to_hex();
    for d in &got {
        let e = &d.event;
        assert_eq!(
            (e.v, e.pipeline.as_str(), e.entity),
            (1, "paving", Entity::EmployeeWork)
        );
        assert_eq!(
            (e.ns.db.as_str(), e.ns.coll.as_str()),
            ("paving", "employeeworks")
        );
        assert_eq!(
            (e.key.as_str(), e.mongo_id.as_str()),
            (hex.as_str(), hex.as_str())
        );
        assert_eq!(
            e.id,
            ChangeEvent::make_id("paving", e.cluster_time, e.ordinal)
        );
        assert_eq!(e.timestamp, e.wall_time);
        assert!(e.resume_token.get("_data").is_some(), "whole _id token");
        let p = &d.properties;
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("bowmark.cdc.v1")
        );
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(e.id.as_str())
        );
        let header = p
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-cdc-cluster-time").cloned())
            .expect("cluster time header");
        assert_eq!(
            header,
            lapin::types::AMQPValue::LongString(e.cluster_time_header().into())
        );
    }
    let (ins, upd, rep, del) = (&got[0].event, &got[1].event, &got[2].event, &got[3].event);
    let doc = ins.doc.as_ref().unwrap();
    assert_eq!(
        doc["_id"],
        serde_json::json!({"$oid": hex}),
        "relaxed extended JSON"
    );
    assert_eq!(doc["hours"], serde_json::json!(8));
    assert_eq!(upd.changed, ["hours"]);
    assert_eq!(upd.removed, ["gone"]);
    assert_eq!(upd.op.as_str(), "update");
    assert_eq!(rep.op.as_str(), "replace");
    assert_eq!(rep.doc.as_ref().unwrap()["jobTitle"], "Foreman");
    assert_eq!(del.doc, None);
    assert!(
        version(ins) < version(upd) && version(upd) < version(rep) && version(rep) < version(del)
    );
    run.stop().await;
}

#[tokio::test]
async fn update_of_a_document_deleted_since_has_null_doc_and_stays_an_update() {
    // Given a capture that is stopped while a document is updated and then deleted
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("employees");
    c.insert_one(doc! {"_id": oid(7), "name": "A"})
        .await
        .unwrap();
    tap.take(1).await;
    run.stop().await;
    c.update_one(doc! {"_id": oid(7)}, doc! {"$set": {"name": "B"}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": oid(7)}).await.unwrap();
    // When the capture resumes from its checkpoint
    let run = fx.start().await;
    let got = tap.take(2).await;
    // Then the update's looked-up document is null, and it is still `updated`
    assert_eq!(got[0].routing_key, "employee.updated");
    assert_eq!(got[0].event.doc, None);
    assert_eq!(got[0].event.changed, ["name"]);
    assert_eq!(got[1].routing_key, "employee.deleted");
    run.stop().await;
}

#[tokio::test]
async fn every_entity_routes_per_pipeline_and_paving_never_reaches_concrete() {
    // Given one MongoDB holding both business lines, and a capture per pipeline
    let sim = mongosim::Sim::start().await;
    let uri = sim.uri();
    let paving = Fixture::with_sim(sim, "paving", TestDb::new().await).await;
    let concrete_sim_db = TestDb::new().await;
    checkpoint_table(&concrete_sim_db).await;
    let concrete_vhost = TestVhost::new();
    let mut concrete = support::settings(
        support::pipeline("concrete"),
        &concrete_sim_db,
        Some(&concrete_vhost),
        Some(&uri),
    );
    concrete.pipeline.capture.max_await_ms = 200;
    let mut ptap = Tap::new(&paving.vhost, &["#"]).await;
    let mut ctap = Tap::new(&concrete_vhost, &["#"]).await;
    let prun = paving.start().await;
    let cshutdown = CancellationToken::new();
    let crun =
        tokio::spawn(CaptureStage::new(concrete.clone(), Health::default()).run(cshutdown.clone()));
    eventually("concrete checkpoint", WAIT, || {
        checkpoint(&concrete_sim_db, "concrete")
    })
    .await;
    // When one document is inserted into every watched collection of paving
    for (i, coll) in paving.settings.pipeline.collections.keys().enumerate() {
        paving
            .coll(coll)
            .insert_one(doc! {"_id": oid(i as u32)})
            .await
            .unwrap();
    }
    let concrete_coll = paving
        .mongo
        .database("concrete")
        .collection::<Document>("crews");
    concrete_coll
        .insert_one(doc! {"_id": oid(99)})
        .await
        .unwrap();
    // Then paving publishes one `<entity>.created` per entity on its vhost only
    let n = paving.settings.pipeline.collections.len();
    let got = ptap.take(n).await;
    let keys: BTreeSet<String> = got.iter().map(|d| d.routing_key.clone()).collect();
    let want: BTreeSet<String> = paving
        .settings
        .pipeline
        .collections
        .values()
        .map(|e| format!("{e}.created"))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(keys.len(), Entity::ALL.len());
    let c = ctap.take(1).await;
    assert_eq!(c[0].routing_key, "crew.created");
    assert_eq!(c[0].event.pipeline, "concrete");
    assert!(
        ctap.drain(Duration::from_secs(1)).await.is_empty(),
        "no paving event on concrete"
    );
    assert!(ptap.drain(Duration::from_millis(500)).await.is_empty());
    // And every concrete entity routes too
    for (i, coll) in concrete.pipeline.collections.keys().enumerate() {
        paving
            .mongo
            .database("concrete")
            .collection::<Document>(coll)
            .insert_one(doc! {"_id": oid(1000 + i as u32)})
            .await
            .unwrap();
    }
    let got = ctap.take(concrete.pipeline.collections.len()).await;
    let keys: BTreeSet<String> = got.iter().map(|d| d.routing_key.clone()).collect();
    assert_eq!(keys.len(), Entity::ALL.len());
    assert!(got.iter().all(|d| d.event.pipeline == "concrete"));
    prun.stop().await;
    cshutdown.cancel();
    crun.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_burst_arrives_completely_and_in_order() {
    // Given a running capture
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    // When 1,500 documents are written in one burst (one bulk insert)
    let n = 1500u32;
    let docs: Vec<Document> = (0..n).map(|i| doc! {"_id": oid(i), "i": i}).collect();
    fx.coll("vehicleworks").insert_many(docs).await.unwrap();
    // Then all arrive, each once, in stream (version) order
    let got = tap.take(n as usize).await;
    let keys: Vec<String> = got.iter().map(|d| d.event.key.clone()).collect();
    let want: Vec<String> = (0..n).map(|i| oid(i).to_hex()).collect();
    assert_eq!(keys, want);
    assert!(
        got.windows(2)
            .all(|w| version(&w[0].event) < version(&w[1].event))
    );
    run.stop().await;
    // And the stored checkpoint covers the last one after a graceful stop
    let (_, last) = fx.checkpoint().await.unwrap();
    assert_eq!(last.as_deref(), Some(got.last().unwrap().event.id.as_str()));
}
