//! Simulator throughput through the real driver: inserts/s (insert_many batches of 1000)
//! and change events/s streamed to one watcher.
//!
//! Run: `cargo bench -p mongosim --bench throughput` (N documents: `MONGOSIM_BENCH_N`,
//! default 200000).

use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::Client;

fn main() {
    let n: usize = std::env::var("MONGOSIM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

fn doc_for(i: usize) -> Document {
    doc! {
        "_id": i as i64,
        "name": format!("employee {i}"),
        "rate": (i % 97) as f64 * 1.25,
        "active": !i.is_multiple_of(3),
        "tags": ["paving", "crew"],
        "address": {"city": "Calgary", "zip": format!("T{:05}", i % 100_000)},
    }
}

async fn insert_all(client: &Client, coll: &str, n: usize) -> Duration {
    let c = client.database("bench").collection::<Document>(coll);
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        c.insert_many((i..end).map(doc_for))
            .await
            .expect("insert_many");
        i = end;
    }
    t.elapsed()
}

async fn drain(client: &Client, coll: &str, start: bson::Timestamp, n: usize) -> Duration {
    let c = client.database("bench").collection::<Document>(coll);
    let mut s = c
        .watch()
        .start_at_operation_time(start)
        .max_await_time(Duration::from_millis(200))
        .await
        .expect("watch")
        .with_type::<Document>();
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        if s.next_if_any().await.expect("stream").is_some() {
            got += 1;
        }
    }
    t.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn run(n: usize) {
    let sim = mongosim::Sim::start().await;
    let client = Client::with_uri_str(sim.uri()).await.expect("client");
    client
        .database("bench")
        .run_command(doc! {"ping": 1})
        .await
        .expect("ping");

    // 1. inserts/s, no watcher.
    let d = insert_all(&client, "a", n).await;
    println!(
        "inserts: {n} docs in {d:.2?} = {:.0} inserts/s (insert_many x1000)",
        rate(n, d)
    );

    // 2. events/s: one watcher drains the backlog of phase 1 from the oplog.
    let start = bson::Timestamp {
        time: sim.cluster_time().time,
        increment: 0,
    };
    let d = drain(&client, "a", start, n).await;
    println!(
        "events (backlog): {n} events in {d:.2?} = {:.0} events/s",
        rate(n, d)
    );

    // 3. events/s live: a watcher streams while a writer inserts.
    let t0 = sim.cluster_time();
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move { drain(&client, "b", t0, n).await })
    };
    let t = Instant::now();
    let di = insert_all(&client, "b", n).await;
    watcher.await.expect("watcher");
    let total = t.elapsed();
    println!(
        "live: inserts {:.0}/s while watched; {n} events delivered end-to-end in {total:.2?} = {:.0} events/s",
        rate(n, di),
        rate(n, total)
    );
    sim.shutdown();
}
