//! The read side: queue depth (a passive `queue.declare`'s message count), the daemon's CPU and
//! memory from /proc, rows in PostgreSQL; one catch-up and one paced phase, and the report.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::load::{Paced, Tracker};
use crate::services::{self, Private, ProcSample};

/// How often depth and /proc are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often pending reports are looked up in PostgreSQL.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long the writer may run past the phase before the run fails as stalled.
const WRITER_LIMIT: Duration = Duration::from_secs(60);
/// How long after a phase its reports may take to appear before they count as missing.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

pub struct Monitor<'s> {
    conn: Connection,
    ch: Channel,
    sim: &'s mongosim::Sim,
    tck: f64,
}

/// Samples of one phase: (seconds since its start, queue depth, VmRSS KiB).
#[derive(Default)]
struct Series {
    points: Vec<(f64, u32, u64)>,
}

impl Series {
    fn max_depth(&self) -> u32 {
        self.points.iter().map(|p| p.1).max().unwrap_or(0)
    }

    /// Median VmRSS of the samples in `[from, to)` seconds.
    fn median_rss(&self, from: f64, to: f64) -> f64 {
        let mut v: Vec<u64> = self
            .points
            .iter()
            .filter(|p| p.0 >= from && p.0 < to)
            .map(|p| p.2)
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
    }

    /// Depth once a second, for the JSON.
    fn per_second(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = 0.0;
        for p in &self.points {
            if p.0 >= next {
                out.push(json!([p.0.round(), p.1]));
                next = p.0.floor() + 1.0;
            }
        }
        out
    }
}

/// Means over a phase from the daemon's own histograms: where the time of an event goes.
async fn scrape(pid: u32) -> BTreeMap<String, f64> {
    match services::http_port(pid) {
        Some(port) => services::scrape(port).await,
        None => BTreeMap::new(),
    }
}

fn stages(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let mean = |h: &str, scale: f64| {
        let n = d(&format!("{h}_count"));
        (n > 0.0).then(|| (d(&format!("{h}_sum")) / n * scale * 100.0).round() / 100.0)
    };
    json!({
        "capture_confirm_ms_mean": mean("cdc_capture_confirm_latency_seconds", 1000.0),
        "projector_batches": d("cdc_projector_batch_events_count"),
        "projector_batch_events_mean": mean("cdc_projector_batch_events", 1.0),
        "projector_batch_ms_mean": mean("cdc_projector_batch_duration_seconds", 1000.0),
        "projector_apply_ms_mean": mean("cdc_projector_apply_duration_seconds", 1000.0),
    })
}

pub struct CatchUp {
    /// Cores used per command over the phase.
    pub cores: Value,
    pub stages: Value,
    pub events: usize,
    pub secs: f64,
    pub cpu_us: f64,
    series: Series,
}

impl CatchUp {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }

    pub fn to_json(&self, broker: f64) -> Value {
        json!({
            "events": self.events,
            "seconds": self.secs,
            "events_per_s": self.rate().round(),
            "pct_of_broker_limit": (1000.0 * self.rate() / broker).round() / 10.0,
            "cpu_us_per_event": (self.cpu_us / self.events as f64 * 10.0).round() / 10.0,
            "max_queue_depth": self.series.max_depth(),
            "steady_rss_mib": self.series.median_rss(self.secs / 2.0, f64::MAX),
            "daemon_stages": self.stages,
            "cores_by_command": self.cores,
            "queue_depth_per_s": self.series.per_second(),
        })
    }
}

pub struct Phase {
    pub cores: Value,
    pub stages: Value,
    pub rate: f64,
    pub paced: Paced,
    pub latencies: Vec<Duration>,
    pub missing: usize,
    pub drain_secs: f64,
    pub cpu_us: f64,
    pub hold: Duration,
    series: Series,
}

fn pct(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[i].as_secs_f64() * 1000.0)
}

impl Phase {
    pub fn achieved(&self) -> f64 {
        self.paced.written as f64 / self.paced.elapsed.as_secs_f64()
    }

