//! change-streams-errors.json, change-streams-resume-errorLabels.json and the portable
//! scenarios of change-streams-resume-allowlist.json.

use bson::{Document, doc};

use super::{Spec, assert_result, expect_commands, iterate, iterate_error, labels, watch};
use crate::sim::error_code;

fn inserted_x1(t: &Spec) -> Document {
    doc! {
        "_id": {"$$exists": true}, "documentKey": {"$$exists": true},
        "operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0"},
        "fullDocument": {"x": 1, "_id": {"$$exists": true}},
    }
}

/// The commands of a resumed stream: aggregate, the failed getMore, aggregate with a token.
fn resumed(t: &Spec) {
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "cursor": {}, "pipeline": [{"$changeStream": {}}], "$db": t.db0()},
            doc! {"getMore": {"$$exists": true}, "collection": "collection0", "$db": t.db0()},
            doc! {"aggregate": "collection0", "cursor": {}, "pipeline": [{"$changeStream": {"resumeAfter": {"$$unsetOrMatches": {"$$exists": true}}}}], "$db": t.db0()},
        ],
    );
}

#[tokio::test]
async fn change_stream_should_error_when_an_invalid_aggregation_stage_is_passed_in() {
    let t = Spec::start().await;
    let e = t
        .coll0()
        .watch()
        .pipeline([doc! {"$unsupported": "foo"}])
        .await
        .expect_err("an unknown stage");
    assert_eq!(error_code(&e), Some(40324), "{e}");
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "cursor": {}, "pipeline": [{"$changeStream": {}}, {"$unsupported": "foo"}], "$db": t.db0()},
        ],
    );
}

#[tokio::test]
async fn change_stream_should_error_when_id_is_projected_out() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![doc! {"$project": {"_id": 0}}]).await;
    t.coll0().insert_one(doc! {"z": 3}).await.unwrap();
    let e = iterate_error(&mut s).await;
    assert_eq!(error_code(&e), Some(280), "{e}");
}

#[tokio::test]
async fn change_stream_errors_on_election_in_progress() {
    let t = Spec::start().await;
    t.m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 216, "closeConnection": false},
    )
    .await;
    let mut s = watch(&t.coll0(), vec![]).await;
    t.coll0().insert_one(doc! {"z": 3}).await.unwrap();
    let e = iterate_error(&mut s).await;
    assert_eq!(error_code(&e), Some(216), "{e}");
    t.m.fail_command_off().await;
}

/// "change stream resumes after <code>" for every allow-listed code:
/// `failGetMoreAfterCursorCheckout` fails the getMore once its cursor is checked out, the
/// server labels the error ResumableChangeStreamError, and the driver resumes.
#[tokio::test]
async fn change_stream_resumes_after_each_resumable_code() {
    let codes = [
        (6, "HostUnreachable"),
        (7, "HostNotFound"),
        (89, "NetworkTimeout"),
        (91, "ShutdownInProgress"),
        (189, "PrimarySteppedDown"),
        (262, "ExceededTimeLimit"),
        (9001, "SocketException"),
        (10107, "NotWritablePrimary"),
        (11600, "InterruptedAtShutdown"),
        (11602, "InterruptedDueToReplStateChange"),
        (13435, "NotPrimaryNoSecondaryOk"),
        (13436, "NotPrimaryOrSecondary"),
        (63, "StaleShardVersion"),
        (150, "StaleEpoch"),
        (234, "RetryChangeStream"),
        (133, "FailedToSatisfyReadPreference"),
    ];
    for (code, name) in codes {
        let t = Spec::start().await;
        t.fail_point(doc! {
            "configureFailPoint": "failGetMoreAfterCursorCheckout",
            "mode": {"times": 1},
            "data": {"errorCode": code, "closeConnection": false},
        })
        .await;
        let mut s = watch(&t.coll0(), vec![]).await;
        t.coll0().insert_one(doc! {"x": 1}).await.unwrap();
        let ev = match super::try_next_event(&mut s, super::WAIT).await {
            Ok(Some(ev)) => ev,
            other => panic!("after {name} ({code}): {other:?}"),
        };
        assert_result(&ev, inserted_x1(&t));
        resumed(&t);
    }
}

#[tokio::test]
async fn change_stream_resumes_if_error_contains_resumable_change_stream_error() {
    let t = Spec::start().await;
    resumes_after_one_failed_get_more(
        &t,
        doc! {"failCommands": ["getMore"], "errorCode": 50, "closeConnection": false,
        "errorLabels": ["ResumableChangeStreamError"]},
    )
    .await;
}

/// failCommand fires before the getMore checks out its cursor: the server cannot tell it
/// is a change stream and adds no label, so an allow-listed code is not resumed.
#[tokio::test]
async fn change_stream_does_not_resume_if_error_does_not_contain_resumable_change_stream_error() {
    let t = Spec::start().await;
    t.m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 6, "closeConnection": false},
    )
    .await;
    let mut s = watch(&t.coll0(), vec![]).await;
    t.coll0().insert_one(doc! {"x": 1}).await.unwrap();
    let e = iterate_error(&mut s).await;
    assert_eq!(error_code(&e), Some(6), "{e}");
    assert!(labels(&e).is_empty(), "no label: {e}");
    t.m.fail_command_off().await;
}

#[tokio::test]
async fn change_stream_resumes_after_a_network_error() {
    let t = Spec::start().await;
    resumes_after_one_failed_get_more(
        &t,
        doc! {"failCommands": ["getMore"], "closeConnection": true},
    )
    .await;
}

#[tokio::test]
async fn change_stream_resumes_after_cursor_not_found() {
    let t = Spec::start().await;
    resumes_after_one_failed_get_more(
        &t,
        doc! {"failCommands": ["getMore"], "errorCode": 43, "closeConnection": false},
    )
    .await;
}

/// One getMore fails as `fail` says; the stream resumes and delivers the insert after it.
async fn resumes_after_one_failed_get_more(t: &Spec, fail: Document) {
    t.m.fail_command(doc! {"times": 1}.into(), fail).await;
    let mut s = watch(&t.coll0(), vec![]).await;
    t.coll0().insert_one(doc! {"x": 1}).await.unwrap();
    assert_result(&iterate(&mut s).await, inserted_x1(t));
    resumed(t);
    t.m.fail_command_off().await;
}
