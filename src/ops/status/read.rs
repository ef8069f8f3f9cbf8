//! What `status` reads: the capture lock's holder, the checkpoint, the last backfill, the
//! migrations and the queues.

use super::*;

/// The session holding the capture's advisory lock (`pg_try_advisory_lock(bigint)`: `classid`
/// holds the key's high 32 bits, `objid` its low 32 bits, `objsubid` 1).
pub(super) async fn capture_leader(
    client: &Client,
    pipeline: &str,
) -> Result<Option<CaptureLeader>, OpsError> {
    let key = u64::from_ne_bytes(leader::lock_key(pipeline).to_ne_bytes());
    let (hi, lo) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
    let row = client
        .query_opt(
            "SELECT l.pid, a.application_name, host(a.client_addr), a.client_hostname, \
                    a.backend_start \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
             LIMIT 1",
            &[&hi, &lo],
        )
        .await
        .map_err(OpsError::pg("pg_locks"))?;
    Ok(row.map(|r| CaptureLeader {
        pid: r.get(0),
        application_name: r.get::<_, Option<String>>(1).filter(|s| !s.is_empty()),
        client_addr: r.get(2),
        client_hostname: r.get(3),
        session_started_at: r.get(4),
    }))
}

pub(super) async fn checkpoint(
    client: &Client,
    pipeline: &str,
    now: DateTime<Utc>,
) -> Result<Option<CheckpointInfo>, OpsError> {
    let Some(cp) = CheckpointStore::new(client)
        .load(pipeline)
        .await
        .map_err(OpsError::pg("cdc.checkpoint"))?
    else {
        return Ok(None);
    };
    let updated_at: DateTime<Utc> = client
        .query_one(
            "SELECT updated_at FROM cdc.checkpoint WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(OpsError::pg("cdc.checkpoint"))?
        .get(0);
    Ok(Some(CheckpointInfo {
        cluster_time: cp.cluster_time.map(|c| format!("{}.{}", c.t, c.i)),
        cluster_time_age_secs: cp.cluster_time.map(|c| now.timestamp() - i64::from(c.t)),
        event_id: cp.event_id,
        updated_at,
        age_secs: (now - updated_at).num_seconds().max(0),
    }))
}

pub(super) async fn backfill(
    client: &Client,
    pipeline: &str,
) -> Result<Option<BackfillInfo>, OpsError> {
    let Some(run) = client
        .query_opt(
            "SELECT source, source_name, started_at, finished_at FROM cdc.backfill_run \
             WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(OpsError::pg("cdc.backfill_run"))?
    else {
        return Ok(None);
    };
    let collections = client
        .query(
            "SELECT collection, status, docs_done, docs_total, updated_at, finished_at \
             FROM cdc.backfill_progress WHERE pipeline = $1 ORDER BY started_at, collection",
            &[&pipeline],
        )
        .await
        .map_err(OpsError::pg("cdc.backfill_progress"))?
        .iter()
        .map(|r| BackfillCollection {
            collection: r.get(0),
            status: r.get(1),
            done: r.get(2),
            total: r.get(3),
            updated_at: r.get(4),
            finished_at: r.get(5),
        })
        .collect();
    Ok(Some(BackfillInfo {
        source: run.get(0),
        source_name: run.get(1),
        started_at: run.get(2),
        finished_at: run.get(3),
        collections,
    }))
}

pub(super) async fn migrations(client: &Client) -> Result<MigrationsInfo, OpsError> {
    let embedded = migrate::embedded_migrations();
    let present: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&migrate::HISTORY_TABLE],
        )
        .await
        .map_err(OpsError::pg("catalog"))?
        .get(0);
    let applied: Vec<i64> = if present {
        client
            .query(
                &format!("SELECT version::bigint FROM {}", migrate::HISTORY_TABLE),
                &[],
            )
            .await
            .map_err(OpsError::pg(migrate::HISTORY_TABLE))?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    let latest = embedded
        .iter()
        .rfind(|m| applied.contains(&m.version))
        .map(|m| m.to_string());
    let pending = embedded
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| m.to_string())
        .collect();
    Ok(MigrationsInfo {
        applied: applied.len(),
        embedded: embedded.len(),
        latest,
        pending,
    })
}

/// A queue's depth and consumers by passive declare (on a channel of its own: a missing queue
/// closes the channel).
pub(super) async fn queue_info(
    conn: &lapin::Connection,
    name: &str,
) -> Result<QueueInfo, OpsError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(OpsError::broker("open channel"))?;
    let declared = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let info = match declared {
        Ok(q) => QueueInfo {
            name: name.to_string(),
            messages: Some(q.message_count()),
            consumers: Some(q.consumer_count()),
        },
        Err(e) if is_not_found(&e) => QueueInfo {
            name: name.to_string(),
            messages: None,
            consumers: None,
        },
        Err(e) => return Err(OpsError::broker("passive queue declare")(e)),
    };
    let _ = ch.close(200, "bye".into()).await;
    Ok(info)
}

pub(super) fn is_not_found(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("NOT_FOUND") || text.contains("404") || text.contains("no queue")
}
