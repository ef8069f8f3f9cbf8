//! The backfill Job's HTTP port: Prometheus can scrape its progress while it runs.

use std::process::Stdio;
use std::time::Duration;

use bowmark_cdc::project::PROJECT_LOCK_KEY;

use super::workload::{Shape, Workload};
use crate::support::{self, migrated_db};

#[tokio::test]
async fn a_running_backfill_serves_its_progress_on_metrics() {
    // Given a dump, and a database whose projection lock another session holds (the backfill
    // starts, then waits at its first chunk)
    let dir = tempfile::tempdir().expect("tempdir");
    Workload::generate(5, Shape::small(3))
        .write_dump(dir.path())
        .expect("write dump");
    let db = migrated_db().await;
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&PROJECT_LOCK_KEY])
        .await
        .expect("hold the projection lock");
    // When the backfill runs with its HTTP port on
    let mut cmd = support::cdc_bin();
    cmd.args([
        "backfill",
        "--pipeline",
        "pipeline/paving.toml",
        "--from-dump",
    ])
    .arg(dir.path())
    .envs(support::child_env(&db, None, None))
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn backfill");
    let tail = support::StderrTail::start(&mut child);
    let addr = tail.http_addr();
    // Then /metrics shows the first collection's documents while the backfill runs
    let body = support::eventually(
        "the backfill's progress on /metrics",
        Duration::from_secs(30),
        || async move {
            let (code, body) = support::http_get(addr, "/metrics").await;
            (code == 200
                && body.contains("cdc_backfill_documents_expected{")
                && body.contains("collection=\"companies\""))
            .then_some(body)
        },
    )
    .await;
    assert!(body.contains("pipeline=\"paving\""), "{body}");
    assert_eq!(support::http_get(addr, "/healthz").await.0, 200);
    // And once the lock is free it completes and exits 0
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&PROJECT_LOCK_KEY])
        .await
        .expect("release");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "backfill exited with {status}");
}
