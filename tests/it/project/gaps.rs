//! What the legacy tests never covered (the legacy checklist's "gaps"), plus version handling.

use bowmark_cdc::event::{Entity, Op};
use bowmark_cdc::project::{DocOutcome, SourceDoc, Versions};
use serde_json::json;

use super::Harness;
use super::seed::*;

async fn archived_at(h: &Harness, table: &str, key: &str) -> Option<String> {
    h.rows(
        &format!("SELECT archived_at::text FROM {table} WHERE mongo_id = $1"),
        &[&key],
    )
    .await
    .first()
    .and_then(|r| r.get(0))
}

#[tokio::test]
async fn a_child_removed_from_its_report_is_archived_at_the_detaching_event_then_unarchived() {
    let mut h = Harness::new().await;
    h.seed().await;
    // When report 1 drops its employee work and its shipment.
    let mut r = report_1();
    r["employeeWork"] = json!([]);
    r["materialShipment"] = json!([]);
    h.put(Entity::DailyReport, REPORT_1, r).await;
    let detached_at = wall(h.t).format("%Y-%m-%d %H:%M:%S+00").to_string();
    assert_eq!(
        archived_at(&h, "fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(detached_at.clone())
    );
    assert_eq!(
        archived_at(&h, "fact_material_shipment", SHIPMENT_COSTED_1).await,
        Some(detached_at.clone())
    );
    // A later unrelated event does not move the archive time.
    h.put(Entity::Employee, BASE_FOREMAN_1, base_foreman_1())
        .await;
    assert_eq!(
        archived_at(&h, "fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(detached_at)
    );
    // When it reappears, the row is live again.
    h.put(Entity::DailyReport, REPORT_1, report_1()).await;
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(false)
    );
    assert_eq!(
        h.archived("fact_material_shipment", SHIPMENT_COSTED_1)
            .await,
        Some(false)
    );
}

#[tokio::test]
async fn a_shipment_switching_costed_and_non_costed_moves_between_tables() {
    let mut h = Harness::new().await;
    h.seed().await;
    let mut s = shipment_trucking_1();
    s["noJobsiteMaterial"] = json!(true);
    s["shipmentType"] = json!("Sand");
    h.put(Entity::MaterialShipment, SHIPMENT_TRUCKING_1, s)
        .await;
    assert_eq!(
        h.archived("fact_material_shipment", SHIPMENT_TRUCKING_1)
            .await,
        Some(true)
    );
    assert_eq!(
        h.archived("fact_trucking", SHIPMENT_TRUCKING_1).await,
        Some(true)
    );
    assert_eq!(
        h.archived("fact_non_costed_material", SHIPMENT_TRUCKING_1)
            .await,
        Some(false)
    );
    assert_eq!(
        h.num(
            "fact_non_costed_material",
            "material_name",
            SHIPMENT_TRUCKING_1
        )
        .await,
        "Sand"
    );
    h.put(
        Entity::MaterialShipment,
        SHIPMENT_TRUCKING_1,
        shipment_trucking_1(),
    )
    .await;
    assert_eq!(
        h.archived("fact_material_shipment", SHIPMENT_TRUCKING_1)
            .await,
        Some(false)
    );
    assert_eq!(
        h.archived("fact_trucking", SHIPMENT_TRUCKING_1).await,
        Some(false)
    );
    assert_eq!(
        h.archived("fact_non_costed_material", SHIPMENT_TRUCKING_1)
            .await,
        Some(true)
    );
}

#[tokio::test]
async fn archived_children_carry_their_own_archived_at_and_overnight_shifts_wrap() {
    let mut h = Harness::new().await;
    h.seed().await;
    let mut w = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T22:00:00Z",
        "2022-02-23T06:00:00Z",
    );
    w["archivedAt"] = date("2022-03-01T12:00:00Z");
    h.put(Entity::EmployeeWork, EMPLOYEE_WORK_1, w).await;
    assert_eq!(
        archived_at(&h, "fact_employee_work", EMPLOYEE_WORK_1)
            .await
            .as_deref(),
        Some("2022-03-01 12:00:00+00")
    );
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "8.00"
    );
    assert_eq!(
        h.num("fact_employee_work", "total_cost", EMPLOYEE_WORK_1)
            .await,
        "200.00"
    );
    // Un-archived in Mongo: live again.
    h.put(
        Entity::EmployeeWork,
        EMPLOYEE_WORK_1,
        employee_work(
            EMPLOYEE_WORK_1,
            BASE_FOREMAN_1,
            "2022-02-23T07:00:00Z",
            "2022-02-23T15:20:00Z",
        ),
    )
    .await;
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(false)
    );
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "8.33"
    );
    assert_eq!(
        h.num("fact_employee_work", "total_cost", EMPLOYEE_WORK_1)
            .await,
        "208.33"
    );
}

