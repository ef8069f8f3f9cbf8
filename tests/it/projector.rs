//! The projector as operators run it: the real `bowmark-cdc run --role project` binary against a
//! private RabbitMQ vhost and PostgreSQL database, fed v1 events published straight to
//! `bowmark.sync`. Each test asserts what a user of the reports (or an operator) would notice.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::event::{CONTENT_TYPE, ChangeEvent, EVENT_TYPE, Entity, Op};
use bowmark_cdc::projector::dlq;
use bowmark_cdc::topology;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use serde_json::{Value, json};

use crate::project::seed::*;
use crate::support::{self, TestDb, TestVhost, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// A migrated private database, a private vhost with the pipeline's topology, and a publisher
/// (also the base of the operator-command tests' rig).
pub(crate) struct Rig {
    pub(crate) db: TestDb,
    pub(crate) vhost: TestVhost,
    pub(crate) pipeline: Pipeline,
    pub(crate) pg: tokio_postgres::Client,
    _amqp: lapin::Connection,
    pub(crate) ch: Channel,
}

impl Rig {
    pub(crate) async fn new() -> Rig {
        let db = support::migrated_db().await;
        let pg = db.client().await;
        let vhost = TestVhost::new();
        let pipeline = support::pipeline("paving");
        let amqp = vhost.connect().await;
        let ch = amqp.create_channel().await.expect("channel");
        topology::declare(&ch, &pipeline).await.expect("topology");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Rig {
            db,
            vhost,
            pipeline,
            pg,
            _amqp: amqp,
            ch,
        }
    }

    /// Publish bodies to the exchange as capture does, and wait for every confirm.
    pub(crate) async fn publish_raw(&self, msgs: &[(String, Option<String>, Vec<u8>)]) {
        let mut confirms = Vec::new();
        for (rk, id, body) in msgs {
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(CONTENT_TYPE.into())
                .with_type(EVENT_TYPE.into());
            if let Some(id) = id {
                props = props.with_message_id(id.as_str().into());
            }
            let c = self
                .ch
                .basic_publish(
                    self.pipeline.exchange.as_str().into(),
                    rk.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in confirms {
            assert!(
                matches!(c.await.expect("confirm"), Confirmation::Ack(None)),
                "publish not confirmed"
            );
        }
    }

    pub(crate) async fn publish(&self, events: &[ChangeEvent]) {
        let msgs: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.routing_key(),
                    Some(e.id.clone()),
                    serde_json::to_vec(e).unwrap(),
                )
            })
            .collect();
        self.publish_raw(&msgs).await;
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        self.pg
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    }

    /// One text value, or None when there is no row.
    pub(crate) async fn text(&self, sql: &str, key: &str) -> Option<String> {
        self.pg
            .query_opt(sql, &[&key])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .map(|r| r.get(0))
    }

    pub(crate) async fn depth(&self, queue: &str) -> u32 {
        topology::depth(&self.ch, queue).await.expect("depth")
    }

    /// Start the real daemon for this rig's database and vhost.
    fn start(&self) -> Daemon {
        Daemon::start(&self.db, &self.vhost)
    }
}

/// `bowmark-cdc run --role project` as a child process; killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub(crate) fn start(db: &TestDb, vhost: &TestVhost) -> Daemon {
        Daemon::spawn(
            &["--role", "project"],
            support::child_env(db, Some(vhost), None),
        )
    }

    pub(crate) fn spawn(args: &[&str], env: Vec<(String, String)>) -> Daemon {
        let mut child = support::cdc_bin()
            .args(["run", "--pipeline", "pipeline/paving.toml"])
            .args(args)
            .envs(env)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bowmark-cdc");
        let tail = support::StderrTail::start(&mut child);
        let addr = tail.http_addr();
        Daemon {
            child,
            addr,
            log: tail.log,
        }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// GET a path; (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        support::http_get(self.addr, path).await
    }

    async fn wait_ready(&self) {
        eventually("/readyz to answer 200", WAIT, || async {
            let (code, body) = self.get("/readyz").await;
            (code == 200).then_some(body)
        })
        .await;
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for the process to exit, at most `deadline`.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "the daemon did not exit within {deadline:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn employee(key: &str, name: &str, rates: Value) -> Value {
    json!({ "_id": oid(key), "name": name, "jobTitle": "Labourer", "rates": rates })
}

/// `n` distinct employees with two rates each, as insert events from cluster time `t0`.
fn employees(n: u32, t0: u32) -> Vec<ChangeEvent> {
    (0..n)
        .map(|k| {
            let key = format!("{:024x}", 0xe000_0000u64 + u64::from(k));
            let doc = employee(
                &key,
                &format!("Employee {k}"),
                json!([
                    { "_id": oid(&format!("{:024x}", 0xf000_0000u64 + 2 * u64::from(k))),
                      "date": date("2022-01-01T00:00:00Z"), "rate": 30 },
                    { "_id": oid(&format!("{:024x}", 0xf000_0001u64 + 2 * u64::from(k))),
                      "date": date("2023-01-01T00:00:00Z"), "rate": 32 }
                ]),
            );
            event(
                "paving",
                Entity::Employee,
                &key,
                Op::Insert,
                Some(doc),
                t0 + k,
            )
        })
        .collect()
}

