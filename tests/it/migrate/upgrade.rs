//! Upgrading a database whose mirror was filled before a later `cdc` migration.

use crate::support::{TestDb, project_root};

/// The embedded migration files, in version order, split at `version` (excluded from the
/// first part).
fn files_split_at(version: &str) -> (Vec<String>, Vec<String>) {
    let mut files: Vec<_> = std::fs::read_dir(project_root().join("migrations"))
        .expect("migrations folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let read = |p: &std::path::PathBuf| std::fs::read_to_string(p).expect("migration file");
    let at = files
        .iter()
        .position(|p| p.to_string_lossy().contains(version))
        .expect("the migration exists");
    (
        files[..at].iter().map(read).collect(),
        files[at..].iter().map(read).collect(),
    )
}

#[tokio::test]
async fn report_child_links_are_built_from_an_existing_mirror() {
    // Given a database migrated before cdc.report_child existed, whose mirror holds a live
    // report listing two employee works and a production (one listed twice), and a deleted
    // report
    let db = TestDb::new().await;
    let c = db.client().await;
    let (before, rest) = files_split_at("V20261127000301");
    for sql in &before {
        c.batch_execute(sql).await.expect("older migration");
    }
    c.batch_execute(
        r#"INSERT INTO cdc.source_doc (entity, key, ct_t, ct_i, ordinal, wall_time, doc, deleted) VALUES
        ('daily_report', 'r1', 1, 0, 0, now(), '{"employeeWork": [{"$oid": "w1"}, {"$oid": "w2"}],
          "production": [{"$oid": "p1"}, {"$oid": "p1"}], "vehicleWork": "not an array"}', false),
        ('daily_report', 'r2', 1, 0, 0, now(), NULL, true),
        ('employee_work', 'w1', 1, 0, 0, now(), '{}', false)"#,
    )
    .await
    .expect("mirror rows");
    // When the remaining migrations run
    for sql in &rest {
        c.batch_execute(sql).await.expect("newer migration");
    }
    // Then every child of the live report is linked to it, once
    let links: Vec<(String, String, String)> = c
        .query(
            "SELECT entity, child_key, report_key FROM cdc.report_child ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want = [
        ("employee_work", "w1", "r1"),
        ("employee_work", "w2", "r1"),
        ("production", "p1", "r1"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(links, want);
    // And the GIN indexes it replaces are gone
    let gin: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'cdc' AND indexname LIKE 'source_doc_report_%' \
             AND indexdef LIKE '%gin%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gin, 0);
}