#[tokio::test]
async fn children_wait_for_their_report_and_missing_dimensions_are_placeholders_filled_in_place() {
    let mut h = Harness::new().await;
    // Children first, then the report, then its jobsite and crew, then the employee.
    let t = h.tick();
    let children = vec![
        upsert(
            Entity::EmployeeWork,
            EMPLOYEE_WORK_1,
            employee_work(
                EMPLOYEE_WORK_1,
                BASE_FOREMAN_1,
                "2022-02-23T07:00:00Z",
                "2022-02-23T15:00:00Z",
            ),
            t,
        ),
        upsert(Entity::Production, PRODUCTION_1, production_1(), t + 1),
    ];
    h.t += 2;
    h.apply(&children).await;
    assert_eq!(
        h.count("SELECT count(*) FROM fact_employee_work", &[])
            .await,
        0
    );
    // The report arrives before its jobsite, crew and employee: it and its children are
    // projected at once, against placeholder rows (rate 0: the employee is unknown yet)
    h.put(Entity::DailyReport, REPORT_1, report_1()).await;
    assert_eq!(
        h.count("SELECT count(*) FROM dim_daily_report", &[]).await,
        1
    );
    assert_eq!(name_of(&h, "dim_crew", CREW_BASE_1).await, "(missing crew)");
    assert_eq!(
        name_of(&h, "dim_jobsite", JOBSITE_1).await,
        "(missing jobsite)"
    );
    assert_eq!(
        name_of(&h, "dim_employee", BASE_FOREMAN_1).await,
        "(missing employee)"
    );
    assert_eq!(
        h.num("fact_employee_work", "crew_type", EMPLOYEE_WORK_1)
            .await,
        "Unknown"
    );
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "0.00"
    );
    assert_eq!(
        h.num("fact_production", "quantity", PRODUCTION_1).await,
        "150.000"
    );
    // The documents appear: the placeholders are filled in place and the facts re-derived
    h.put(
        Entity::Jobsite,
        JOBSITE_1,
        jobsite(JOBSITE_1, "Jobsite 1", Some("2022-1"), &[]),
    )
    .await;
    h.put(
        Entity::Crew,
        CREW_BASE_1,
        crew(CREW_BASE_1, "Base Crew 1", "Base"),
    )
    .await;
    h.put(Entity::Employee, BASE_FOREMAN_1, base_foreman_1())
        .await;
    assert_eq!(name_of(&h, "dim_crew", CREW_BASE_1).await, "Base Crew 1");
    assert_eq!(name_of(&h, "dim_jobsite", JOBSITE_1).await, "Jobsite 1");
    assert_eq!(
        h.count("SELECT count(*) FROM dim_crew", &[]).await,
        1,
        "filled in place, not a second row"
    );
    assert_eq!(
        h.num("fact_employee_work", "crew_type", EMPLOYEE_WORK_1)
            .await,
        "Base"
    );
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "25.00"
    );
}

#[tokio::test]
async fn stale_duplicate_and_documentless_versions_change_nothing() {
    let mut h = Harness::new().await;
    h.seed().await;
    let t = h.tick();
    let new = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T07:00:00Z",
        "2022-02-23T17:00:00Z",
    );
    let old = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T07:00:00Z",
        "2022-02-23T09:00:00Z",
    );
    // The same batch holding the newer version, an older one and a duplicate.
    let stats = h
        .apply(&[
            upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, old.clone(), t - 500),
            upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, new.clone(), t),
            upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, new.clone(), t),
        ])
        .await;
    assert_eq!((stats.applied, stats.stale), (1, 2));
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "10.00"
    );
    // A re-delivery of an older version, alone, is ignored.
    let stats = h
        .apply(&[upsert(
            Entity::EmployeeWork,
            EMPLOYEE_WORK_1,
            old.clone(),
            t - 1,
        )])
        .await;
    assert_eq!((stats.applied, stats.stale), (0, 1));
    assert!(stats.rows_written.is_empty());
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "10.00"
    );
    // An equal version: ignored when streaming, re-applied by the backfill guard.
    let same = upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, old, t);
    assert_eq!(h.apply(std::slice::from_ref(&same)).await.applied, 0);
    assert_eq!(
        h.project(&[same], Versions::NewerOrEqual)
            .await
            .stats
            .applied,
        1
    );
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "2.00"
    );
    // An update whose looked-up document was gone is not a delete.
    let t = h.tick();
    let ev = event(
        "paving",
        Entity::EmployeeWork,
        EMPLOYEE_WORK_1,
        Op::Update,
        None,
        t,
    );
    let doc = SourceDoc::from(&ev);
    assert!(!doc.deleted && doc.doc.is_none());
    let stats = h.apply(&[doc]).await;
    assert_eq!((stats.applied, stats.stale), (0, 1));
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(false)
    );
    // And a delete event is one.
    let t = h.tick();
    let ev = event(
        "paving",
        Entity::EmployeeWork,
        EMPLOYEE_WORK_1,
        Op::Delete,
        None,
        t,
    );
    h.apply(&[SourceDoc::from(&ev)]).await;
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(true)
    );
}

