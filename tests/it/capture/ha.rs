//! High availability: the advisory lock elects one tailing replica.

use super::*;

#[tokio::test]
async fn two_replicas_one_publishes_and_the_standby_takes_over_without_loss() {
    // Given two captures of one pipeline
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let a = fx.start().await;
    let b = fx.spawn(Health::default());
    eventually("the second replica to stand by", WAIT, || async {
        (b.health.state(Stage::Capture) == RoleState::Standby).then_some(())
    })
    .await;
    assert_eq!(a.health.state(Stage::Capture), RoleState::Active);
    // When writes flow, exactly one copy of each event is published
    let c = fx.coll("vehicles");
    tap.each_insert_published_once(&c, 100, Duration::from_millis(700), "no duplicates")
        .await;
    // When the active replica dies while writes continue
    a.kill().await;
    let start = std::time::Instant::now();
    for i in 100..200u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    eventually("the standby to take over", WAIT, || async {
        (b.health.state(Stage::Capture) == RoleState::Active).then_some(())
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // Then every later write arrives
    let got = tap
        .until("writes 100..200", |g| {
            let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
            (100..200u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
        })
        .await;
    assert!(!got.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn losing_the_lock_session_stops_tailing_and_the_capture_recovers() {
    // Given a capture holding the lock
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("materials");
    c.insert_one(doc! {"_id": oid(1)}).await.unwrap();
    tap.take(1).await;
    // When PostgreSQL terminates the session that holds the advisory lock
    let admin = fx.db.client().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one lock session");
    // Then the capture takes the lock again and keeps delivering
    c.insert_one(doc! {"_id": oid(2)}).await.unwrap();
    tap.until("the write after the lock loss", |g| {
        g.iter().any(|d| d.event.key == oid(2).to_hex())
    })
    .await;
    eventually("the lock to be held again", WAIT, || async {
        let n = admin
            .query(
                "SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .len();
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(run.health.state(Stage::Capture), RoleState::Active);
    run.stop().await;
}

// --- a frozen leader (SIGSTOP) against the real binary ---------------------------------------

/// A `bowmark-cdc run --role capture` process calling itself `host` (its lock session is named
/// `bowmark-cdc capture <host>`), its log kept.
struct Replica {
    child: std::process::Child,
    log: support::StderrTail,
}

impl Replica {
    fn spawn(fx: &Fixture, file: &tempfile::NamedTempFile, host: &str) -> Replica {
        let mut child = support::cdc_bin()
            .args(["run", "--role", "capture", "--pipeline"])
            .arg(file.path())
            .envs(support::child_env(
                &fx.db,
                Some(&fx.vhost),
                Some(fx.m.uri()),
            ))
            .env("HOSTNAME", host)
            .env("RUST_LOG", "bowmark_cdc=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bowmark-cdc");
        let log = support::StderrTail::start(&mut child);
        Replica { child, log }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events a capture process has published (`cdc_capture_events_published_total`, summed).
async fn published(addr: std::net::SocketAddr) -> f64 {
    let (_, body) = support::http_get(addr, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("cdc_capture_events_published_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Record every stored checkpoint: which session wrote it (its application name) and the
/// cluster time before and after.
async fn record_checkpoint_writes(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.checkpoint_writes (n bigserial PRIMARY KEY, app text, \
               old_t bigint, old_i bigint, new_t bigint, new_i bigint); \
             CREATE FUNCTION public.record_checkpoint_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               INSERT INTO public.checkpoint_writes (app, old_t, old_i, new_t, new_i) VALUES ( \
                 current_setting('application_name'), \
                 CASE WHEN TG_OP = 'UPDATE' THEN OLD.cluster_time_t END, \
                 CASE WHEN TG_OP = 'UPDATE' THEN OLD.cluster_time_i END, \
                 NEW.cluster_time_t, NEW.cluster_time_i); \
               RETURN NEW; \
             END $$; \
             CREATE TRIGGER record_write AFTER INSERT OR UPDATE ON cdc.checkpoint \
               FOR EACH ROW EXECUTE FUNCTION public.record_checkpoint_write();",
        )
        .await
        .expect("checkpoint write trigger");
}

/// The application name of the session holding the capture lock, if any.
async fn lock_holder(admin: &tokio_postgres::Client) -> Option<String> {
    admin
        .query_opt(
            "SELECT a.application_name FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
               AND a.application_name LIKE 'bowmark-cdc capture %'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_the_lock_in_time_and_stands_down_without_writing() {
    // Given replica A leading and replica B standing by, every checkpoint write recorded
    let fx = Fixture::new("paving").await;
    record_checkpoint_writes(&fx.db).await;
    let admin = fx.db.client().await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let file = process::pipeline_file(&fx).await;
    let a = Replica::spawn(&fx, &file, "replica-a");
    let a_http = a.log.http_addr();
    eventually("replica A to hold the lock", WAIT, || async {
        (lock_holder(&admin).await.as_deref() == Some("bowmark-cdc capture replica-a"))
            .then_some(())
    })
    .await;
    let b = Replica::spawn(&fx, &file, "replica-b");
    eventually("replica B to stand by", WAIT, || async {
        b.log.text().contains("standing by").then_some(())
    })
    .await;
    let c = fx.coll("vehicles");
    for i in 0..20u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    tap.until("writes 0..20 from A", |g| {
        let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
        (0..20u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
    })
    .await;
    eventually("A to write the checkpoint while leading", WAIT, || async {
        let by_a: i64 = admin
            .query_one(
                "SELECT count(*) FROM public.checkpoint_writes \
                 WHERE app = 'bowmark-cdc capture replica-a'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (by_a > 0).then_some(())
    })
    .await;

    let published_by_a = published(a_http).await;
    assert!(published_by_a >= 20.0, "{published_by_a}");

    // When A freezes (SIGSTOP: its kernel still answers TCP, so its session stays open)
    a.signal("-STOP");
    let frozen = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last_before: i64 = admin
        .query_one(
            "SELECT coalesce(max(n), 0) FROM public.checkpoint_writes",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for i in 20..40u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    // Then B holds the lock within 20 s
    eventually(
        "replica B to take the lock",
        Duration::from_secs(25),
        || async {
            (lock_holder(&admin).await.as_deref() == Some("bowmark-cdc capture replica-b"))
                .then_some(())
        },
    )
    .await;
    let takeover = frozen.elapsed();
    eprintln!("takeover after SIGSTOP: {takeover:?}");
    assert!(takeover < Duration::from_secs(20), "took {takeover:?}");
    // And B publishes what was written meanwhile
    tap.until("writes 20..40 from B", |g| {
        let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
        (20..40u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
    })
    .await;

    // When A resumes (SIGCONT) while writes continue
    a.signal("-CONT");
    for i in 40..60u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    // Then A says it lost the lease and stands by; B keeps the lock and delivers everything
    eventually("replica A to stand down", WAIT, || async {
        let log = a.log.text();
        (log.contains("capture lease expired") || log.contains("capture lock session ended"))
            .then_some(())
    })
    .await;
    tap.until("writes 40..60 from B", |g| {
        let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
        (40..60u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
    })
    .await;
    // (B writes the checkpoint at least once more after A resumed.)
    let resumed_at: i64 = admin
        .query_one(
            "SELECT coalesce(max(n), 0) FROM public.checkpoint_writes",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eventually(
        "replica B to write the checkpoint after A resumed",
        WAIT,
        || async {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM public.checkpoint_writes \
                 WHERE n > $1 AND app = 'bowmark-cdc capture replica-b'",
                    &[&resumed_at],
                )
                .await
                .unwrap()
                .get(0);
            (n > 0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lock_holder(&admin).await.as_deref(),
        Some("bowmark-cdc capture replica-b")
    );
    // And A wrote no checkpoint after it froze, and the checkpoint never moved backward
    let rows = admin
        .query(
            "SELECT n, app, old_t, old_i, new_t, new_i FROM public.checkpoint_writes \
             WHERE n > $1 ORDER BY n",
            &[&last_before],
        )
        .await
        .unwrap();
    for r in &rows {
        let app: String = r.get(1);
        assert_eq!(
            app,
            "bowmark-cdc capture replica-b",
            "checkpoint write #{} after the freeze by {app}",
            r.get::<_, i64>(0)
        );
        let old: (Option<i64>, Option<i64>) = (r.get(2), r.get(3));
        let new: (Option<i64>, Option<i64>) = (r.get(4), r.get(5));
        if let ((Some(ot), Some(oi)), (Some(nt), Some(ni))) = (old, new) {
            assert!(
                (nt, ni) >= (ot, oi),
                "checkpoint moved backward: {old:?} -> {new:?}"
            );
        }
    }
    // And A published nothing after it resumed (what it read meanwhile stays unpublished)
    assert_eq!(published(a_http).await, published_by_a);
    let a_log = a.log.text();
    for line in a_log
        .lines()
        .filter(|l| l.contains("lease") || l.contains("lock"))
    {
        eprintln!("replica A: {line}");
    }
    assert!(
        a_log.contains("standing by"),
        "A stands by after resuming:\n{a_log}"
    );
    drop(a);
    drop(b);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_holder_gives_the_lease_up_before_the_server_would_and_frees_the_lock() {
    use bowmark_cdc::capture::leader::{LEASE_MARGIN, LEASE_TTL, Lease, lock_key};
    // Given a lock session holding the capture lock
    let db = TestDb::new().await;
    let key = lock_key("paving");
    let lease = Lease::connect(&db.conn()).await.unwrap();
    assert!(lease.try_lock(key).await.unwrap());
    lease.valid().unwrap();
    // When the process stalls (nothing of it runs: no pings) past the lease's local deadline
    // but not past the server's idle timeout
    std::thread::sleep(LEASE_TTL - LEASE_MARGIN + Duration::from_millis(500));
    // Then the server still holds the lock for it (asked from another thread: this runtime
    // stays stalled until the lease is checked)
    let name = db.name.clone();
    let held = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = support::pg_connect(&name).await;
            c.query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        })
    })
    .join()
    .unwrap();
    assert_eq!(
        held, 1,
        "the server ended the session before the holder gave up"
    );
    // And the lease is no longer valid: no publish, no checkpoint write
    assert!(matches!(lease.valid(), Err(CaptureError::LeaseLost)));
    assert!(lease.lost().is_cancelled());
    // And the holder closes its lock session, so another replica gets the lock at once
    let start = std::time::Instant::now();
    let other = Lease::connect(&db.conn()).await.unwrap();
    eventually("the lock to be free", LEASE_TTL, || async {
        other.try_lock(key).await.unwrap().then_some(())
    })
    .await;
    eprintln!("lock free {:?} after the holder gave up", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
