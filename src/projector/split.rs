//! A batch's retries. Transient failures retry the same batch with backoff. A PostgreSQL
//! statement or lock timeout (`statement_timeout`, `lock_timeout`) may be the batch's size or
//! one document whose projection is slow or waits on a held row: the batch is split in halves,
//! applied in order (each half its own transaction), down to single documents; one that still
//! times out [`ISOLATE_AFTER`] times alone is isolated (stored in the mirror, quarantined, its
//! rows not derived) and the rest of the batch goes on. The deliveries are acked only after
//! every part committed; a redelivery of a committed part is a no-op (version guard).

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;

use super::apply::{self, Applied};
use super::{ProjectorError, Worker, retry_policy};
use crate::health::Dependency;
use crate::project::{ErrorClass, SourceDoc};

/// Timeouts in a row of one document applied alone before it is isolated.
pub(super) const ISOLATE_AFTER: u32 = 3;

impl Worker<'_> {
    /// Apply `docs` (split on timeouts, see the module docs). `None`: shutdown came while
    /// waiting to retry; what is not committed is abandoned (nothing is acked).
    pub(super) async fn apply_with_retry(
        &self,
        docs: &[SourceDoc],
        shutdown: &CancellationToken,
    ) -> Result<Option<Applied>, ProjectorError> {
        let stage = self.stage;
        let (pool, pipeline) = (&stage.pool, &stage.pipeline);
        let mut out = Applied::default();
        let mut parts = VecDeque::from([(0, docs.len())]);
        let mut delays = retry_policy();
        let mut alone_timeouts = 0u32;
        while let Some((a, b)) = parts.pop_front() {
            let part = &docs[a..b];
            let e = match apply::apply_batch(pool, pipeline, part).await {
                Ok(applied) => {
                    out.absorb(applied, a);
                    alone_timeouts = 0;
                    continue;
                }
                Err(e) if e.class() != ErrorClass::Transient => return Err(e),
                Err(e) => e,
            };
            if matches!(e, ProjectorError::Pool(_) | ProjectorError::Postgres { .. }) {
                stage.health.set_connected(Dependency::Postgres, false);
            }
            let action = if e.is_timeout() && part.len() > 1 {
                let mid = a + part.len() / 2;
                parts.push_front((mid, b));
                parts.push_front((a, mid));
                "splitting the batch after a PostgreSQL timeout"
            } else if e.is_timeout() {
                alone_timeouts += 1;
                if alone_timeouts >= ISOLATE_AFTER {
                    let reason = format!(
                        "its projection timed out {alone_timeouts} times in a row, applied \
                         alone: {}; its star rows were not derived",
                        super::error_chain(&e)
                    );
                    match apply::isolate(pool, pipeline, &part[0], &reason).await {
                        Ok(applied) => {
                            out.absorb(applied, a);
                            alone_timeouts = 0;
                            continue;
                        }
                        Err(e) if e.class() != ErrorClass::Transient => return Err(e),
                        // (the mirror's own row waits too: retried like any transient failure)
                        Err(_) => {}
                    }
                }
                parts.push_front((a, b));
                "retrying the document alone after a PostgreSQL timeout"
            } else {
                parts.push_front((a, b));
                "retrying the batch"
            };
            let delay = delays.next_delay();
            stage.record_retry(&e, delay, action);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        Ok(Some(out))
    }
}
