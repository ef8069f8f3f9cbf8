//! `$changeStreamSplitLargeEvent`: events above the event limit arrive as fragments with the
//! server's shape, resume from a fragment continues with the next one, and without the
//! stage an oversized event fails the stream with 10334 (BSONObjectTooLarge). The limit is
//! lowered through `SimConfig::max_event_bytes` so the events stay small.

use std::time::Duration;

use bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};

use super::{error_code, next_event, try_next_event};
use crate::support::mongo::{TestMongo, require_sim};

const WAIT: Duration = Duration::from_secs(5);
/// Event limit of these tests; each large field (~12 KB) fits a fragment, two do not.
const LIMIT: usize = 14_000;

async fn start() -> TestMongo {
    TestMongo::start_with(mongosim::SimConfig {
        max_event_bytes: LIMIT,
        ..Default::default()
    })
    .await
}

/// A collection with pre- and post-images, holding `{_id: 1, a: "x" * 12000}`.
async fn images_collection(m: &TestMongo) -> mongodb::Collection<Document> {
    m.db()
        .run_command(doc! {"create": "big", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = m.db().collection::<Document>("big");
    c.insert_one(doc! {"_id": 1, "a": "x".repeat(12_000)})
        .await
        .unwrap();
    c
}

fn split_pipeline() -> Vec<Document> {
    vec![
        doc! {"$match": {"operationType": {"$in": ["update", "insert"]}}},
        doc! {"$changeStreamSplitLargeEvent": {}},
    ]
}

async fn open(
    c: &mongodb::Collection<Document>,
    pipeline: Vec<Document>,
    resume: Option<ResumeToken>,
) -> mongodb::error::Result<ChangeStream<Document>> {
    let mut w = c
        .watch()
        .pipeline(pipeline)
        .full_document(FullDocumentType::Required)
        .full_document_before_change(FullDocumentBeforeChangeType::Required)
        .max_await_time(Duration::from_millis(100))
        .batch_size(1);
    if let Some(t) = resume {
        w = w.resume_after(t);
    }
    Ok(w.await?.with_type::<Document>())
}

fn token_of(ev: &Document) -> ResumeToken {
    bson::deserialize_from_bson(Bson::Document(ev.get_document("_id").unwrap().clone())).unwrap()
}

fn split_of(ev: &Document) -> Option<(i32, i32)> {
    let s = ev.get_document("splitEvent").ok()?;
    Some((s.get_i32("fragment").ok()?, s.get_i32("of").ok()?))
}

/// The update `a: "x"*12000 -> "y"*12000` makes an event of ~36 KB: updateDescription,
/// fullDocument and fullDocumentBeforeChange of ~12 KB each.
async fn big_update(c: &mongodb::Collection<Document>) {
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"a": "y".repeat(12_000)}})
        .await
        .unwrap();
}

#[tokio::test]
async fn large_events_arrive_as_fragments_with_the_server_shape() {
    let m = start().await;
    let _sim = require_sim!(m, "the event limit is lowered through SimConfig");
    let c = images_collection(&m).await;
    let mut s = open(&c, split_pipeline(), None).await.unwrap();
    big_update(&c).await;
    c.insert_one(doc! {"_id": 2}).await.unwrap();

    let mut frags = Vec::new();
    for _ in 0..3 {
        frags.push(next_event(&mut s, WAIT).await.expect("a fragment"));
    }
    let shapes: Vec<_> = frags.iter().map(split_of).collect();
    assert_eq!(shapes, vec![Some((1, 3)), Some((2, 3)), Some((3, 3))]);
    let mut ids = Vec::new();
    let mut whole = Document::new();
    for f in &frags {
        let keys: Vec<&str> = f.keys().map(String::as_str).take(2).collect();
        assert_eq!(
            keys,
            ["_id", "splitEvent"],
            "each fragment starts with its token"
        );
        let bytes = bson::serialize_to_vec(f).unwrap().len();
        assert!(bytes <= LIMIT, "fragment of {bytes} bytes");
        ids.push(f.get_document("_id").unwrap().clone());
        for (k, v) in f {
            if k != "_id" && k != "splitEvent" {
                assert!(whole.insert(k, v.clone()).is_none(), "{k} in two fragments");
            }
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "every fragment has its own resume token");
    // The first fragment carries the event's context (the small fields).
    assert_eq!(frags[0].get_str("operationType").ok(), Some("update"));
    assert!(frags[0].contains_key("documentKey") && frags[0].contains_key("ns"));
    assert_eq!(
        whole.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "a": "y".repeat(12_000)}
    );
    assert_eq!(
        whole.get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "a": "x".repeat(12_000)}
    );
    assert_eq!(
        whole
            .get_document("updateDescription")
            .unwrap()
            .get_document("updatedFields")
            .unwrap(),
        &doc! {"a": "y".repeat(12_000)}
    );
    // Small events are not split.
    let small = next_event(&mut s, WAIT).await.expect("the small insert");
    assert_eq!(small.get_str("operationType").ok(), Some("insert"));
    assert!(!small.contains_key("splitEvent"));
}

#[tokio::test]
async fn resuming_after_a_fragment_continues_with_the_next_one() {
    let m = start().await;
    let _sim = require_sim!(m, "the event limit is lowered through SimConfig");
    let c = images_collection(&m).await;
    let mut s = open(&c, split_pipeline(), None).await.unwrap();
    big_update(&c).await;
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    let first = next_event(&mut s, WAIT).await.expect("fragment 1");
    assert_eq!(split_of(&first), Some((1, 3)));
    let second = next_event(&mut s, WAIT).await.expect("fragment 2");
    drop(s);

    let mut r = open(&c, split_pipeline(), Some(token_of(&first)))
        .await
        .unwrap();
    let again = next_event(&mut r, WAIT).await.expect("fragment 2 again");
    assert_eq!(again, second);
    let third = next_event(&mut r, WAIT).await.expect("fragment 3");
    assert_eq!(split_of(&third), Some((3, 3)));

    // From the last fragment: the next event.
    let mut r = open(&c, split_pipeline(), Some(token_of(&third)))
        .await
        .unwrap();
    let next = next_event(&mut r, WAIT).await.expect("the insert");
    assert_eq!(next.get_document("documentKey").unwrap(), &doc! {"_id": 2});

    // A fragment token needs the split stage to resume.
    match open(&c, vec![], Some(token_of(&first))).await {
        Ok(_) => panic!("a fragment token needs the split stage"),
        Err(e) => assert_eq!(error_code(&e), Some(280), "{e}"),
    }
}

#[tokio::test]
async fn without_the_stage_an_oversized_event_fails_with_10334() {
    let m = start().await;
    let _sim = require_sim!(m, "the event limit is lowered through SimConfig");
    let c = images_collection(&m).await;
    let mut s = open(&c, vec![], None).await.unwrap();
    big_update(&c).await;
    let e = try_next_event(&mut s, WAIT)
        .await
        .expect_err("an event above the limit cannot be returned");
    assert_eq!(error_code(&e), Some(10334), "{e}");
}

#[tokio::test]
async fn the_split_stage_must_be_last() {
    let m = start().await;
    let _sim = require_sim!(m, "the event limit is lowered through SimConfig");
    let c = m.db().collection::<Document>("big");
    let r = open(
        &c,
        vec![
            doc! {"$changeStreamSplitLargeEvent": {}},
            doc! {"$match": {"operationType": "insert"}},
        ],
        None,
    )
    .await;
    match r {
        Ok(_) => panic!("the split stage must be the last stage"),
        Err(e) => assert_eq!(error_code(&e), Some(7182802), "{e}"),
    }
}
