//! Adoption of databases the legacy dbmate migrations built, the dual ledger, and refusals.

use bowmark_cdc::migrate;

use super::catalog::{assert_same, snapshot};
use super::{
    BOOKKEEPING, LEGACY, assert_complete_catalog, dbmate_db, dbmate_ledger, error_text, history,
    versions,
};
use crate::support::migrated_db;

#[tokio::test]
async fn dbmate_database_is_adopted_and_only_the_new_version_applied() {
    // Given a database the four legacy dbmate migrations built, holding data
    let db = dbmate_db(&[0, 1, 2, 3], &LEGACY.map(|(v, _)| v)).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO dim_jobsite (mongo_id, name, jobcode) VALUES ('legacyjobsite', 'Kept', 'K1')",
    )
    .await
    .unwrap();
    let before = snapshot(&c).await;
    // When migrate runs
    let report = migrate::run(&db.conn()).await.expect("migrate");
    // Then it records the four legacy versions as the baseline and applies only the bookkeeping
    assert!(report.adopted);
    assert_eq!(
        versions(&report.baseline),
        LEGACY.map(|(v, _)| v.parse::<i64>().unwrap()).to_vec()
    );
    assert_eq!(versions(&report.applied), vec![BOOKKEEPING]);
    assert_eq!(report.dbmate_recorded, vec![BOOKKEEPING]);
    // And every legacy object is untouched (same definitions, same oids), data kept
    let after = snapshot(&c).await;
    assert_same(
        &before,
        &after.without(&["public.refinery_schema_history", "cdc.checkpoint"]),
    );
    let kept: String = c
        .query_one(
            "SELECT name FROM dim_jobsite WHERE mongo_id = 'legacyjobsite'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "Kept");
    // And the result is the complete schema, with the new version in both ledgers
    assert_complete_catalog(&after, true);
    assert_eq!(
        dbmate_ledger(&c).await,
        vec![
            "20260128205200",
            "20260202120000",
            "20260203100000",
            "20260325120000",
            "20261127000001"
        ]
    );
    assert_eq!(history(&c).await.len(), 5);
    // And the recorded baseline checksums match the embedded migrations: a rerun is clean
    let again = migrate::run(&db.conn()).await.expect("rerun");
    assert!(again.is_up_to_date(), "{again:?}");
    assert!(again.dbmate_recorded.is_empty());
}

#[tokio::test]
async fn partially_migrated_dbmate_database_gets_the_remaining_versions() {
    // Given a database dbmate migrated only up to 20260202120000
    let db = dbmate_db(&[0, 1], &[LEGACY[0].0, LEGACY[1].0]).await;
    // When migrate runs
    let report = migrate::run(&db.conn()).await.expect("migrate");
    // Then the two are adopted and the rest applied, in order
    assert!(report.adopted);
    assert_eq!(
        versions(&report.baseline),
        vec![20260128205200, 20260202120000]
    );
    assert_eq!(
        versions(&report.applied),
        vec![20260203100000, 20260325120000, BOOKKEEPING]
    );
    assert_eq!(
        report.dbmate_recorded,
        vec![20260203100000, 20260325120000, BOOKKEEPING]
    );
    // And the schema is exactly the legacy one (vehicle_type and rate_scenario_id last)
    let c = db.client().await;
    assert_complete_catalog(&snapshot(&c).await, true);
}

#[tokio::test]
async fn dbmate_versions_this_binary_does_not_know_are_left_alone() {
    // Given a legacy database whose ledger also holds a later legacy-app migration
    let mut ledger = LEGACY.map(|(v, _)| v).to_vec();
    ledger.push("20260425120000");
    let db = dbmate_db(&[0, 1, 2, 3], &ledger).await;
    // When migrate runs
    let report = migrate::run(&db.conn()).await.expect("migrate");
    // Then the four legacy versions are adopted, the unknown one reported and kept
    assert!(report.adopted);
    assert_eq!(report.baseline.len(), 4);
    assert_eq!(report.dbmate_unknown, vec!["20260425120000".to_string()]);
    assert_eq!(versions(&report.applied), vec![BOOKKEEPING]);
    let c = db.client().await;
    assert!(
        dbmate_ledger(&c)
            .await
            .contains(&"20260425120000".to_string())
    );
}

#[tokio::test]
async fn dbmate_ledger_with_a_gap_is_refused_and_left_untouched() {
    // Given a dbmate ledger that records 20260203100000 but not the older 20260202120000
    let db = dbmate_db(&[0, 2], &[LEGACY[0].0, LEGACY[2].0]).await;
    let c = db.client().await;
    let before = snapshot(&c).await;
    // When migrate runs
    let err = migrate::run(&db.conn())
        .await
        .expect_err("a gap must be refused");
    // Then it explains what is missing and what to do, and changes nothing
    let text = error_text(err);
    assert!(
        text.contains("20260202120000") && text.contains("dbmate up"),
        "{text}"
    );
    assert_same(&before, &snapshot(&c).await);
}

#[tokio::test]
async fn edited_applied_migration_is_refused() {
    // Given a migrated database whose recorded checksum of one version differs from the binary's
    let db = migrated_db().await;
    let c = db.client().await;
    c.batch_execute(
        "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 20260202120000",
    )
    .await
    .unwrap();
    // When migrate runs
    let err = migrate::run(&db.conn())
        .await
        .expect_err("divergent must fail");
    // Then it names the divergent version
    let text = error_text(err);
    assert!(
        text.contains("V20260202120000__productivity_analytics") && text.contains("different"),
        "{text}"
    );
}
