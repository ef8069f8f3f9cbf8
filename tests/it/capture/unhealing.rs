//! Errors that retrying does not heal (a refused permission, a rejected resume token): the
//! capture gives up after `GIVE_UP_AFTER` attempts in a row, says what to do, and the daemon
//! exits non-zero instead of retrying for ever.

use super::process::{Proc, checkpoint_and_stop, pipeline_file};
use super::*;

/// Long enough for `GIVE_UP_AFTER` attempts with the capture's backoff (250 ms doubling,
/// jittered), far shorter than a loop without end.
const GIVE_UP_WITHIN: Duration = Duration::from_secs(60);

/// Every `aggregate` of the daemon (its change stream) fails with `code`: the daemon's
/// connection string carries this test's appName, to which the fail point is scoped.
async fn fail_every_stream_open(fx: &Fixture, code: i32) -> String {
    fx.m.fail_command(
        bson::Bson::String("alwaysOn".into()),
        doc! {"failCommands": ["aggregate"], "errorCode": code},
    )
    .await;
    support::mongo::with_options(fx.m.uri(), &format!("appName={}", fx.m.db_name()))
}

/// Run the daemon until it exits on its own; its exit status and log.
async fn run_until_it_gives_up(
    fx: &Fixture,
    file: &tempfile::NamedTempFile,
    uri: &str,
) -> (std::process::ExitStatus, String) {
    let mut proc = Proc::start_at(fx, file, std::process::Stdio::piped(), uri);
    let log = support::StderrTail::start(&mut proc.child);
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = proc.child.try_wait().expect("wait") {
            // (the log reader may still hold the last lines)
            tokio::time::sleep(Duration::from_millis(300)).await;
            return (status, log.text());
        }
        assert!(
            started.elapsed() < GIVE_UP_WITHIN,
            "the capture kept retrying an error that cannot heal for {GIVE_UP_WITHIN:?}:\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_change_stream_mongodb_does_not_authorize_stops_the_daemon_with_what_to_do() {
    // Given a MongoDB user the change stream is refused to (Unauthorized, code 13)
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let _tap = Tap::new(&fx.vhost, &["#"]).await;
    let uri = fail_every_stream_open(&fx, 13).await;
    // When the daemon runs the capture
    let (status, log) = run_until_it_gives_up(&fx, &file, &uri).await;
    fx.m.fail_command_off().await;
    // Then it stops after a bounded number of attempts, exits non-zero and says what to do
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "after {} attempts",
            bowmark_cdc::capture::GIVE_UP_AFTER
        )),
        "{log}"
    );
    assert!(
        log.contains("MONGO_URI") && log.contains("changeStream"),
        "{log}"
    );
    assert!(log.contains("\"error_type\":\"mongo_auth\""), "{log}");
}

#[tokio::test]
async fn a_resume_token_mongodb_rejects_stops_the_daemon_with_the_backfill_to_run() {
    // Given a capture that stored a checkpoint and stopped
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let _tap = Tap::new(&fx.vhost, &["#"]).await;
    checkpoint_and_stop(&fx, &file).await;
    // When MongoDB rejects its resume token (ChangeStreamFatalError, code 280) at every start
    let uri = fail_every_stream_open(&fx, 280).await;
    let (status, log) = run_until_it_gives_up(&fx, &file, &uri).await;
    fx.m.fail_command_off().await;
    // Then the daemon stops, exits non-zero and names the backfill that recovers
    assert_eq!(status.code(), Some(1), "{log}");
    let want = format!(
        "bowmark-cdc backfill --pipeline {} --restart",
        file.path().display()
    );
    assert!(log.contains(&want), "{log}");
    assert!(log.contains("\"error_type\":\"resume_rejected\""), "{log}");
}