async fn employee_cost_on_2022_02_23(rig: &Rig) -> Option<String> {
    rig.text(
        "SELECT s.employee_cost::text FROM jobsite_daily_summary s \
         JOIN dim_jobsite j ON j.id = s.jobsite_id \
         WHERE j.mongo_id = $1 AND s.date = '2022-02-23'",
        JOBSITE_1,
    )
    .await
}

#[tokio::test]
async fn seed_scenario_through_the_broker_reaches_the_reports_and_a_rate_edit_recosts_them() {
    // Given the daemon and the legacy checklist seed published to bowmark.sync
    let rig = Rig::new().await;
    let daemon = rig.start();
    daemon.wait_ready().await;
    let events = Seed::legacy().events("paving", 1000);
    rig.publish(&events).await;

    // Then the star rows carry the legacy numbers
    let ew = "SELECT hourly_rate::text FROM fact_employee_work WHERE mongo_id = $1";
    let rate = eventually("the employee work row", WAIT, || async {
        rig.text(ew, EMPLOYEE_WORK_1).await
    })
    .await;
    assert_eq!(rate, "25.00", "the 2022-01-01 rate applies");
    let vw = "SELECT hours::text || ' x ' || hourly_rate::text || ' = ' || total_cost::text \
              FROM fact_vehicle_work WHERE mongo_id = $1";
    let vehicle = eventually("the vehicle work row", WAIT, || async {
        rig.text(vw, VEHICLE_WORK_1).await
    })
    .await;
    assert_eq!(vehicle, "3.00 x 85.00 = 255.00");
    let tr = "SELECT total_cost::text FROM fact_trucking WHERE mongo_id = $1";
    let trucking = eventually("the trucking row", WAIT, || async {
        rig.text(tr, SHIPMENT_TRUCKING_1).await
    })
    .await;
    assert_eq!(trucking, "240.00");
    let invoices = eventually("both sync invoices", WAIT, || async {
        let n = rig.count("SELECT count(*) FROM fact_invoice").await;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(invoices, 2);
    let revenue = rig
        .text(
            "SELECT amount::text FROM fact_invoice WHERE mongo_id = $1",
            INVOICE_REVENUE_1,
        )
        .await;
    assert_eq!(revenue.as_deref(), Some("25000.00"));
    let before = eventually("the daily summary", WAIT, || async {
        employee_cost_on_2022_02_23(&rig).await
    })
    .await;
    assert_eq!(before.parse::<f64>().unwrap(), 200.0, "8 h x 25");

    // When the employee's rate is edited (a new rates[] entry effective 2022-02-01)
    let mut foreman = base_foreman_1();
    foreman["rates"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "_id": oid("6216645500000000000000d5"),
                      "date": date("2022-02-01T00:00:00Z"), "rate": 31 }));
    let update = event(
        "paving",
        Entity::Employee,
        BASE_FOREMAN_1,
        Op::Update,
        Some(foreman),
        5000,
    );
    rig.publish(&[update]).await;

    // Then the report view re-costs that employee's work
    let after = eventually("the re-costed daily summary", WAIT, || async {
        employee_cost_on_2022_02_23(&rig)
            .await
            .filter(|c| c.parse::<f64>().ok() == Some(248.0))
    })
    .await;
    assert_eq!(after.parse::<f64>().unwrap(), 248.0, "8 h x 31");

    // And the operator endpoints answer
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!((code, body.trim()), (200, "ready: projector active"));
    let (code, metrics) = daemon.get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "cdc_projector_events_applied_total{",
        "cdc_projector_batch_events_bucket{",
        "cdc_projector_batch_duration_seconds_bucket{",
        "cdc_projector_apply_duration_seconds_bucket{",
        "cdc_projector_rows_written_total{",
        "cdc_projector_last_event_timestamp_seconds{",
        "cdc_projector_queue_messages{",
        "cdc_projector_dead_letter_queue_messages{",
        "# TYPE cdc_projector_batch_duration_seconds histogram",
        "# HELP cdc_projector_events_applied_total ",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("entity=\"employee_work\"") && metrics.contains("outcome=\"applied\""),
        "{metrics}"
    );
    promtool_check(&metrics);
    let (code, _) = daemon.get("/healthz").await;
    assert_eq!(code, 200);
}

/// `promtool check metrics` (HELP, TYPE, naming) when Prometheus' promtool is installed.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIP promtool check: promtool is not installed (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The messages of the dead-letter queue: (reason header, error header, original routing key).
async fn dead_letters(rig: &Rig) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    while let Some(m) = rig
        .ch
        .basic_get(
            rig.pipeline.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        let get = |n| dlq::header_text(&h, n).unwrap_or_default();
        out.push((
            get(dlq::REASON_HEADER),
            get(dlq::ERROR_HEADER),
            get(dlq::ORIGINAL_ROUTING_KEY_HEADER),
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
        ));
    }
    out.sort();
    out
}

