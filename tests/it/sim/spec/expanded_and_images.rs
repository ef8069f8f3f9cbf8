//! change-streams-showExpandedEvents.json, change-streams-pre_and_post_images.json and
//! change-streams-disambiguatedPaths.json.

use std::time::Duration;

use bson::{Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::{Collection, IndexModel};

use super::{Spec, assert_result, expect_commands, iterate};

async fn watch_expanded(c: &Collection<Document>) -> ChangeStream<Document> {
    c.watch()
        .show_expanded_events(true)
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<Document>()
}

fn index_x(name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(doc! {"x": 1})
        .options(
            mongodb::options::IndexOptions::builder()
                .name(name.to_string())
                .build(),
        )
        .build()
}

#[tokio::test]
async fn show_expanded_events_is_sent_when_provided_and_not_when_omitted() {
    let t = Spec::start().await;
    let _a = watch_expanded(&t.coll0()).await;
    let _b = t.coll0().watch().await.unwrap();
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "cursor": {}, "pipeline": [{"$changeStream": {"showExpandedEvents": true}}]},
            doc! {"aggregate": "collection0", "cursor": {}, "pipeline": [{"$changeStream": {"showExpandedEvents": {"$$exists": false}}}]},
        ],
    );
}

#[tokio::test]
async fn when_show_expanded_events_is_true_new_fields_are_handled_appropriately() {
    let t = Spec::start().await;
    let db = t.client().database(&t.db0());
    let _ = db.collection::<Document>("foo").drop().await;
    db.create_collection("foo").await.unwrap();
    let c = t.coll0();
    let mut s = watch_expanded(&c).await;
    c.insert_one(doc! {"a": 1}).await.unwrap();
    c.create_index(index_x("x_1")).await.unwrap();
    t.client()
        .database("admin")
        .run_command(doc! {
            "renameCollection": format!("{}.collection0", t.db0()),
            "to": format!("{}.foo", t.db0()),
            "dropTarget": true,
        })
        .await
        .unwrap();
    let ns = doc! {"db": t.db0(), "coll": "collection0"};
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "insert", "ns": ns.clone(), "collectionUUID": {"$$exists": true}},
    );
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "createIndexes", "ns": ns.clone(), "operationDescription": {"$$exists": true}},
    );
    let rename = iterate(&mut s).await;
    assert_result(
        &rename,
        doc! {"operationType": "rename", "ns": ns, "to": {"db": t.db0(), "coll": "foo"}},
    );
    // The scenario expects `operationDescription.dropTarget` (the replaced collection's UUID).
    assert!(
        rename
            .get_document("operationDescription")
            .is_ok_and(|d| d.contains_key("dropTarget")),
        "{rename}"
    );
}

#[tokio::test]
async fn when_show_expanded_events_is_true_create_index_events_are_reported() {
    let t = Spec::start().await;
    let mut s = watch_expanded(&t.coll0()).await;
    t.coll0().create_index(index_x("x_1")).await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "createIndexes"},
    );
}

#[tokio::test]
async fn when_show_expanded_events_is_true_drop_indexes_events_are_reported() {
    let t = Spec::start().await;
    t.coll0().create_index(index_x("x_1")).await.unwrap();
    let mut s = watch_expanded(&t.coll0()).await;
    t.coll0().drop_index("x_1").await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "dropIndexes"},
    );
}

#[tokio::test]
async fn when_show_expanded_events_is_true_create_events_are_reported() {
    let t = Spec::start().await;
    let db = t.client().database(&t.db0());
    let _ = db.collection::<Document>("foo").drop().await;
    let mut s = db
        .watch()
        .show_expanded_events(true)
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<Document>();
    db.create_collection("foo").await.unwrap();
    assert_result(&iterate(&mut s).await, doc! {"operationType": "create"});
}

#[tokio::test]
async fn when_show_expanded_events_is_true_modify_events_are_reported() {
    let t = Spec::start().await;
    t.coll0().create_index(index_x("x_2")).await.unwrap();
    let mut s = watch_expanded(&t.coll0()).await;
    t.client()
        .database(&t.db0())
        .run_command(doc! {"collMod": "collection0"})
        .await
        .unwrap();
    assert_result(&iterate(&mut s).await, doc! {"operationType": "modify"});
}

/// Expanded events stay out of streams that did not ask for them.
#[tokio::test]
async fn without_show_expanded_events_ddl_is_not_reported() {
    let t = Spec::start().await;
    let mut s = t
        .coll0()
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<Document>();
    t.coll0().create_index(index_x("x_1")).await.unwrap();
    t.coll0().insert_one(doc! {"_id": 1}).await.unwrap();
    let ev = iterate(&mut s).await;
    assert_result(&ev, doc! {"operationType": "insert"});
    assert!(!ev.contains_key("collectionUUID"), "{ev}");
}

// ---- pre- and post-images --------------------------------------------------------------

/// The scenario: collMod `changeStreamPreAndPostImages: {enabled}`, a stream with the given
/// image options, `$set {x: 1}` on `{_id: 1}`; the first event or error.
async fn images_case(
    enabled: bool,
    full: Option<FullDocumentType>,
    before: Option<FullDocumentBeforeChangeType>,
) -> (Spec, Result<Document, mongodb::error::Error>) {
    let t = Spec::start().await;
    let c = t.coll(&t.db0(), "test");
    let _ = c.drop().await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    t.client()
        .database(&t.db0())
        .run_command(doc! {"collMod": "test", "changeStreamPreAndPostImages": {"enabled": enabled}})
        .await
        .unwrap();
    let mut w = c.watch().max_await_time(Duration::from_millis(100));
    if let Some(f) = full {
        w = w.full_document(f);
    }
    if let Some(b) = before {
        w = w.full_document_before_change(b);
    }
    let mut s = w.await.unwrap().with_type::<Document>();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    let r = match super::try_next_event(&mut s, super::WAIT).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => panic!("no event"),
        Err(e) => Err(e),
    };
    (t, r)
}

