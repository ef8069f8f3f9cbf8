//! The write side: the generated dataset turned into the app's write sequence (per daily
//! report its children, then the report; now and then an employee's rate change and a deleted
//! child pulled from its report), written with the `mongodb` driver, paced or all at once; the
//! broker's own publish-and-confirm limit.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bson::oid::ObjectId;
use bson::{Bson, DateTime, Document, doc};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mongodb::Database;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::workload::Workload;

/// One write of the app, one change event.
#[derive(Debug, Clone)]
pub enum Op {
    Insert {
        coll: &'static str,
        doc: Document,
    },
    /// A daily report: its row in `dim_daily_report` is what the latency is measured on.
    Report(Document),
    /// A rate added to an employee (re-derives that employee's work rows).
    RateChange {
        employee: ObjectId,
        rate: Document,
    },
    /// A child deleted, then pulled from its report's list (two events).
    DeleteChild {
        id: ObjectId,
    },
    PullChild {
        report: ObjectId,
        id: ObjectId,
    },
}

const CHILDREN: [(&str, &str); 4] = [
    ("employeeWork", "employeeworks"),
    ("vehicleWork", "vehicleworks"),
    ("materialShipment", "materialshipments"),
    ("production", "productions"),
];
/// Writes in flight at once in a paced phase.
const IN_FLIGHT: usize = 32;
/// One rate change per this many reports.
const RATE_CHANGE_EVERY: usize = 40;
/// One deleted child per this many reports.
const DELETE_EVERY: usize = 25;

/// The dimensions (every collection but the reports and their children), and the app's write
/// sequence for the reports.
pub fn plan(w: &Workload) -> (Vec<(&'static str, Vec<Document>)>, Vec<Op>) {
    let is_child = |c: &str| CHILDREN.iter().any(|(_, coll)| *coll == c);
    let dims = w
        .collections
        .iter()
        .filter(|(c, _)| **c != "dailyreports" && **c != "systems" && !is_child(c))
        .map(|(c, d)| (*c, d.clone()))
        .collect();
    let by_id: HashMap<ObjectId, (&'static str, &Document)> = CHILDREN
        .iter()
        .flat_map(|(_, coll)| w.collections[coll].iter().map(move |d| (*coll, d)))
        .filter_map(|(c, d)| Some((d.get_object_id("_id").ok()?, (c, d))))
        .collect();
    let employees: Vec<ObjectId> = w.collections["employees"]
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok())
        .collect();
    let mut ops = Vec::new();
    for (r, report) in w.collections["dailyreports"].iter().enumerate() {
        for (field, _) in CHILDREN {
            for id in report.get_array(field).into_iter().flatten() {
                if let Some((coll, d)) = id.as_object_id().and_then(|id| by_id.get(&id)) {
                    ops.push(Op::Insert {
                        coll,
                        doc: (*d).clone(),
                    });
                }
            }
        }
        ops.push(Op::Report(report.clone()));
        if r % RATE_CHANGE_EVERY == RATE_CHANGE_EVERY - 1 {
            let day = 1_672_531_200_000 + 86_400_000 * (r as i64 % 365);
            ops.push(Op::RateChange {
                employee: employees[r % employees.len()],
                rate: doc! {"_id": ObjectId::new(), "date": DateTime::from_millis(day),
                "rate": 40.0 + (r % 13) as f64},
            });
        }
        if r % DELETE_EVERY == DELETE_EVERY - 1
            && let (Ok(report_id), Some(Bson::ObjectId(id))) = (
                report.get_object_id("_id"),
                report.get_array("vehicleWork").ok().and_then(|a| a.first()),
            )
        {
            ops.push(Op::DeleteChild { id: *id });
            ops.push(Op::PullChild {
                report: report_id,
                id: *id,
            });
        }
    }
    (dims, ops)
}

async fn write(db: &Database, op: &Op) -> mongodb::error::Result<()> {
    match op {
        Op::Insert { coll, doc } => {
            db.collection::<Document>(coll).insert_one(doc).await?;
        }
        Op::Report(d) => {
            db.collection::<Document>("dailyreports")
                .insert_one(d)
                .await?;
        }
        Op::RateChange { employee, rate } => {
            db.collection::<Document>("employees")
                .update_one(doc! {"_id": employee}, doc! {"$push": {"rates": rate}})
                .await?;
        }
        Op::DeleteChild { id } => {
            db.collection::<Document>("vehicleworks")
                .delete_one(doc! {"_id": id})
                .await?;
        }
        Op::PullChild { report, id } => {
            db.collection::<Document>("dailyreports")
                .update_one(doc! {"_id": report}, doc! {"$pull": {"vehicleWork": id}})
                .await?;
        }
    }
    Ok(())
}

/// Write `ops` as fast as the driver goes, in batches where consecutive inserts share a
/// collection (the backlog for the catch-up).
pub async fn write_all(db: &Database, ops: &[Op]) -> mongodb::error::Result<()> {
    let mut run: Vec<Document> = Vec::new();
    let mut run_coll = "";
    for op in ops {
        let (coll, d) = match op {
            Op::Insert { coll, doc } => (*coll, doc),
            Op::Report(d) => ("dailyreports", d),
            other => {
                flush(db, run_coll, &mut run).await?;
                write(db, other).await?;
                continue;
            }
        };
        if coll != run_coll || run.len() >= 500 {
            flush(db, run_coll, &mut run).await?;
            run_coll = coll;
        }
        run.push(d.clone());
    }
    flush(db, run_coll, &mut run).await
}

async fn flush(db: &Database, coll: &str, run: &mut Vec<Document>) -> mongodb::error::Result<()> {
    if !run.is_empty() {
        db.collection::<Document>(coll)
            .insert_many(std::mem::take(run))
            .await?;
    }
    Ok(())
}

/// What a paced writer did.
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    pub written: usize,
    pub elapsed: Duration,
    /// How far behind its schedule the last write started.
    pub behind: Duration,
}

