//! The operator commands as operators run them: `reproject`, `status` and `dlq` against a private
//! database and vhost, with the real daemon (`run --role project`) consuming beside them.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use bowmark_cdc::checkpoint::{Checkpoint, CheckpointStore};
use bowmark_cdc::event::{CONTENT_TYPE, ChangeEvent, EVENT_TYPE, Entity, Op};
use bowmark_cdc::projector::dlq;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use serde_json::json;

use crate::project::Harness;
use crate::project::law::{compare, star_of};
use crate::project::seed::{self, Seed, VEHICLE_WORK_1, oid};
use crate::support::{self, eventually};

const WAIT: Duration = Duration::from_secs(60);
const PIPELINE: &str = "pipeline/paving.toml";

/// The projector tests' rig (a migrated database, a vhost with the topology, a publisher) and
/// the daemon consuming.
struct Rig {
    base: crate::projector::Rig,
    daemon: Child,
}

impl std::ops::Deref for Rig {
    type Target = crate::projector::Rig;
    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Rig {
    async fn new() -> Rig {
        let base = crate::projector::Rig::new().await;
        let mut daemon = support::cdc_bin()
            .args(["run", "--pipeline", PIPELINE, "--role", "project"])
            .envs(support::child_env(&base.db, Some(&base.vhost), None))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bowmark-cdc run");
        let tail = support::StderrTail::start(&mut daemon);
        let addr = tail.http_addr();
        eventually("/readyz to answer 200", WAIT, || async {
            (support::http_get(addr, "/readyz").await.0 == 200).then_some(())
        })
        .await;
        Rig { base, daemon }
    }

    /// Publish to `exchange` with `routing_key` and wait for the confirm.
    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let c = self
            .ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            matches!(c, Confirmation::Ack(None)),
            "publish not confirmed"
        );
    }

    fn event_props(id: &str) -> BasicProperties {
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_type(EVENT_TYPE.into())
            .with_message_id(id.into())
    }

    async fn dlq_depth(&self) -> u32 {
        self.depth(&self.pipeline.dead_letter_queue).await
    }

    /// Run `bowmark-cdc ARGS --pipeline pipeline/paving.toml` against this rig.
    fn cdc(&self, args: &[&str]) -> Output {
        support::cdc_bin()
            .args(args)
            .args(["--pipeline", PIPELINE])
            .envs(support::child_env(&self.db, Some(&self.vhost), None))
            .output()
            .expect("run bowmark-cdc")
    }

    /// A capture checkpoint written now (as a live capture keeps doing).
    async fn fresh_checkpoint(&self) {
        CheckpointStore::new(&self.pg)
            .save(
                &self.pipeline.name,
                &Checkpoint {
                    resume_token: json!({ "_data": "8263A1" }),
                    cluster_time: Some(bowmark_cdc::event::ClusterTime {
                        t: 1_700_000_000,
                        i: 1,
                    }),
                    event_id: None,
                },
            )
            .await
            .expect("save checkpoint");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn company(key: &str, name: &str, t: u32) -> ChangeEvent {
    seed::event(
        "paving",
        Entity::Company,
        key,
        Op::Insert,
        Some(json!({ "_id": oid(key), "name": name })),
        t,
    )
}

async fn vehicle_hours(pg: &tokio_postgres::Client) -> Option<String> {
    pg.query_opt(
        "SELECT hours::text FROM fact_vehicle_work WHERE mongo_id = $1",
        &[&VEHICLE_WORK_1],
    )
    .await
    .expect("fact_vehicle_work")
    .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproject_beside_the_daemon_repairs_a_row_changed_behind_its_back_and_equals_a_fresh_projection()
 {
    // Given the legacy seed streamed through the running daemon
    let rig = Rig::new().await;
    rig.publish(&Seed::legacy().events("paving", 2000)).await;
    let hours = eventually("the seed's vehicle work", WAIT, || async {
        vehicle_hours(&rig.pg).await
    })
    .await;
    eventually("an empty projector queue", WAIT, || async {
        (rig.depth(&rig.pipeline.queue).await == 0).then_some(())
    })
    .await;

    // And a fact's hours changed behind the daemon's back
    rig.pg
        .execute(
            "UPDATE fact_vehicle_work SET hours = hours + 100 WHERE mongo_id = $1",
            &[&VEHICLE_WORK_1],
        )
        .await
        .expect("tamper");
    assert_ne!(
        vehicle_hours(&rig.pg).await.as_deref(),
        Some(hours.as_str())
    );

    // When an operator reprojects while the daemon runs
    let out = tokio::task::block_in_place(|| rig.cdc(&["reproject"]));

    // Then it succeeds with a summary of rows by table, the hours are back, the rules version
    // is recorded, and the star equals a fresh projection of the same documents
    assert!(out.status.success(), "{}", explain(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("reproject paving: every star table"),
        "{text}"
    );
    assert!(text.contains("fact_vehicle_work"), "{text}");
    assert!(
        text.contains("projection rules version 2 recorded"),
        "{text}"
    );
    assert_eq!(vehicle_hours(&rig.pg).await, Some(hours));
    let version: i32 = rig
        .pg
        .query_one(
            "SELECT version FROM cdc.projection_rules WHERE pipeline = 'paving'",
            &[],
        )
        .await
        .expect("rules row")
        .get(0);
    assert_eq!(version, bowmark_cdc::project::RULES_VERSION);
    let mut fresh = Harness::new().await;
    fresh.seed().await;
    compare(&star_of(&rig.pg).await, &star_of(&fresh.client).await)
        .expect("the reprojected star equals a fresh projection");

    // And `--tables` rebuilds only what it is asked for, without recording the rules
    rig.pg
        .execute(
            "UPDATE fact_vehicle_work SET hours = hours + 7 WHERE mongo_id = $1",
            &[&VEHICLE_WORK_1],
        )
        .await
        .expect("tamper");
    let out =
        tokio::task::block_in_place(|| rig.cdc(&["reproject", "--tables", "fact_vehicle_work"]));
    assert!(out.status.success(), "{}", explain(&out));
    let text = stdout(&out);
    assert!(text.contains("documents of vehicle_work"), "{text}");
    assert!(text.contains("not recorded"), "{text}");
    assert!(!text.contains("dim_employee"), "{text}");
    compare(&star_of(&rig.pg).await, &star_of(&fresh.client).await)
        .expect("the reprojected star equals a fresh projection");
    let out = tokio::task::block_in_place(|| rig.cdc(&["reproject", "--tables", "fact_nope"]));
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown star table \"fact_nope\""));
}

fn status(rig: &Rig) -> (Option<i32>, String) {
    let out = tokio::task::block_in_place(|| rig.cdc(&["status"]));
    (
        out.status.code(),
        format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_healthy_and_names_dead_letters_quarantine_stale_checkpoints_and_old_rules() {
    // Given the daemon consuming, a fresh capture checkpoint and one applied event
    let rig = Rig::new().await;
    let (code, text) = status(&rig);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no capture checkpoint"), "{text}");
    rig.fresh_checkpoint().await;
    rig.publish(&[company("6216645500000000000009a1", "Acme", 10)])
        .await;
    eventually("the company", WAIT, || async {
        (rig.count("SELECT count(*) FROM dim_company").await == 1).then_some(())
    })
    .await;

    // Then status is healthy (exit 0) and shows the queues, migrations and rules
    let (code, text) = status(&rig);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("capture leader     none"), "{text}");
    assert!(
        text.contains("cdc.projector: 0 message(s) ready, 1 consumer(s)"),
        "{text}"
    );
    assert!(
        text.contains("cdc.projector.dlq: 0 message(s) ready"),
        "{text}"
    );
    assert!(
        text.contains("projection rules   version 2 recorded"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("healthy"), "{text}");
    let out = tokio::task::block_in_place(|| rig.cdc(&["status", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["healthy"], json!(true));
    assert_eq!(v["queue"]["consumers"], json!(1));
    assert_eq!(v["migrations"]["pending"], json!([]));

    // And a session holding the capture lock is shown as the leader
    let holder = rig.db.client().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&bowmark_cdc::capture::leader::lock_key("paving")],
        )
        .await
        .expect("lock");
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (code, text) = status(&rig);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("capture leader     backend pid {pid}")),
        "{text}"
    );
    drop(holder);

    // When a message is dead-lettered, then status exits 1 naming it
    rig.publish_to(
        &rig.pipeline.exchange,
        "company.created",
        b"{\"v\": 1, oops",
        Rig::event_props("bad-json-1"),
    )
    .await;
    eventually("a dead letter", WAIT, || async {
        (rig.dlq_depth().await == 1).then_some(())
    })
    .await;
    let (code, text) = status(&rig);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("NEEDS AN OPERATOR"), "{text}");
    assert!(
        text.contains("1 dead letter(s) in cdc.projector.dlq"),
        "{text}"
    );
    let out = tokio::task::block_in_place(|| rig.cdc(&["dlq", "purge", "--yes"]));
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(rig.dlq_depth().await, 0);
    assert_eq!(status(&rig).0, Some(0));

    // When a document is quarantined, then status exits 1 naming its entity
    rig.pg
        .execute(
            "INSERT INTO cdc.quarantine (entity, key, ct_t, ct_i, ordinal, reason) \
             VALUES ('vehicle_work', $1, 5, 0, 0, 'fact_vehicle_work: numeric field overflow')",
            &[&VEHICLE_WORK_1],
        )
        .await
        .expect("quarantine");
    let (code, text) = status(&rig);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("1 quarantined document(s) (vehicle_work 1)"),
        "{text}"
    );
    rig.pg
        .execute("DELETE FROM cdc.quarantine", &[])
        .await
        .expect("unquarantine");

    // When the star rows were derived by older rules, then status exits 1 until a reproject
    rig.pg
        .execute("UPDATE cdc.projection_rules SET version = 1", &[])
        .await
        .expect("older rules");
    let (code, text) = status(&rig);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("star rows derived by projection rules version 1 (this binary has 2)"),
        "{text}"
    );
    let out = tokio::task::block_in_place(|| rig.cdc(&["reproject"]));
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(status(&rig).0, Some(0));

    // When the checkpoint is not written for longer than the threshold, then status exits 1
    rig.pg
        .execute(
            "UPDATE cdc.checkpoint SET updated_at = now() - interval '10 minutes'",
            &[],
        )
        .await
        .expect("old checkpoint");
    let (code, text) = status(&rig);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("capture checkpoint last written 10m0")
            && text.contains("ago (threshold 300s)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_without_consuming_purges_only_with_yes_and_replays_a_fixed_event_into_the_star()
{
    // Given the daemon consuming, a message it dead-lettered (bad JSON), and a valid event that
    // had been dead-lettered (as after a fixed PostgreSQL rejection)
    let rig = Rig::new().await;
    rig.publish_to(
        &rig.pipeline.exchange,
        "company.created",
        b"{\"v\": 1, oops",
        Rig::event_props("bad-json-1"),
    )
    .await;
    eventually("the bad JSON dead-lettered", WAIT, || async {
        (rig.dlq_depth().await == 1).then_some(())
    })
    .await;
    let fixed = company("6216645500000000000009b1", "Replayed Co", 30);
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(dlq::REASON_HEADER.into(), text("rejected_by_postgres"));
    headers.insert(dlq::ERROR_HEADER.into(), text("fact: value too long"));
    headers.insert(
        dlq::ORIGINAL_ROUTING_KEY_HEADER.into(),
        text(&fixed.routing_key()),
    );
    headers.insert(dlq::ORIGINAL_EXCHANGE_HEADER.into(), text("bowmark.sync"));
    rig.publish_to(
        "",
        &rig.pipeline.dead_letter_queue,
        &serde_json::to_vec(&fixed).unwrap(),
        Rig::event_props(&fixed.id).with_headers(headers),
    )
    .await;
    assert_eq!(rig.dlq_depth().await, 2);

    // When an operator lists them, then both are shown with reason, routing key, id and error,
    // and both are still queued
    let out = tokio::task::block_in_place(|| rig.cdc(&["dlq", "list"]));
    assert!(out.status.success(), "{}", explain(&out));
    let listed = stdout(&out);
    assert!(
        listed.contains("2 dead letter(s) shown of 2 read"),
        "{listed}"
    );
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no line for {id}: {listed}"))
            .to_string()
    };
    let bad = line("bad-json-1");
    assert!(
        bad.contains("bad_json") && bad.contains("company.created"),
        "{bad}"
    );
    let replayable = line(&fixed.id);
    assert!(
        replayable.contains("rejected_by_postgres") && replayable.contains("fact: value too long"),
        "{replayable}"
    );
    assert_eq!(rig.dlq_depth().await, 2, "listing consumes nothing");

    // When purging without --yes, then nothing is removed and it exits 1 saying how many
    let out = tokio::task::block_in_place(|| rig.cdc(&["dlq", "purge"]));
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains("2 dead letter(s) would be removed"),
        "{}",
        explain(&out)
    );
    assert_eq!(
        rig.dlq_depth().await,
        2,
        "purge without --yes removes nothing"
    );

    // When the rejected one is replayed, then it leaves the DLQ, the daemon applies it, and the
    // bad JSON stays
    let out = tokio::task::block_in_place(|| {
        rig.cdc(&["dlq", "replay", "--reason", "rejected_by_postgres"])
    });
    assert!(out.status.success(), "{}", explain(&out));
    assert!(
        stdout(&out).contains("replayed 1 of 1"),
        "{}",
        explain(&out)
    );
    eventually("the replayed company in the star schema", WAIT, || async {
        (rig.count("SELECT count(*) FROM dim_company WHERE name = 'Replayed Co'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(rig.dlq_depth().await, 1);

    // And purging with --yes and a reason removes just those
    let out =
        tokio::task::block_in_place(|| rig.cdc(&["dlq", "purge", "--reason", "bad_json", "--yes"]));
    assert!(out.status.success(), "{}", explain(&out));
    assert!(stdout(&out).contains("removed 1"), "{}", explain(&out));
    assert_eq!(rig.dlq_depth().await, 0);
}

#[tokio::test]
async fn reproject_quarantines_a_document_whose_rows_are_rejected_and_rebuilds_the_rest() {
    // Given the seed, a vehicle work whose billion hours overflow its column (quarantined by the
    // projection), and an employee work's rate changed by hand
    let mut h = Harness::new().await;
    h.seed().await;
    h.put(
        Entity::VehicleWork,
        VEHICLE_WORK_1,
        seed::vehicle_work(VEHICLE_WORK_1, seed::SKIDSTEER_1, 1e9),
    )
    .await;
    h.client
        .batch_execute("UPDATE fact_employee_work SET hourly_rate = 1")
        .await
        .unwrap();

    // When everything is reprojected
    let tx = h.client.transaction().await.unwrap();
    let stats = bowmark_cdc::project::reproject(&tx, &h.pipeline, None)
        .await
        .expect("a rejected document does not fail the reprojection");
    tx.commit().await.unwrap();

    // Then that document stays quarantined (its row left out) and the rest is rebuilt
    assert!(
        stats
            .quarantined
            .contains(&("vehicle_work".to_string(), VEHICLE_WORK_1.to_string())),
        "{stats:?}"
    );
    assert_eq!(
        h.count(
            "SELECT count(*) FROM cdc.quarantine WHERE entity = 'vehicle_work'",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", seed::EMPLOYEE_WORK_1)
            .await,
        "25.00"
    );
}