pub(crate) fn company(key: &str, name: &str, t: u32) -> ChangeEvent {
    event(
        "paving",
        Entity::Company,
        key,
        Op::Insert,
        Some(json!({ "_id": oid(key), "name": name })),
        t,
    )
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_stream_keeps_flowing() {
    // Given one batch's worth of messages in the queue: ten good companies, and among them bad
    // JSON, an unknown entity and two companies whose names are longer than varchar(255)
    let rig = Rig::new().await;
    let msg = |e: &ChangeEvent| {
        (
            e.routing_key(),
            Some(e.id.clone()),
            serde_json::to_vec(e).unwrap(),
        )
    };
    let mut unknown = serde_json::to_value(company("621664550000000000000902", "X", 11)).unwrap();
    unknown["entity"] = json!("spaceship");
    let too_long: Vec<ChangeEvent> = (0..2)
        .map(|n| {
            company(
                &format!("6216645500000000000009f{n}"),
                &"N".repeat(300),
                50 + n,
            )
        })
        .collect();
    let mut msgs: Vec<(String, Option<String>, Vec<u8>)> = (0..10)
        .map(|n| {
            msg(&company(
                &format!("6216645500000000000009a{n}"),
                &format!("Good {n}"),
                20 + n,
            ))
        })
        .collect();
    msgs.insert(
        2,
        (
            "company.created".into(),
            Some("bad-json-1".into()),
            b"{\"v\": 1, oops".to_vec(),
        ),
    );
    msgs.insert(
        4,
        (
            "spaceship.created".into(),
            Some("unknown-1".into()),
            serde_json::to_vec(&unknown).unwrap(),
        ),
    );
    msgs.insert(5, msg(&too_long[0]));
    msgs.insert(10, msg(&too_long[1]));
    rig.publish_raw(&msgs).await;

    // When the projector runs
    let _daemon = rig.start();

    // Then the good events apply, the long names cut to the column's width (a valid document
    // never loses its row), the two undecodable messages wait in the DLQ with their reasons,
    // and the queue is drained
    eventually("all twelve companies", WAIT, || async {
        let n = rig.count("SELECT count(*) FROM dim_company").await;
        (n == 12).then_some(())
    })
    .await;
    assert_eq!(
        rig.count("SELECT count(*) FROM dim_company WHERE name LIKE 'Good %'")
            .await,
        10
    );
    assert_eq!(
        rig.count("SELECT count(*) FROM dim_company WHERE name = repeat('N', 255)")
            .await,
        2,
        "the long names are cut to 255 characters"
    );
    eventually("two dead letters", WAIT, || async {
        (rig.depth(&rig.pipeline.dead_letter_queue).await == 2).then_some(())
    })
    .await;
    let letters = dead_letters(&rig).await;
    let reasons: Vec<(&str, &str)> = letters
        .iter()
        .map(|(r, _, rk, _)| (r.as_str(), rk.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("bad_json", "company.created"),
            ("unknown_entity", "spaceship.created"),
        ]
    );
    eventually("an empty queue", WAIT, || async {
        (rig.depth(&rig.pipeline.queue).await == 0).then_some(())
    })
    .await;
}

/// Mirror and star rows agree: every mirrored employee has its dimension row and both rates.
/// (One statement, so one snapshot, while the daemon may be committing.)
async fn consistent_employees(rig: &Rig) -> i64 {
    let row = rig
        .pg
        .query_one(
            "SELECT (SELECT count(*) FROM cdc.source_doc WHERE entity = 'employee'), \
                    (SELECT count(*) FROM dim_employee), \
                    (SELECT count(*) FROM dim_employee_rate)",
            &[],
        )
        .await
        .expect("counts");
    let (mirrored, dims, rates): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        mirrored, dims,
        "a batch was half applied (mirror vs dim_employee)"
    );
    assert_eq!(rates, 2 * dims, "a batch was half applied (rates)");
    dims
}