/// Write `ops` one by one at `rate` per second (up to `IN_FLIGHT` at once, each started at its
/// scheduled time or as soon as a slot frees) for `hold`: a writer that falls behind stops at
/// `hold` with fewer written. Each report's write time goes to `track`.
pub async fn write_paced(
    db: &Database,
    ops: &[Op],
    rate: f64,
    hold: Duration,
    track: &Tracker,
) -> Paced {
    let start = Instant::now();
    let n = ops.len().min((rate * hold.as_secs_f64()) as usize);
    let behind = std::sync::Mutex::new(Duration::ZERO);
    let started = std::sync::atomic::AtomicUsize::new(0);
    futures_util::stream::iter(ops[..n].iter().enumerate())
        .take_while(|_| std::future::ready(start.elapsed() < hold))
        .map(|(k, op)| {
            started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let behind = &behind;
            async move {
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                let at = Instant::now();
                *behind.lock().expect("not poisoned") = at - due;
                write(db, op).await.expect("write to mongosim");
                if let Op::Report(d) = op
                    && let Ok(id) = d.get_object_id("_id")
                {
                    track.written(id.to_hex(), at).await;
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|_| async {})
        .await;
    let behind = *behind.lock().expect("not poisoned");
    Paced {
        // The stream starts the writes in order, so these are the first `written` of `ops`.
        written: started.into_inner(),
        elapsed: start.elapsed(),
        behind,
    }
}

/// Reports written and not yet seen in PostgreSQL, and the latencies of those seen.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Tracked>,
}

/// Pending reports (hex `_id`, write start) and the latencies measured.
type Tracked = (VecDeque<(String, Instant)>, Vec<Duration>);

impl Tracker {
    async fn written(&self, id: String, at: Instant) {
        self.inner.lock().await.0.push_back((id, at));
    }

    /// One poll: which pending reports have their row committed now.
    pub async fn poll(&self, pg: &tokio_postgres::Client) {
        let ids: Vec<String> = self
            .inner
            .lock()
            .await
            .0
            .iter()
            .take(2000)
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        let rows = pg
            .query(
                "SELECT mongo_id FROM dim_daily_report WHERE mongo_id = ANY($1)",
                &[&ids],
            )
            .await
            .expect("poll dim_daily_report");
        let seen = Instant::now();
        let found: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut g = self.inner.lock().await;
        let (pending, lat) = &mut *g;
        pending.retain(|(id, at)| {
            if found.contains(id) {
                lat.push(seen - *at);
                false
            } else {
                true
            }
        });
    }

    pub async fn pending(&self) -> usize {
        self.inner.lock().await.0.len()
    }

    /// Latencies measured so far, and those still missing; resets both.
    pub async fn take(&self) -> (Vec<Duration>, usize) {
        let mut g = self.inner.lock().await;
        let missing = g.0.len();
        g.0.clear();
        (std::mem::take(&mut g.1), missing)
    }
}

/// The broker's publish-and-confirm limit: `n` persistent messages of `size` bytes into a
/// quorum queue of the vhost, with at most `window` unconfirmed (the capture's default).
pub async fn broker_limit(amqp_uri: &str, n: usize, size: usize, window: usize) -> f64 {
    let conn = Connection::connect(amqp_uri, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let queue = "e2e.broker-limit";
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the quorum queue");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm select");
    let body = vec![b'x'; size];
    let start = Instant::now();
    let mut inflight: VecDeque<lapin::PublisherConfirm> = VecDeque::with_capacity(window);
    for _ in 0..n {
        if inflight.len() >= window {
            let c = inflight.pop_front().expect("a confirm");
            assert!(c.await.expect("confirm").is_ack(), "nacked");
        }
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        inflight.push_back(c);
    }
    for c in inflight {
        assert!(c.await.expect("confirm").is_ack(), "nacked");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = ch
        .queue_delete(queue.into(), Default::default())
        .await
        .expect("delete the queue");
    let _ = conn.close(200, "done".into()).await;
    rate
}