    /// The writer kept its schedule and every report's row appeared within a second of the
    /// phase's end.
    pub fn held(&self) -> bool {
        self.achieved() >= 0.95 * self.rate
            && self.paced.behind < Duration::from_secs(1)
            && self.missing == 0
            && self.drain_secs <= 1.0
    }

    /// Empty when held; otherwise which side could not keep the rate.
    pub fn verdict(&self) -> String {
        if self.held() {
            String::new()
        } else if self.achieved() < 0.95 * self.rate {
            format!(" (NOT held: the writer reached {:.0}/s)", self.achieved())
        } else {
            format!(
                " (NOT held: the rows came {:.1} s after the writes ended)",
                self.drain_secs
            )
        }
    }

    pub fn percentiles(&self) -> [Option<f64>; 3] {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        [pct(&v, 50.0), pct(&v, 95.0), pct(&v, 99.0)]
    }

    pub fn to_json(&self) -> Value {
        let [p50, p95, p99] = self.percentiles();
        let hold = self.hold.as_secs_f64();
        json!({
            "target_events_per_s": self.rate,
            "written_events": self.paced.written,
            "achieved_events_per_s": self.achieved().round(),
            "writer_behind_ms": self.paced.behind.as_millis() as u64,
            "held": self.held(),
            "verdict": self.verdict().trim(),
            "latency_samples": self.latencies.len(),
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "missing_rows": self.missing,
            "drain_after_phase_s": self.drain_secs,
            "cpu_us_per_event": (self.cpu_us / self.paced.written as f64 * 10.0).round() / 10.0,
            "steady_rss_mib": self.series.median_rss(hold / 2.0, hold),
            "max_queue_depth": self.series.max_depth(),
            "daemon_stages": self.stages,
            "cores_by_command": self.cores,
            "queue_depth_per_s": self.series.per_second(),
        })
    }
}