#[tokio::test]
async fn kill_9_during_a_large_batch_then_restart_loses_nothing_and_half_applies_nothing() {
    // Given 6000 employee events waiting in the queue
    const N: u32 = 6000;
    let rig = Rig::new().await;
    rig.publish(&employees(N, 100)).await;

    // When the daemon is killed with SIGKILL while it works through them
    let mut daemon = rig.start();
    eventually("a few batches", WAIT, || async {
        (rig.count("SELECT count(*) FROM dim_employee").await >= 1000).then_some(())
    })
    .await;
    daemon.signal("-KILL");
    daemon.wait_exit(Duration::from_secs(10));
    drop(daemon);

    // Then what was committed is whole
    let partial = consistent_employees(&rig).await;
    assert!(partial > 0);
    eprintln!("killed with {partial} of {N} employees committed");

    // And after a restart everything arrives, exactly once per employee
    let _daemon = rig.start();
    eventually("every employee", Duration::from_secs(120), || async {
        (consistent_employees(&rig).await == i64::from(N)).then_some(())
    })
    .await;
    eventually("an empty queue", WAIT, || async {
        (rig.depth(&rig.pipeline.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(rig.depth(&rig.pipeline.dead_letter_queue).await, 0);
    let name = rig
        .text(
            "SELECT name FROM dim_employee WHERE mongo_id = $1",
            &format!("{:024x}", 0xe000_0000u64 + u64::from(N - 1)),
        )
        .await;
    assert_eq!(name.as_deref(), Some("Employee 5999"));
}

#[tokio::test]
async fn sigterm_exits_zero_promptly_and_leaves_no_unacked_unapplied_work() {
    // Given a running daemon working through 4000 events
    const N: u32 = 4000;
    let rig = Rig::new().await;
    let mut daemon = rig.start();
    daemon.wait_ready().await;
    rig.publish(&employees(N, 100)).await;
    eventually("the first batch", WAIT, || async {
        (rig.count("SELECT count(*) FROM dim_employee").await > 0).then_some(())
    })
    .await;

    // When it gets SIGTERM
    let sent = Instant::now();
    daemon.signal("-TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));

    // Then it exits 0 within seconds
    assert!(status.success(), "exit {status:?}:\n{}", daemon.log());
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(
        daemon.log().contains("shutdown requested"),
        "{}",
        daemon.log()
    );

    // And every event is either applied or back in the queue, never both, never neither
    let applied = consistent_employees(&rig).await;
    let waiting = eventually("the requeued messages", WAIT, || async {
        let d = i64::from(rig.depth(&rig.pipeline.queue).await);
        (applied + d == i64::from(N)).then_some(d)
    })
    .await;
    assert_eq!(applied + waiting, i64::from(N));
    eprintln!("stopped with {applied} applied and {waiting} requeued of {N}");
}

#[tokio::test]
async fn duplicates_and_redeliveries_change_nothing() {
    // Given the seed applied once
    let rig = Rig::new().await;
    let daemon = rig.start();
    let events = Seed::legacy().events("paving", 1000);
    rig.publish(&events).await;
    sentinel(&rig, "621664550000000000000a01", 2000).await;
    let snapshot = star_snapshot(&rig).await;

    // When every event is delivered again, twice, plus an older version of the foreman with
    // another rate (a late redelivery)
    let mut old_foreman = base_foreman_1();
    old_foreman["rates"] = json!([{ "_id": oid("6216645500000000000000d9"),
                                    "date": date("2020-01-01T00:00:00Z"), "rate": 99 }]);
    let mut again = events.clone();
    again.extend(events.iter().cloned());
    again.push(event(
        "paving",
        Entity::Employee,
        BASE_FOREMAN_1,
        Op::Update,
        Some(old_foreman),
        999,
    ));
    rig.publish(&again).await;
    sentinel(&rig, "621664550000000000000a02", 2001).await;

    // Then the star rows are exactly as before (the sentinels aside)
    assert_eq!(star_snapshot(&rig).await, snapshot);
    assert_eq!(rig.depth(&rig.pipeline.dead_letter_queue).await, 0);
    // And the operator sees every replayed event counted as stale, none as applied twice
    let (_, metrics) = daemon.get("/metrics").await;
    let applied = events_counted(&metrics, "applied");
    assert_eq!(
        events_counted(&metrics, "stale"),
        again.len() as u64,
        "{metrics}"
    );
    assert_eq!(
        applied,
        events.len() as u64 + 2,
        "seed + two sentinels:\n{metrics}"
    );
}

/// Sum of `cdc_projector_events_applied_total` over entities for one outcome.
fn events_counted(metrics: &str, outcome: &str) -> u64 {
    let needle = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("cdc_projector_events_applied_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Publish a new company and wait for its row: every message before it was processed.
async fn sentinel(rig: &Rig, key: &str, t: u32) {
    rig.publish(&[company(key, "Sentinel", t)]).await;
    eventually("the sentinel company", WAIT, || async {
        rig.text("SELECT name FROM dim_company WHERE mongo_id = $1", key)
            .await
    })
    .await;
}

/// Every star row's content, without surrogate ids and sync stamps, sentinels excluded.
async fn star_snapshot(rig: &Rig) -> Vec<String> {
    let mut out = Vec::new();
    // dim_company aside: the sentinels are companies.
    for t in support::star_tables()
        .into_iter()
        .filter(|t| *t != "dim_company")
    {
        let sql = format!(
            "SELECT (to_jsonb(x) - 'id' - 'synced_at' - 'employee_id' - 'vehicle_id' \
                     - 'jobsite_id' - 'crew_id' - 'daily_report_id' - 'material_id' \
                     - 'supplier_id' - 'jobsite_material_id' - 'company_id')::text \
             FROM {t} x ORDER BY 1"
        );
        for row in rig
            .pg
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        {
            out.push(format!("{t}: {}", row.get::<_, String>(0)));
        }
    }
    out
}

#[tokio::test]
async fn an_unmigrated_database_stops_the_daemon_with_a_clear_reason() {
    // Given a database nobody migrated
    let db = TestDb::new().await;
    let vhost = TestVhost::new();
    // When the daemon starts on it
    let mut daemon = Daemon::start(&db, &vhost);
    let status = daemon.wait_exit(Duration::from_secs(30));
    // Then it exits non-zero, saying what to do
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("not migrated") && log.contains("bowmark-cdc migrate"),
        "{log}"
    );
}

/// Close the daemon's broker connections in this vhost only (other tests share the broker).
fn close_broker_connections(vhost: &TestVhost) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "vhost"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut closed = 0;
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(pid), Some(vh)) = (cols.next(), cols.next()) else {
            continue;
        };
        if vh.trim() == vhost.name {
            let ok = std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "close_connection",
                    pid.trim(),
                    "test: connection loss",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            closed += usize::from(ok);
        }
    }
    closed
}

#[tokio::test]
async fn broker_and_database_connection_losses_are_survived_without_losing_events() {
    // Given a running daemon working through 3000 events
    const N: u32 = 3000;
    let rig = Rig::new().await;
    let daemon = rig.start();
    daemon.wait_ready().await;
    rig.publish(&employees(N, 100)).await;
    eventually("the first batch", WAIT, || async {
        (rig.count("SELECT count(*) FROM dim_employee").await > 0).then_some(())
    })
    .await;

    // When its PostgreSQL sessions are terminated and its broker connection is closed
    let admin = support::pg_connect("postgres").await;
    let own: i32 = rig
        .pg
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'bowmark-cdc' AND pid <> $2",
            &[&rig.db.name, &own],
        )
        .await
        .expect("terminate backends")
        .get(0);
    assert!(killed > 0, "the daemon had no PostgreSQL session");
    // (this also closes the test's own publisher connection, which is done publishing)
    assert!(close_broker_connections(&rig.vhost) > 0);

    // Then every event still arrives exactly once and the daemon is ready again
    eventually("every employee", Duration::from_secs(120), || async {
        (consistent_employees(&rig).await == i64::from(N)).then_some(())
    })
    .await;
    daemon.wait_ready().await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains("cdc_projector_retries_total{"),
        "a retry was counted:\n{metrics}"
    );
}

/// Relaxed extended JSON (the seed's form) as a BSON document.
fn bson_doc(v: &Value) -> bson::Document {
    match bson::Bson::try_from(v.clone()) {
        Ok(bson::Bson::Document(d)) => d,
        other => panic!("not a document: {other:?}"),
    }
}

#[tokio::test]
async fn role_all_carries_mongodb_writes_to_the_reports_end_to_end() {
    // Given MongoDB (the simulator), the daemon with both roles, and the legacy checklist seed written
    // to MongoDB's collections
    let sim = mongosim::Sim::start().await;
    let rig = Rig::new().await;
    let mut daemon = daemon_over(&sim, &rig).await;
    let ready = daemon.get("/readyz").await.1;
    assert_eq!(ready.trim(), "ready: capture active, projector active");
    let mongo = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let db = mongo.database(&rig.pipeline.mongo_database);
    for (entity, _, doc) in &Seed::legacy().docs {
        db.collection::<bson::Document>(collection(*entity))
            .insert_one(bson_doc(doc))
            .await
            .expect("insert");
    }

    // Then the reports show the seed's costs
    let before = eventually("the daily summary", WAIT, || async {
        employee_cost_on_2022_02_23(&rig).await
    })
    .await;
    assert_eq!(before.parse::<f64>().unwrap(), 200.0, "8 h x 25");
    let tr = "SELECT total_cost::text FROM fact_trucking WHERE mongo_id = $1";
    let trucking = eventually("the trucking row", WAIT, || async {
        rig.text(tr, SHIPMENT_TRUCKING_1).await
    })
    .await;
    assert_eq!(trucking, "240.00");

    // When the foreman's rates get a new entry in MongoDB
    db.collection::<bson::Document>("employees")
        .update_one(
            bson::doc! { "_id": bson::oid::ObjectId::parse_str(BASE_FOREMAN_1).unwrap() },
            bson::doc! { "$push": { "rates": bson_doc(&json!({
            "_id": oid("6216645500000000000000d5"),
            "date": date("2022-02-01T00:00:00Z"), "rate": 31 })) } },
        )
        .await
        .expect("update");

    // Then the report re-costs the foreman's day
    eventually("the re-costed daily summary", WAIT, || async {
        employee_cost_on_2022_02_23(&rig)
            .await
            .filter(|c| c.parse::<f64>().ok() == Some(248.0))
    })
    .await;

    // And SIGTERM stops both roles cleanly
    daemon.signal("-TERM");
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}:\n{}", daemon.log());
}