fn update_of(t: &Spec, extra: Document) -> Document {
    let mut d = doc! {
        "operationType": "update",
        "ns": {"db": t.db0(), "coll": "test"},
        "updateDescription": {"$$type": "object"},
    };
    d.extend(extra);
    d
}

#[tokio::test]
async fn full_document_when_available_with_images_enabled_and_disabled() {
    let (t, r) = images_case(true, Some(FullDocumentType::WhenAvailable), None).await;
    assert_result(
        &r.unwrap(),
        update_of(&t, doc! {"fullDocument": {"_id": 1, "x": 1}}),
    );
    let (t, r) = images_case(false, Some(FullDocumentType::WhenAvailable), None).await;
    assert_result(&r.unwrap(), update_of(&t, doc! {"fullDocument": null}));
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "test", "pipeline": [{"$changeStream": {"fullDocument": "whenAvailable"}}]},
        ],
    );
}

#[tokio::test]
async fn full_document_required_with_images_enabled_and_disabled() {
    let (t, r) = images_case(true, Some(FullDocumentType::Required), None).await;
    assert_result(
        &r.unwrap(),
        update_of(&t, doc! {"fullDocument": {"_id": 1, "x": 1}}),
    );
    let (_t, r) = images_case(false, Some(FullDocumentType::Required), None).await;
    let e = r.expect_err("a required post-image that was not recorded");
    assert!(
        super::super::error_code(&e).is_some(),
        "a server error: {e}"
    );
}

#[tokio::test]
async fn full_document_before_change_when_available_with_images_enabled_and_disabled() {
    let when = Some(FullDocumentBeforeChangeType::WhenAvailable);
    let (t, r) = images_case(true, None, when.clone()).await;
    assert_result(
        &r.unwrap(),
        update_of(&t, doc! {"fullDocumentBeforeChange": {"_id": 1}}),
    );
    let (t, r) = images_case(false, None, when).await;
    assert_result(
        &r.unwrap(),
        update_of(&t, doc! {"fullDocumentBeforeChange": null}),
    );
}

#[tokio::test]
async fn full_document_before_change_required_with_images_enabled_and_disabled() {
    let req = Some(FullDocumentBeforeChangeType::Required);
    let (t, r) = images_case(true, None, req.clone()).await;
    assert_result(
        &r.unwrap(),
        update_of(&t, doc! {"fullDocumentBeforeChange": {"_id": 1}}),
    );
    let (_t, r) = images_case(false, None, req).await;
    let e = r.expect_err("a required pre-image that was not recorded");
    assert!(
        super::super::error_code(&e).is_some(),
        "a server error: {e}"
    );
}

#[tokio::test]
async fn full_document_before_change_off_with_images_enabled_and_disabled() {
    for enabled in [true, false] {
        let (t, r) = images_case(enabled, None, Some(FullDocumentBeforeChangeType::Off)).await;
        assert_result(
            &r.unwrap(),
            update_of(&t, doc! {"fullDocumentBeforeChange": {"$$exists": false}}),
        );
    }
}

// ---- disambiguatedPaths ----------------------------------------------------------------

async fn ambiguous_update(doc0: Document, set: Document, expanded: bool) -> (Spec, Document) {
    let t = Spec::start().await;
    let c = t.coll0();
    c.insert_one(doc0).await.unwrap();
    let mut s = c
        .watch()
        .show_expanded_events(expanded)
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<Document>();
    c.update_one(doc! {"_id": 1}, doc! {"$set": set})
        .await
        .unwrap();
    let ev = iterate(&mut s).await;
    (t, ev)
}

#[tokio::test]
async fn disambiguated_paths_is_not_present_when_show_expanded_events_is_false() {
    let (t, ev) = ambiguous_update(doc! {"_id": 1, "a": {"1": 1}}, doc! {"a.1": 2}, false).await;
    assert_result(
        &ev,
        doc! {"operationType": "update", "ns": {"db": t.db0(), "coll": "collection0"}, "updateDescription": {
            "updatedFields": {"$$exists": true}, "removedFields": {"$$exists": true},
            "truncatedArrays": {"$$exists": true}, "disambiguatedPaths": {"$$exists": false},
        }},
    );
}

#[tokio::test]
async fn disambiguated_paths_is_present_when_an_ambiguous_path_is_present() {
    let (t, ev) = ambiguous_update(doc! {"_id": 1, "a": {"1": 1}}, doc! {"a.1": 2}, true).await;
    assert_result(
        &ev,
        doc! {"operationType": "update", "ns": {"db": t.db0(), "coll": "collection0"}, "updateDescription": {
            "updatedFields": {"$$exists": true}, "removedFields": {"$$exists": true},
            "truncatedArrays": {"$$exists": true}, "disambiguatedPaths": {"a.1": ["a", "1"]},
        }},
    );
}

#[tokio::test]
async fn disambiguated_paths_returns_array_indices_as_integers() {
    let (t, ev) = ambiguous_update(doc! {"_id": 1, "a": [{"1": 1}]}, doc! {"a.0.1": 2}, true).await;
    assert_result(
        &ev,
        doc! {"operationType": "update", "ns": {"db": t.db0(), "coll": "collection0"}, "updateDescription": {
            "updatedFields": {"$$exists": true}, "removedFields": {"$$exists": true},
            "truncatedArrays": {"$$exists": true},
            "disambiguatedPaths": {"a.0.1": ["a", {"$$type": "int"}, "1"]},
        }},
    );
}
