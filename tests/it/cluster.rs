//! The daemon against a three-node RabbitMQ cluster (`scripts/rabbit-cluster.sh`): under a
//! steady stream of MongoDB writes, the node that leads `cdc.projector` dies, then, once it is
//! back, the node that leads it next. Every write still reaches PostgreSQL exactly as a fresh
//! backfill has it; the time without progress around each death is printed (never asserted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bson::doc;

use crate::projector::Daemon;
use crate::support::broker::Cluster;
use crate::support::{self, eventually};

const WAIT: Duration = Duration::from_secs(120);
const VHOST: &str = "bowmark";

/// Progress as a user sees it: the written companies in the reports, sampled over time.
#[derive(Default)]
struct Progress {
    /// (when, how many written companies PostgreSQL holds), at each change.
    changes: std::sync::Mutex<Vec<(Instant, i64)>>,
}

impl Progress {
    fn record(&self, n: i64) {
        let mut changes = self.changes.lock().unwrap();
        if changes.last().is_none_or(|c| c.1 != n) {
            changes.push((Instant::now(), n));
        }
    }

    fn projected(&self) -> i64 {
        self.changes.lock().unwrap().last().map_or(0, |c| c.1)
    }

    /// The longest time without progress that overlaps `[from, to]`.
    fn pause_around(&self, from: Instant, to: Instant) -> Duration {
        let changes = self.changes.lock().unwrap();
        changes
            .windows(2)
            .filter(|w| w[1].0 >= from && w[0].0 <= to)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default()
    }
}

async fn count_written(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM dim_company WHERE name LIKE 'load-%'",
        &[],
    )
    .await
    .expect("count")
    .get(0)
}

/// Wait until PostgreSQL holds `more` written companies beyond what it holds now.
async fn progress_after(progress: &Progress, more: i64, what: &str) {
    let base = progress.projected();
    eventually(what, WAIT, || async {
        (progress.projected() >= base + more).then_some(())
    })
    .await;
}

/// Kill the node that leads the projector queue; wait until progress resumes; returns the
/// node and when it died.
async fn kill_leader(cluster: &Cluster, alive: usize, progress: &Progress) -> (usize, Instant) {
    let (leader, online) =
        tokio::task::block_in_place(|| cluster.leader(alive, VHOST, "cdc.projector"))
            .expect("cdc.projector has a leader");
    assert_eq!(online, 3, "all three members are online before a node dies");
    let died = Instant::now();
    // (blocking calls off the runtime's workers: the simulator serves on them)
    tokio::task::block_in_place(|| cluster.run("kill", &[&leader.to_string()]));
    eprintln!("cluster: killed node {leader}, the leader of cdc.projector");
    progress_after(progress, 20, "progress after the leader died").await;
    (leader, died)
}

/// Revive node `n` and wait until the queue has three online members again.
async fn revive(cluster: &Cluster, n: usize) {
    tokio::task::block_in_place(|| cluster.run("revive", &[&n.to_string()]));
    eventually("the revived node back in cdc.projector", WAIT, || async {
        let ask = if n == 1 { 2 } else { 1 };
        tokio::task::block_in_place(|| cluster.leader(ask, VHOST, "cdc.projector"))
            .filter(|(_, online)| *online == 3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_leader_dying_twice_under_load_loses_no_write() {
    // Given a three-node cluster, MongoDB (the simulator) with a Bow-Mark workload, and the
    // daemon (both roles) given all three nodes
    let Some(cluster) = Cluster::start("load") else {
        return;
    };
    let sim = mongosim::Sim::start().await;
    let mongo = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let pipeline = support::pipeline("paving");
    let db = mongo.database(&pipeline.mongo_database);
    db.create_collection("companies").await.unwrap();
    let streamed = support::migrated_db().await;
    let mut env = support::child_env(&streamed, None, Some(&sim.uri()));
    env.push(("RABBITMQ_HOSTS".into(), cluster.hosts.clone()));
    env.push(("RABBITMQ_VHOST".into(), VHOST.into()));
    let mut daemon = Daemon::spawn(&["--role", "all"], env);
    eventually("/readyz with both roles active", WAIT, || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let workload = crate::backfill::workload::Workload::generate(
        18,
        crate::backfill::workload::Shape::small(12),
    );
    workload.insert(&db).await.expect("insert workload");

    // When companies are written and renamed without a break
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (stop, written) = (stop.clone(), written.clone());
        let companies = db.collection::<bson::Document>("companies");
        async move {
            let mut ids = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = ids.len();
                let id = bson::oid::ObjectId::new();
                companies
                    .insert_one(doc! {"_id": id, "name": format!("load-{i:05}")})
                    .await
                    .expect("insert");
                ids.push(id);
                if i % 4 == 3 {
                    let old = ids[i / 2];
                    companies
                        .update_one(
                            doc! {"_id": old},
                            doc! {"$set": {"name": format!("load-{:05}-renamed-{i}", i / 2)}},
                        )
                        .await
                        .expect("rename");
                }
                written.store(ids.len(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let progress = Arc::new(Progress::default());
    let sampler = tokio::spawn({
        let (progress, pg) = (progress.clone(), streamed.client().await);
        async move {
            loop {
                let n = count_written(&pg).await;
                progress.record(n);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    progress_after(&progress, 50, "the first writes in PostgreSQL").await;

    // And the node that leads cdc.projector dies; once progress resumed and it is back, the
    // node that leads next dies too
    let (first, first_died) = kill_leader(&cluster, 1, &progress).await;
    let first_resumed = Instant::now();
    revive(&cluster, first).await;
    progress_after(&progress, 20, "progress with the node back").await;
    let other = if first == 1 { 2 } else { 1 };
    let (second, second_died) = kill_leader(&cluster, other, &progress).await;
    let second_resumed = Instant::now();
    progress_after(&progress, 50, "progress after the second death").await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let written = written.load(Ordering::Relaxed) as i64;
    revive(&cluster, second).await;

    // Then every written company reaches PostgreSQL, and the daemon stops cleanly
    eventually("every written company in PostgreSQL", WAIT, || async {
        (progress.projected() == written).then_some(())
    })
    .await;
    sampler.abort();
    daemon.signal("-TERM");
    assert!(
        daemon.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        daemon.log()
    );
    eprintln!(
        "cluster: {written} companies written (plus renames); time without progress: \
         {:.1} s when node {first} died, {:.1} s when node {second} died",
        progress
            .pause_around(first_died, first_resumed)
            .as_secs_f64(),
        progress
            .pause_around(second_died, second_resumed)
            .as_secs_f64(),
    );

    // And the reports equal a fresh backfill of the final MongoDB state
    let (fresh, _) = crate::backfill::fresh_backfill(Some(&sim.uri()), &[]).await;
    assert_eq!(
        count_written(&fresh.client().await).await,
        written,
        "the backfill holds every written company"
    );
    let streamed = crate::project::law::star_of(&streamed.client().await).await;
    let backfilled = crate::project::law::star_of(&fresh.client().await).await;
    if let Err(diff) = crate::project::law::compare(&streamed, &backfilled) {
        panic!("stream and backfill differ: {diff}");
    }
}