#[tokio::test]
async fn a_deleted_queue_is_declared_again_and_consumption_resumes() {
    // Given a running daemon
    let rig = Rig::new().await;
    let daemon = rig.start();
    daemon.wait_ready().await;
    // When an operator deletes its queue (the broker cancels the consumer)
    rig.ch
        .queue_delete(
            rig.pipeline.queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("queue.delete");
    eventually("the daemon to consume again", WAIT, || async {
        (daemon.log().matches("projector consuming").count() >= 2).then_some(())
    })
    .await;
    // Then events published afterwards are applied
    rig.publish(&[company("621664550000000000000b01", "After Delete", 10)])
        .await;
    eventually("the company", WAIT, || async {
        rig.text(
            "SELECT name FROM dim_company WHERE mongo_id = $1",
            "621664550000000000000b01",
        )
        .await
    })
    .await;
    assert!(daemon.log().contains("consumer_ended"), "{}", daemon.log());
}

#[tokio::test]
async fn sigterm_while_postgres_is_unreachable_abandons_the_batch_whole_and_exits_zero() {
    // Given a running daemon whose database stops accepting connections
    const N: u32 = 100;
    let mut rig = Rig::new().await;
    let mut daemon = rig.start();
    daemon.wait_ready().await;
    let admin = support::pg_connect("postgres").await;
    let db = rig.db.name.clone();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ))
        .await
        .expect("lock the database");

    // When events arrive, the batch keeps failing, and SIGTERM comes
    rig.publish(&employees(N, 100)).await;
    eventually("a batch retry", WAIT, || async {
        daemon.log().contains("retrying the batch").then_some(())
    })
    .await;
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("postgres disconnected"), "{body}");
    daemon.signal("-TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));

    // Then it exits 0, having applied and acked nothing: every event is back in the queue
    assert!(status.success(), "exit {status:?}:\n{}", daemon.log());
    assert!(daemon.log().contains("abandoned"), "{}", daemon.log());
    drop(daemon);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .expect("unlock the database");
    rig.pg = rig.db.client().await;
    assert_eq!(consistent_employees(&rig).await, 0);
    eventually("every event back in the queue", WAIT, || async {
        (rig.depth(&rig.pipeline.queue).await == N).then_some(())
    })
    .await;

    // And a restarted daemon applies them all
    let _daemon = rig.start();
    eventually("every employee", WAIT, || async {
        (consistent_employees(&rig).await == i64::from(N)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn legacy_sync_messages_beside_the_daemon_are_acknowledged_not_dead_lettered() {
    // Given the legacy Node producers still publishing `{mongoId, action, timestamp}` (no `type`)
    // to bowmark.sync during a migration, followed by a v1 event
    let rig = Rig::new().await;
    for n in 0..3 {
        let body = json!({"mongoId": format!("6216645500000000000009c{n}"), "action": "updated",
                          "timestamp": "2026-11-27T04:15:03.120Z"});
        rig.ch
            .basic_publish(
                rig.pipeline.exchange.as_str().into(),
                "employee_work.updated".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body).unwrap(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(CONTENT_TYPE.into()),
            )
            .await
            .expect("publish legacy")
            .await
            .expect("confirm legacy");
    }
    rig.publish(&[company("6216645500000000000009d0", "After legacy", 30)])
        .await;
    // When the projector runs
    let _daemon = rig.start();
    // Then the v1 event applies, the queue drains, and nothing lands in the DLQ
    eventually("the v1 event after the legacy messages", WAIT, || async {
        let n = rig
            .count("SELECT count(*) FROM dim_company WHERE name = 'After legacy'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    eventually("an empty queue", WAIT, || async {
        (rig.depth(&rig.pipeline.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(rig.depth(&rig.pipeline.dead_letter_queue).await, 0);
}

/// The daemon with both roles over MongoDB `sim` and the rig's database and vhost, ready.
async fn daemon_over(sim: &mongosim::Sim, rig: &Rig) -> Daemon {
    // The capture refuses a database that holds none of the watched collections; the app's
    // database always has them.
    mongodb::Client::with_uri_str(sim.uri())
        .await
        .unwrap()
        .database(&rig.pipeline.mongo_database)
        .create_collection("companies")
        .await
        .unwrap();
    let daemon = Daemon::spawn(
        &["--role", "all"],
        support::child_env(&rig.db, Some(&rig.vhost), Some(&sim.uri())),
    );
    eventually("/readyz with both roles active", WAIT, || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    daemon
}

/// Write a marker company last and wait until it is projected (then everything written before
/// it is), take the daemon's metrics, and stop it with SIGTERM (exit 0). Returns the metrics.
async fn drain_and_stop(daemon: &mut Daemon, rig: &Rig, db: &mongodb::Database) -> String {
    db.collection::<bson::Document>("companies")
        .insert_one(bson::doc! {"_id": bson::oid::ObjectId::new(), "name": "zz-marker"})
        .await
        .unwrap();
    eventually("the marker in the streamed database", WAIT, || async {
        let n = rig
            .count("SELECT count(*) FROM dim_company WHERE name = 'zz-marker'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    let metrics = daemon.get("/metrics").await.1;
    daemon.signal("-TERM");
    assert!(
        daemon.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        daemon.log()
    );
    metrics
}

#[tokio::test]
async fn streaming_a_workload_equals_backfilling_its_final_state() {
    // Given MongoDB (the simulator) and the daemon with both roles on database A
    let sim = mongosim::Sim::start().await;
    let rig = Rig::new().await;
    let mut daemon = daemon_over(&sim, &rig).await;
    // When a generated Bow-Mark workload is written, then edited: a rate change, a rename, a
    // deleted work item, a child detached from its report, a deleted invoice
    let mongo = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let db = mongo.database(&rig.pipeline.mongo_database);
    let workload = crate::backfill::workload::Workload::generate(
        11,
        crate::backfill::workload::Shape::small(12),
    );
    workload.insert(&db).await.expect("insert workload");
    let coll = |c: &str| db.collection::<bson::Document>(c);
    let first = |c: &'static str| {
        let coll = coll(c);
        async move { coll.find_one(bson::doc! {}).await.unwrap().expect(c) }
    };
    let employee = first("employees").await;
    coll("employees")
        .update_one(
            bson::doc! {"_id": employee.get("_id").unwrap()},
            bson::doc! {"$set": {"name": "Renamed"}, "$push": {"rates": {
                "_id": bson::oid::ObjectId::new(), "date": bson::DateTime::from_millis(0), "rate": 99}}},
        )
        .await
        .unwrap();
    let work = first("employeeworks").await;
    coll("employeeworks")
        .delete_one(bson::doc! {"_id": work.get("_id").unwrap()})
        .await
        .unwrap();
    let report = coll("dailyreports")
        .find_one(bson::doc! {"vehicleWork.0": {"$exists": true}})
        .await
        .unwrap()
        .expect("a report with vehicle work");
    let detached = report.get_array("vehicleWork").unwrap()[0].clone();
    coll("dailyreports")
        .update_one(
            bson::doc! {"_id": report.get("_id").unwrap()},
            bson::doc! {"$pull": {"vehicleWork": detached.clone()}},
        )
        .await
        .unwrap();
    let invoice = first("invoices").await;
    coll("invoices")
        .delete_one(bson::doc! {"_id": invoice.get("_id").unwrap()})
        .await
        .unwrap();
    drain_and_stop(&mut daemon, &rig, &db).await;

    // And the final MongoDB state is backfilled into a fresh database B
    let (fresh, _) = crate::backfill::fresh_backfill(Some(&sim.uri()), &[]).await;

    // Then both hold the same star rows (the streamed one may also keep archived rows of the
    // deleted and detached documents, never live ones)
    let streamed = crate::project::law::star_of(&rig.pg).await;
    let backfilled = crate::project::law::star_of(&fresh.client().await).await;
    assert!(
        backfilled["fact_employee_work"].len() > 10,
        "the workload produced facts"
    );
    if let Err(diff) = crate::project::law::compare(&streamed, &backfilled) {
        panic!("stream and backfill differ: {diff}");
    }
    let detached_hex = detached.as_object_id().unwrap().to_hex();
    assert!(
        !backfilled["fact_vehicle_work"].contains_key(&detached_hex),
        "the detached vehicle work has no row in a fresh backfill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_production_shaped_dump_children_first_equals_backfilling_the_dump() {
    use crate::backfill::workload::{Shape, Workload};
    // Given a production-shaped dataset (long, padded and empty text, missing fields, reports
    // naming deleted crews, same-date rates, int/double/Decimal128), also as a mongodump folder
    let w = Workload::generate(31, Shape::realistic(300));
    assert!(w.gone_crews > 0, "the dataset names deleted crews");
    let dir = tempfile::tempdir().expect("temp dir");
    w.write_dump(dir.path()).expect("write dump");
    // And MongoDB (the simulator) with the daemon, both roles, on database A
    let sim = mongosim::Sim::start().await;
    let rig = Rig::new().await;
    let mut daemon = daemon_over(&sim, &rig).await;
    // When the app writes it, each report's children before the report
    let mongo = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let db = mongo.database(&rig.pipeline.mongo_database);
    w.insert_children_first(&db).await.expect("insert workload");
    let metrics = drain_and_stop(&mut daemon, &rig, &db).await;
    // And the same dump is backfilled into a fresh database B
    let dump = dir.path().to_str().unwrap();
    let (fresh, out) = crate::backfill::fresh_backfill(None, &["--from-dump", dump]).await;
    let summary = crate::backfill::text(&out.stdout);

    // Then both hold the same star rows (the marker aside), nothing was dead-lettered, and
    // no document was rejected or quarantined
    let mut streamed = crate::project::law::star_of(&rig.pg).await;
    let fresh_client = fresh.client().await;
    let backfilled = crate::project::law::star_of(&fresh_client).await;
    streamed
        .get_mut("dim_company")
        .expect("dim_company")
        .retain(|_, r| !r.content.contains("zz-marker"));
    if let Err(diff) = crate::project::law::compare(&streamed, &backfilled) {
        panic!("stream and backfill differ: {diff}");
    }
    for (t, rows) in &backfilled {
        let live_streamed = streamed[t].values().filter(|r| !r.retired).count();
        assert_eq!(
            live_streamed,
            rows.len(),
            "{t}: live rows streamed vs backfilled"
        );
    }
    assert!(
        backfilled["fact_employee_work"].len() > 1000,
        "the workload produced facts"
    );
    assert_eq!(rig.depth(&rig.pipeline.dead_letter_queue).await, 0);
    for c in [&rig.pg, &fresh_client] {
        let q: i64 = c
            .query_one("SELECT count(*) FROM cdc.quarantine", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(q, 0, "no document quarantined");
    }
    assert!(
        !summary
            .lines()
            .any(|l| l.trim_start().starts_with("rejected ") || l.contains("skipped:")),
        "{summary}"
    );
    // And `verify` finds the streamed database clean against MongoDB, and the backfilled one
    // clean against the dump
    let verify = |env: Vec<(String, String)>, source: &[&str]| {
        let out = support::cdc_bin()
            .args([
                "verify",
                "--pipeline",
                "pipeline/paving.toml",
                "--settle",
                "5",
            ])
            .args(source)
            .envs(env)
            .output()
            .expect("run bowmark-cdc verify");
        assert!(
            out.status.success(),
            "verify {source:?}: {}\n{}",
            crate::backfill::text(&out.stdout),
            crate::backfill::text(&out.stderr)
        );
    };
    let (streamed_env, fresh_env) = (
        support::child_env(&rig.db, Some(&rig.vhost), Some(&sim.uri())),
        support::child_env(&fresh, None, None),
    );
    let dump = dir.path().to_str().unwrap().to_string();
    tokio::task::block_in_place(|| {
        verify(streamed_env, &[]);
        verify(fresh_env, &["--from-dump", &dump]);
    });
    // And the backfill's summary and the daemon's metrics show the values adjusted, by table
    // and column
    for line in [
        "values adjusted so that no row is rejected",
        "fact_employee_work.job_title (truncated)",
        "dim_jobsite_material.unit (truncated)",
    ] {
        assert!(summary.contains(line), "{line:?} missing from:\n{summary}");
    }
    assert!(
        metrics.contains("cdc_project_values_adjusted_total{")
            && metrics.contains("column=\"job_title\""),
        "{metrics}"
    );
    // And the reports naming a deleted crew keep their hours and costs in the report views
    let gone_crew_cost: Option<String> = fresh_client
        .query_one(
            "SELECT sum(c.total_cost)::text FROM jobsite_all_costs c
             JOIN dim_daily_report d ON d.id = c.daily_report_id
             JOIN dim_crew cr ON cr.id = d.crew_id
             WHERE cr.name = '(missing crew)' AND c.cost_type = 'employee'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        gone_crew_cost.as_deref().is_some_and(|c| c != "0.00"),
        "employee costs of reports whose crew is gone: {gone_crew_cost:?}"
    );
}

#[tokio::test]
async fn every_counter_and_the_quarantine_gauge_exist_from_the_start_at_zero() {
    // Given the daemon just started, before any event
    let rig = Rig::new().await;
    let daemon = rig.start();
    daemon.wait_ready().await;
    let metrics = daemon.get("/metrics").await.1;
    // Then the counters alerts use with increase() have a 0 sample for every bounded label
    // value (so the first dead letter is an increase), and the quarantine gauge one per entity
    let zero = |name: &str, label: &str| {
        metrics.lines().any(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains(label)
                && l.contains("pipeline=\"paving\"")
                && l.ends_with(" 0")
        })
    };
    for reason in [
        "bad_json",
        "unknown_entity",
        "rejected_by_postgres",
        "wrong_pipeline",
    ] {
        assert!(
            zero(
                "cdc_projector_dead_lettered_total",
                &format!("reason=\"{reason}\"")
            ),
            "no zero sample of dead letters {reason}:\n{metrics}"
        );
    }
    assert!(zero(
        "cdc_projector_retries_total",
        "error_type=\"postgres\""
    ));
    assert!(zero(
        "cdc_projector_events_applied_total",
        "outcome=\"dead_lettered\""
    ));
    for entity in ["vehicle_work", "daily_report", "employee"] {
        assert!(
            zero(
                "cdc_project_quarantined_documents",
                &format!("entity=\"{entity}\"")
            ),
            "no quarantine gauge for {entity}:\n{metrics}"
        );
    }
    promtool_check(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_busy_source_beside_the_running_daemon_is_clean() {
    use crate::backfill::workload::{Shape, Workload};
    use std::sync::atomic::{AtomicBool, Ordering};
    // Given the daemon streaming a workload from MongoDB (the simulator)
    let sim = mongosim::Sim::start().await;
    let rig = Rig::new().await;
    let mut daemon = daemon_over(&sim, &rig).await;
    let mongo = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let db = mongo.database(&rig.pipeline.mongo_database);
    let w = Workload::generate(41, Shape::small(12));
    w.insert(&db).await.expect("insert workload");
    // When the application keeps writing (new companies, renamed employees) while verify runs
    let busy = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (db, busy) = (db.clone(), busy.clone());
        let employees: Vec<bson::Bson> = w.collections["employees"]
            .iter()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        async move {
            let mut n = 0u32;
            while busy.load(Ordering::Relaxed) {
                n += 1;
                let companies = db.collection::<bson::Document>("companies");
                companies
                    .insert_one(
                        bson::doc! {"_id": bson::oid::ObjectId::new(), "name": format!("busy {n}")},
                    )
                    .await
                    .unwrap();
                let id = employees[n as usize % employees.len()].clone();
                db.collection::<bson::Document>("employees")
                    .update_one(
                        bson::doc! {"_id": id},
                        bson::doc! {"$set": {"name": format!("renamed {n}")}},
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let env = support::child_env(&rig.db, Some(&rig.vhost), Some(&sim.uri()));
    let out = tokio::task::spawn_blocking(move || {
        support::cdc_bin()
            .args([
                "verify",
                "--pipeline",
                "pipeline/paving.toml",
                "--json",
                "--settle",
                "30",
            ])
            .envs(env)
            .output()
            .expect("run bowmark-cdc verify")
    })
    .await
    .unwrap();
    busy.store(false, Ordering::Relaxed);
    let writes = writer.await.unwrap();

    // Then it is clean: what was written after its scan began is left out, counted as late
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            crate::backfill::text(&out.stdout),
            crate::backfill::text(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let late: u64 = report["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["left_out"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        writes > 0 && late > 0,
        "writes {writes}, late {late}: {report:#}"
    );
    // And the daemon kept projecting meanwhile
    drain_and_stop(&mut daemon, &rig, &db).await;
    let busy_rows = rig
        .count("SELECT count(*) FROM dim_company WHERE name LIKE 'busy %'")
        .await;
    assert_eq!(busy_rows, i64::from(writes));
}