impl<'s> Monitor<'s> {
    pub async fn connect(p: &Private, sim: &'s mongosim::Sim) -> Monitor<'s> {
        let conn = Connection::connect(&p.amqp_uri(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        Monitor {
            conn,
            ch,
            sim,
            tck: services::clk_tck(),
        }
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }

    async fn sample(&self, pid: u32, t0: Instant, series: &mut Series) -> ProcSample {
        let depth = bowmark_cdc::topology::depth(&self.ch, "cdc.projector")
            .await
            .expect("queue depth");
        let s = services::sample(pid, self.tck);
        series
            .points
            .push((t0.elapsed().as_secs_f64(), depth, s.rss_kib));
        // The simulator keeps a log of every command; the harness never reads it.
        self.sim.clear_command_log();
        s
    }

    /// From the daemon's start until `reports` daily-report rows are committed.
    pub async fn catch_up(
        &self,
        pid: u32,
        pg: &tokio_postgres::Client,
        events: usize,
        reports: i64,
    ) -> CatchUp {
        let t0 = Instant::now();
        let start = services::sample(pid, self.tck);
        let mut series = Series::default();
        let mut before = BTreeMap::new();
        let machine = services::cpu_by_command(self.tck);
        loop {
            if before.is_empty() {
                before = scrape(pid).await;
            }
            let s = self.sample(pid, t0, &mut series).await;
            let n: i64 = pg
                .query_one("SELECT count(*) FROM dim_daily_report", &[])
                .await
                .expect("count reports")
                .get(0);
            if n >= reports {
                let secs = t0.elapsed().as_secs_f64();
                return CatchUp {
                    cores: services::cpu_split(&machine, &services::cpu_by_command(self.tck), secs),
                    stages: stages(&before, &scrape(pid).await),
                    events,
                    secs,
                    cpu_us: s.cpu_us - start.cpu_us,
                    series,
                };
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "catch-up stalled at {n} reports"
            );
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Run `write` while sampling and polling for the tracked reports, then wait (bounded) for
    /// the rest of them.
    pub async fn paced<F, Fut>(
        &self,
        pid: u32,
        pg: &tokio_postgres::Client,
        tracker: &Tracker,
        rate: f64,
        hold: Duration,
        write: F,
    ) -> Phase
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Paced>,
    {
        let t0 = Instant::now();
        let start = services::sample(pid, self.tck);
        let before = scrape(pid).await;
        let machine = services::cpu_by_command(self.tck);
        let mut series = Series::default();
        let mut writer = std::pin::pin!(write());
        let mut next_sample = Instant::now();
        let paced = loop {
            assert!(
                t0.elapsed() < hold + WRITER_LIMIT,
                "the writer stalled: no progress {} s after the phase's end",
                WRITER_LIMIT.as_secs()
            );
            tokio::select! {
                p = &mut writer => break p,
                _ = tokio::time::sleep(POLL_EVERY) => {
                    tracker.poll(pg).await;
                    if Instant::now() >= next_sample {
                        self.sample(pid, t0, &mut series).await;
                        next_sample += SAMPLE_EVERY;
                    }
                }
            }
        };
        let end = Instant::now();
        let cores = services::cpu_split(
            &machine,
            &services::cpu_by_command(self.tck),
            t0.elapsed().as_secs_f64(),
        );
        while tracker.pending().await > 0 && end.elapsed() < DRAIN_LIMIT {
            tracker.poll(pg).await;
            if Instant::now() >= next_sample {
                self.sample(pid, t0, &mut series).await;
                next_sample += SAMPLE_EVERY;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let drain_secs = end.elapsed().as_secs_f64();
        let cpu_us = services::sample(pid, self.tck).cpu_us - start.cpu_us;
        let (latencies, missing) = tracker.take().await;
        Phase {
            cores,
            stages: stages(&before, &scrape(pid).await),
            rate,
            paced,
            latencies,
            missing,
            drain_secs,
            cpu_us,
            hold,
            series,
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

pub fn print_table(report: &Value, c: &CatchUp, phases: &[Phase], broker: f64, hwm_kib: u64) {
    println!();
    println!("e2e: bowmark-cdc run --role all, paving pipeline");
    println!(
        "| measure | events | events/s | latency p50 / p95 / p99 ms | CPU µs/event | steady RSS MiB | max queue depth |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| broker limit (persistent, quorum, confirms, {} B) | | {broker:.0} | | | | |",
        report["broker_message_bytes"]
    );
    let cj = c.to_json(broker);
    println!(
        "| catch-up (backlog, daemon restarted) | {} | {:.0} ({}% of the broker's limit) | | {} | {:.0} | {} |",
        c.events,
        c.rate(),
        cj["pct_of_broker_limit"],
        cj["cpu_us_per_event"],
        c.series.median_rss(c.secs / 2.0, f64::MAX),
        c.series.max_depth()
    );
    for p in phases {
        let [p50, p95, p99] = p.percentiles();
        let j = p.to_json();
        println!(
            "| {:.0} events/s for {} s{} | {} | {:.0} | {} / {} / {} | {} | {:.0} | {} |",
            p.rate,
            p.hold.as_secs(),
            p.verdict(),
            p.paced.written,
            p.achieved(),
            ms(p50),
            ms(p95),
            ms(p99),
            j["cpu_us_per_event"],
            j["steady_rss_mib"].as_f64().unwrap_or(0.0),
            p.series.max_depth(),
        );
    }
    println!();
    println!(
        "| phase | capture confirm ms | projector batches | events/batch | batch ms | apply ms |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: String, st: &Value| {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            st["capture_confirm_ms_mean"],
            st["projector_batches"],
            st["projector_batch_events_mean"],
            st["projector_batch_ms_mean"],
            st["projector_apply_ms_mean"]
        )
    };
    row("catch-up".into(), &c.stages);
    for p in phases {
        row(format!("{:.0} events/s", p.rate), &p.stages);
    }
    println!();
    println!("cores used by command (machine busy = all of them):");
    println!("  catch-up: {}", c.cores);
    for p in phases {
        println!("  {:.0} events/s: {}", p.rate, p.cores);
    }
    println!(
        "daemon peak RSS (VmHWM): {:.0} MiB",
        hwm_kib as f64 / 1024.0
    );
}
