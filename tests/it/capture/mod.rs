//! The capture role against the `mongosim` simulator, a real RabbitMQ vhost and a real
//! PostgreSQL database per test. A test queue bound on the vhost's exchange shows what a
//! consumer of `bowmark.sync` would see. This module is the shared harness.

mod alarm;
mod ddl;
mod events;
mod faults;
mod ha;
mod keys;
mod large;
mod process;
mod unhealing;

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

use crate::support::mongo::TestMongo;
use crate::support::{self, TestDb, TestVhost, eventually};

const WAIT: Duration = Duration::from_secs(30);

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

    /// Insert documents `0..n` into `c`, then expect exactly one event each: `n` distinct
    /// events, and nothing more until `quiet` passes (`what` names the duplicate suspect).
    async fn each_insert_published_once(
        &mut self,
        c: &mongodb::Collection<Document>,
        n: u32,
        quiet: Duration,
        what: &str,
    ) {
        for i in 0..n {
            c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
        }
        let got = self.take(n as usize).await;
        assert!(self.drain(quiet).await.is_empty(), "{what}");
        assert_eq!(
            got.iter()
                .map(|d| &d.event.id)
                .collect::<BTreeSet<_>>()
                .len(),
            n as usize
        );
    }

    async fn delete_queue(&self) {
        self.delete_queue_named(&self.queue.clone()).await;
    }

    /// Delete a queue of the vhost, e.g. the projector's `cdc.projector` that the capture
    /// declares at start (so that only this tap decides what is routable).
    async fn delete_queue_named(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

struct Delivered {
    routing_key: String,
    properties: lapin::BasicProperties,
    event: ChangeEvent,
}

/// MongoDB (simulator or `MONGO_TEST_URI`) + database + vhost for one pipeline.
struct Fixture {
    m: TestMongo,
    mongo: mongodb::Client,
    db: TestDb,
    vhost: TestVhost,
    settings: Settings,
}

impl Fixture {
    async fn new(pipeline: &str) -> Fixture {
        let m = TestMongo::start().await;
        Fixture::with_mongo(m, pipeline, support::migrated_db().await).await
    }

    /// The pipeline tails this test's own MongoDB database.
    async fn with_mongo(m: TestMongo, pipeline: &str, db: TestDb) -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mongo = m.client().clone();
        let vhost = TestVhost::new();
        let mut settings = support::settings(
            support::pipeline(pipeline),
            &db,
            Some(&vhost),
            Some(m.uri()),
        );
        settings.pipeline.capture.max_await_ms = 200;
        settings.pipeline.mongo_database = m.db_name().to_string();
        Fixture {
            m,
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
        // As the daemon builds it: with the re-snapshot of `history_lost = "backfill"`.
        let stage = bowmark_cdc::runtime::capture_stage(&self.settings, health.clone());
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

/// Close the capture's AMQP connections on one vhost (not other tests' connections).
fn close_capture_connections(vhost: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "vhost",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(pid), Some(vh)) = (cols.next(), cols.next()) else {
            continue;
        };
        if vh == vhost && line.contains("bowmark-cdc capture") {
            let r = std::process::Command::new("rabbitmqctl")
                .args([
                    "close_connection",
                    pid,
                    "test: broker closed the connection",
                ])
                .output()
                .expect("rabbitmqctl close_connection");
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            closed += 1;
        }
    }
    assert!(closed > 0, "no capture connection found on {vhost}: {text}");
}

/// A write load: inserts `_id`s `0..n` one at a time, pausing 30 ms every 50 writes.
fn spawn_writer(c: mongodb::Collection<Document>, n: u32) -> JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    })
}

/// Read until, together with `all`, events for `n` distinct documents arrived; add them to `all`.
async fn collect_every_write(tap: &mut Tap, all: &mut Vec<ChangeEvent>, n: u32) {
    let seen: BTreeSet<String> = all.iter().map(|e| e.key.clone()).collect();
    let rest = tap
        .until("every write", |g| {
            let mut keys = seen.clone();
            keys.extend(g.iter().map(|d| d.event.key.clone()));
            keys.len() >= n as usize
        })
        .await;
    all.extend(rest.into_iter().map(|d| d.event));
}

/// Each document keeps one event id across re-deliveries; returns the distinct ids.
fn one_id_per_write(all: &[ChangeEvent]) -> BTreeSet<&str> {
    let mut by_key: BTreeMap<&str, &str> = BTreeMap::new();
    for e in all {
        let prev = by_key.insert(e.key.as_str(), e.id.as_str());
        assert!(prev.is_none_or(|p| p == e.id), "id changed for {}", e.key);
    }
    by_key.into_values().collect()
}
