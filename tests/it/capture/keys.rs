//! Document keys and awkward values end to end (capture, broker, projector, mirror): a numeric
//! `_id` 5 and a string "5" are two documents, NumberLong 7 and 7.0 one; NaN and NUL reach the projection's rules
//! unchanged, which make them storable (NaN as null, NUL removed).

use bowmark_cdc::projector::ProjectorStage;
use serde_json::json;

use super::*;

#[tokio::test]
async fn numeric_and_string_ids_stay_apart_equal_numbers_meet_and_nan_and_nul_reach_the_projection_rules()
 {
    // Given a capture and a projector of one pipeline
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["crew.*"]).await;
    let run = fx.start().await;
    let pool = bowmark_cdc::runtime::make_pool(&fx.settings).expect("pool");
    let stop_projector = CancellationToken::new();
    let projector = tokio::spawn(
        ProjectorStage::new(&fx.settings, pool, Health::default()).run(stop_projector.clone()),
    );
    // When documents with _id 5 and "5", and one with NaN and NUL, are written
    let crews = fx.coll("crews");
    crews
        .insert_one(doc! {"_id": 5_i32, "name": "number five", "type": "Base"})
        .await
        .unwrap();
    crews
        .insert_one(doc! {"_id": "5", "name": "string five", "type": "Base"})
        .await
        .unwrap();
    crews
        .insert_one(doc! {"_id": "nul\u{0}id", "name": "a\u{0}b", "rate": f64::NAN, "type": "Base"})
        .await
        .unwrap();
    // Then the published events carry the values unchanged, under distinct keys
    let got = tap.take(3).await;
    let keys: BTreeSet<&str> = got.iter().map(|d| d.event.key.as_str()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let odd = got
        .iter()
        .find(|d| d.event.key.contains("nul"))
        .expect("the NUL document's event");
    let doc = odd.event.doc.as_ref().unwrap();
    assert_eq!(doc["name"], json!("a\u{0}b"));
    assert_eq!(doc["rate"], json!({"$numberDouble": "NaN"}));
    // And the mirror holds three documents, the projection's rules applied
    let pg = fx.db.client().await;
    let rows = eventually("three crew documents in the mirror", WAIT, || async {
        let rows = pg
            .query(
                "SELECT key, doc FROM cdc.source_doc WHERE entity = 'crew' ORDER BY key",
                &[],
            )
            .await
            .unwrap();
        (rows.len() == 3).then_some(rows)
    })
    .await;
    let by_key: BTreeMap<String, serde_json::Value> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        by_key[r#"{"$numberLong":"5"}"#]["name"],
        json!("number five")
    );
    assert_eq!(by_key["5"]["name"], json!("string five"));
    let odd = &by_key[r#""nul\u0000id""#];
    assert_eq!(odd["name"], json!("ab"), "NUL removed by the projection");
    assert_eq!(odd["rate"], json!(null), "NaN counts as missing");
    // And NumberLong 7 and the double 7.0, one _id to MongoDB, are one mirror document
    crews
        .insert_one(doc! {"_id": 7_i64, "name": "seven"})
        .await
        .unwrap();
    crews.delete_one(doc! {"_id": 7_i64}).await.unwrap();
    crews
        .insert_one(doc! {"_id": 7.0_f64, "name": "seven again"})
        .await
        .unwrap();
    let sevens = eventually("the second seven in the mirror", WAIT, || async {
        let rows = pg
            .query(
                "SELECT key, deleted FROM cdc.source_doc WHERE entity = 'crew' AND key LIKE '%7%'",
                &[],
            )
            .await
            .unwrap();
        let again: i64 = pg
            .query_one(
                "SELECT count(*) FROM cdc.source_doc WHERE doc->>'name' = 'seven again'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (again == 1).then_some(rows)
    })
    .await;
    let sevens: Vec<(String, bool)> = sevens.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(sevens, vec![(r#"{"$numberLong":"7"}"#.to_string(), false)]);
    stop_projector.cancel();
    let _ = projector.await;
    run.stop().await;
}
