//! The daemon's side of the capture stage: the start guard (the MongoDB database holds at
//! least one watched collection) and the re-snapshot it runs, through the backfill, when the
//! change stream's history is lost, or a watched collection is dropped, renamed or replaced by
//! `$out`, under `history_lost = "backfill"`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backfill::{BackfillOptions, ProgressMode, run_backfill, watched_in_database};
use crate::capture::{CaptureStage, ResnapshotCause};
use crate::config::{HistoryLostPolicy, Settings};
use crate::health::{Health, Stage};

use super::{RuntimeError, START_CHECK_TIMEOUT};

/// The capture stage of `settings`, re-snapshotting on lost history when the pipeline says so.
pub fn capture_stage(settings: &Settings, health: Health) -> CaptureStage {
    let stage = CaptureStage::new(settings.clone(), health);
    if settings.pipeline.history_lost != HistoryLostPolicy::Backfill {
        return stage;
    }
    let settings = settings.clone();
    stage.on_history_lost(Arc::new(move |cause, shutdown| {
        Box::pin(resnapshot(settings.clone(), cause, shutdown))
    }))
}

/// Re-snapshot every watched collection with a fresh backfill (`--restart`, so the position
/// handed off is taken now, after `cause`), which stores its pre-scan position as the capture
/// checkpoint. After a drop, rename or `$out` the documents the collection no longer holds are
/// marked deleted however many they are (`--allow-deletes`): the change stream showed why.
async fn resnapshot(
    settings: Settings,
    cause: ResnapshotCause,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let p = &settings.pipeline;
    warn!(pipeline = %p.name, %cause, "re-snapshotting with the backfill \
        (history_lost = \"backfill\"), then streaming from its position");
    let opts = BackfillOptions {
        restart: true,
        allow_deletes: matches!(cause, ResnapshotCause::Collection(_)),
        progress: ProgressMode::Log,
        shutdown,
        ..BackfillOptions::default()
    };
    run_backfill(&settings, opts).await?;
    info!(pipeline = %p.name, "re-snapshot complete: resuming the change stream");
    Ok(())
}

/// Refuse to start the capture when its MongoDB database holds none of the watched
/// collections (a wrong database name would tail nothing, silently). A MongoDB that cannot be
/// reached now is left to the capture, which retries. Only for a role that runs the capture.
pub(super) async fn check_watched(
    settings: &Settings,
    roles: &[Stage],
) -> Result<(), RuntimeError> {
    if !roles.contains(&Stage::Capture) {
        return Ok(());
    }
    let check = async {
        let mut opts = mongodb::options::ClientOptions::parse(settings.mongo_uri.expose())
            .await
            .map_err(crate::backfill::BackfillError::Mongo)?;
        opts.server_selection_timeout = Some(START_CHECK_TIMEOUT);
        opts.app_name = Some(format!(
            "bowmark-cdc-start-check-{}",
            settings.pipeline.name
        ));
        let client =
            mongodb::Client::with_options(opts).map_err(crate::backfill::BackfillError::Mongo)?;
        let found = watched_in_database(&client, &settings.pipeline).await;
        client.shutdown().await;
        found
    };
    match check.await {
        Ok(None) => Ok(()),
        Ok(Some(none)) => Err(RuntimeError::NoneWatched(none)),
        Err(e) => {
            warn!(error = %crate::cause::chain(&e), "cannot list the MongoDB collections at \
                start; the capture checks its change stream itself");
            Ok(())
        }
    }
}