#[tokio::test]
async fn reproject_all_rebuilds_the_star_from_the_mirror() {
    let mut h = Harness::new().await;
    h.seed().await;
    h.client
        .batch_execute(
            "UPDATE fact_employee_work SET hourly_rate = 1; DELETE FROM fact_trucking; \
                        DELETE FROM fact_invoice;",
        )
        .await
        .unwrap();
    let tx = h.client.transaction().await.unwrap();
    let stats = bowmark_cdc::project::reproject_all(&tx, &h.pipeline)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        stats
            .rows_written
            .get("fact_trucking")
            .copied()
            .unwrap_or(0)
            >= 2
    );
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "25.00"
    );
    assert_eq!(
        h.num("fact_trucking", "total_cost", SHIPMENT_TRUCKING_1)
            .await,
        "240.00"
    );
    assert_eq!(h.count("SELECT count(*) FROM fact_invoice", &[]).await, 2);
}

#[tokio::test]
async fn canonical_extended_json_forms_are_read() {
    // Given dates as $numberLong milliseconds and numbers as $numberDecimal / $numberInt.
    let mut h = Harness::new().await;
    h.seed().await;
    let w = json!({ "_id": oid(EMPLOYEE_WORK_1), "employee": oid(BASE_FOREMAN_1), "jobTitle": "Op",
                    "startTime": { "$date": { "$numberLong": "1645599600000" } },   // 2022-02-23T07:00Z
                    "endTime": { "$date": { "$numberLong": "1645630200000" } } }); // 15:30Z
    h.put(Entity::EmployeeWork, EMPLOYEE_WORK_1, w).await;
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "8.50"
    );
    let mut s = shipment(SHIPMENT_COSTED_1, 0.0, Some(JM_1), serde_json::Value::Null);
    s["quantity"] = json!({ "$numberDecimal": "12.5" });
    h.put(Entity::MaterialShipment, SHIPMENT_COSTED_1, s).await;
    assert_eq!(
        h.num("fact_material_shipment", "total_cost", SHIPMENT_COSTED_1)
            .await,
        "125.00"
    );
    let mut v = vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, 0.0);
    v["hours"] = json!({ "$numberInt": "4" });
    h.put(Entity::VehicleWork, VEHICLE_WORK_1, v).await;
    assert_eq!(
        h.num("fact_vehicle_work", "total_cost", VEHICLE_WORK_1)
            .await,
        "340.00"
    );
}

#[tokio::test]
async fn the_entry_point_says_what_became_of_each_document_of_a_batch() {
    let mut h = Harness::new().await;
    h.seed().await;
    let (t1, t2) = (h.tick(), h.tick());
    let mut w = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
    );
    w["endTime"] = json!({ "$date": "not a date" });
    let vw = |hours| vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, hours);
    let batch = [
        // a derived row PostgreSQL rejects (an unparseable date)
        upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, w, t1),
        // superseded by the next one in the same batch
        upsert(Entity::VehicleWork, VEHICLE_WORK_1, vw(4.0), t1),
        upsert(Entity::VehicleWork, VEHICLE_WORK_1, vw(6.0), t2),
        // a key the mirror cannot hold
        upsert(Entity::Crew, "", json!({ "name": "no id" }), t1),
    ];
    let out = h.project(&batch, Versions::Newer).await;
    assert_eq!(out.docs.len(), batch.len());
    assert_eq!(out.docs[0], DocOutcome::Quarantined, "{:?}", out.docs);
    assert_eq!(out.docs[1], DocOutcome::Stale);
    assert_eq!(out.docs[2], DocOutcome::Applied);
    match &out.docs[3] {
        DocOutcome::Rejected(why) => assert!(why.contains("empty _id"), "{why}"),
        other => panic!("the empty key was not rejected: {other:?}"),
    }
    // The rest of the batch committed; the rejected row's document waits in the quarantine.
    assert_eq!(
        h.num("fact_vehicle_work", "hours", VEHICLE_WORK_1).await,
        "6.00"
    );
    assert_eq!(
        h.count(
            "SELECT count(*) FROM cdc.quarantine WHERE key = $1",
            &[&EMPLOYEE_WORK_1]
        )
        .await,
        1
    );
    // Applied again as the backfill does: an equal version is re-applied, the rest is stale.
    let again = h.project(&batch[2..3], Versions::NewerOrEqual).await;
    assert_eq!(again.docs, [DocOutcome::Applied]);
    let again = h.project(&batch[2..3], Versions::Newer).await;
    assert_eq!(again.docs, [DocOutcome::Stale]);
}

/// The name of the TABLE row with this mongo_id.
async fn name_of(h: &Harness, table: &str, key: &str) -> String {
    let sql = format!("SELECT name FROM {table} WHERE mongo_id = $1");
    h.rows(&sql, &[&key]).await[0].get(0)
}
