//! What a complete production snapshot holds and tidy generated data did not: over-long and
//! padded free text, values PostgreSQL cannot store, empty strings, missing fields, rates on the
//! same date. Every valid document yields its rows.

use bowmark_cdc::event::Entity;
use serde_json::json;

use super::Harness;
use super::seed::*;

/// A seed document as the mirror holds it.
async fn mirrored(h: &Harness, entity: Entity, key: &str) -> serde_json::Value {
    let rows = h
        .rows(
            "SELECT doc FROM cdc.source_doc WHERE entity = $1 AND key = $2",
            &[&entity.as_str(), &key],
        )
        .await;
    rows[0].get(0)
}

async fn invoice_revenue_1(h: &Harness) -> serde_json::Value {
    mirrored(h, Entity::Invoice, INVOICE_REVENUE_1).await
}

/// A free-text job title as production holds them: 430 characters, padded with spaces.
fn long_title() -> String {
    format!(
        "{}{}",
        "Labourer / flagger, night shift ".repeat(12),
        " ".repeat(46)
    )
}

#[tokio::test]
async fn over_long_text_is_cut_to_its_column_width_and_the_report_keeps_every_row() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Given a work item whose job title (430 characters) is wider than varchar(255), and a
    // non-costed shipment whose unit (~500 characters) is wider than varchar(50)
    let title = long_title();
    assert_eq!(title.chars().count(), 430);
    let mut w = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
    );
    w["jobTitle"] = json!(title);
    let mut s = shipment_non_costed_1();
    s["unit"] = json!(format!("cubic metres, {}", "é".repeat(490)));
    let t = h.tick();
    let stats = h
        .apply(&[
            upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, w, t),
            upsert(Entity::MaterialShipment, SHIPMENT_NON_COSTED_1, s, t + 1),
        ])
        .await;
    // Then both rows are there, cut to the column's width in characters
    let job_title = h
        .rows(
            "SELECT job_title FROM fact_employee_work WHERE mongo_id = $1",
            &[&EMPLOYEE_WORK_1],
        )
        .await;
    let job_title: String = job_title[0].get(0);
    assert_eq!(job_title.chars().count(), 255);
    assert_eq!(job_title, title.chars().take(255).collect::<String>());
    let unit: String = h
        .rows(
            "SELECT unit FROM fact_non_costed_material WHERE mongo_id = $1",
            &[&SHIPMENT_NON_COSTED_1],
        )
        .await[0]
        .get(0);
    assert_eq!(unit.chars().count(), 50, "{unit}");
    assert!(unit.starts_with("cubic metres, éé"));
    // And each cut is counted by table and column
    assert_eq!(
        stats.adjusted.get(&(
            "fact_employee_work".into(),
            "job_title".into(),
            "truncated".into()
        )),
        Some(&1),
        "{:?}",
        stats.adjusted
    );
    assert_eq!(
        stats.adjusted.get(&(
            "fact_non_costed_material".into(),
            "unit".into(),
            "truncated".into()
        )),
        Some(&1)
    );
    // And the report still holds its other children
    assert_eq!(
        h.count(
            "SELECT count(*) FROM fact_vehicle_work v JOIN dim_daily_report d ON d.id = v.daily_report_id WHERE d.mongo_id = $1",
            &[&REPORT_1]
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_widths_come_from_the_database_not_from_the_code() {
    // Given a database whose job_title column is narrower than the legacy schema's
    let mut h = Harness::new().await;
    h.client
        .batch_execute("ALTER TABLE dim_employee ALTER COLUMN job_title TYPE varchar(12)")
        .await
        .expect("narrow dim_employee.job_title");
    // When an employee with a longer title is projected (a new session reads the widths)
    let mut e = base_foreman_1();
    e["jobTitle"] = json!("General Foreman, Paving");
    h.put(Entity::Employee, BASE_FOREMAN_1, e).await;
    // Then it is cut to that width
    let title: String = h
        .rows(
            "SELECT job_title FROM dim_employee WHERE mongo_id = $1",
            &[&BASE_FOREMAN_1],
        )
        .await[0]
        .get(0);
    assert_eq!(title, "General Fore");
}

#[tokio::test]
async fn nul_characters_nan_infinity_and_impossible_dates_count_as_missing() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Given a work item with a NUL in its job title, a vehicle work whose hours are NaN, a
    // production whose quantity is Infinity, and an invoice dated in the year 300,000
    let mut w = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
    );
    w["jobTitle"] = json!("Fore\u{0}man");
    let mut v = vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, 1.0);
    v["hours"] = json!({"$numberDouble": "NaN"});
    let mut p = production_1();
    p["quantity"] = json!({"$numberDecimal": "Infinity"});
    let mut i = invoice_revenue_1(&h).await;
    i["date"] = json!({"$date": {"$numberLong": "9400000000000000"}});
    let mut e = base_foreman_1();
    e["rates"][0]["rate"] = json!("twenty-five");
    let t = h.tick();
    let stats = h
        .apply(&[
            upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, w, t),
            upsert(Entity::VehicleWork, VEHICLE_WORK_1, v, t + 1),
            upsert(Entity::Production, PRODUCTION_1, p, t + 2),
            upsert(Entity::Invoice, INVOICE_REVENUE_1, i, t + 3),
            upsert(Entity::Employee, BASE_FOREMAN_1, e, t + 4),
        ])
        .await;
    // Then every row is written, the values counting as missing (legacy defaults apply)
    assert_eq!(
        h.num("fact_employee_work", "job_title", EMPLOYEE_WORK_1)
            .await,
        "Foreman"
    );
    assert_eq!(
        h.num("fact_vehicle_work", "hours", VEHICLE_WORK_1).await,
        "0.00"
    );
    assert_eq!(
        h.num("fact_production", "quantity", PRODUCTION_1).await,
        "0.000"
    );
    // (an invoice without a usable date has no fact row, as one without a date)
    assert_eq!(
        h.num("fact_invoice", "amount", INVOICE_REVENUE_1).await,
        "NO ROW"
    );
    // (a rate that is not a number is no rate: the older one applies)
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "20.00"
    );
    for (col, kind) in [
        ("jobTitle", "nul_removed"),
        ("hours", "not_finite"),
        ("quantity", "not_finite"),
        ("date", "date_out_of_range"),
    ] {
        assert_eq!(
            stats
                .adjusted
                .get(&("cdc.source_doc".into(), col.into(), kind.into())),
            Some(&1),
            "{col} {kind}: {:?}",
            stats.adjusted
        );
    }
}

#[tokio::test]
async fn empty_strings_are_null_where_the_legacy_wrote_value_or_null_and_schema_defaults_apply() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Given empty descriptions and vehicle fields, a vehicle object without vehicleType, and a
    // jobsite without `active`
    let mut p = production_1();
    p["description"] = json!("");
    let mut i = invoice_revenue_1(&h).await;
    i["description"] = json!("");
    let mut s = shipment_trucking_1();
    s["vehicleObject"]["source"] = json!("");
    s["vehicleObject"]["vehicleCode"] = json!("");
    s["vehicleObject"]
        .as_object_mut()
        .expect("vehicle object")
        .remove("vehicleType");
    let mut j = mirrored(&h, Entity::Jobsite, JOBSITE_1).await;
    j.as_object_mut().expect("jobsite").remove("active");
    let t = h.tick();
    h.apply(&[
        upsert(Entity::Production, PRODUCTION_1, p, t),
        upsert(Entity::Invoice, INVOICE_REVENUE_1, i, t + 1),
        upsert(Entity::MaterialShipment, SHIPMENT_TRUCKING_1, s, t + 2),
        upsert(Entity::Jobsite, JOBSITE_1, j, t + 3),
    ])
    .await;
    assert_eq!(
        h.num("fact_production", "description", PRODUCTION_1).await,
        "NULL"
    );
    assert_eq!(
        h.num("fact_invoice", "description", INVOICE_REVENUE_1)
            .await,
        "NULL"
    );
    assert_eq!(
        h.num("fact_trucking", "vehicle_source", SHIPMENT_TRUCKING_1)
            .await,
        "NULL"
    );
    assert_eq!(
        h.num("fact_trucking", "vehicle_code", SHIPMENT_TRUCKING_1)
            .await,
        "NULL"
    );
    // (the app's schema default for a vehicle object's type)
    assert_eq!(
        h.num("fact_trucking", "vehicle_type", SHIPMENT_TRUCKING_1)
            .await,
        "Truck"
    );
    assert_eq!(
        h.num(
            "fact_material_shipment",
            "vehicle_type",
            SHIPMENT_TRUCKING_1
        )
        .await,
        "Truck"
    );
    assert_eq!(h.num("dim_jobsite", "active", JOBSITE_1).await, "false");
}

#[tokio::test]
async fn same_date_rates_take_the_latest_instant_then_the_one_listed_last() {
    let mut h = Harness::new().await;
    h.seed().await;
    let rate = |id: &str, at: &str, r: u32| json!({ "_id": oid(id), "date": date(at), "rate": r });
    // Given two rates on 2022-02-01, the later instant listed first
    let mut e = base_foreman_1();
    e["rates"] = json!([
        rate("6216645500000000000000d5", "2022-02-01T18:00:00Z", 31),
        rate("6216645500000000000000d6", "2022-02-01T06:00:00Z", 45),
        rate("6216645500000000000000d7", "2021-01-01T00:00:00Z", 20),
    ]);
    h.put(Entity::Employee, BASE_FOREMAN_1, e.clone()).await;
    // Then the latest instant wins, not the highest rate
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "31.00"
    );
    // Given equal instants: the one listed last wins, in either order
    for (first, last) in [(31, 45), (45, 31)] {
        e["rates"] = json!([
            rate("6216645500000000000000d5", "2022-02-01T06:00:00Z", first),
            rate("6216645500000000000000d6", "2022-02-01T06:00:00Z", last),
        ]);
        h.put(Entity::Employee, BASE_FOREMAN_1, e.clone()).await;
        assert_eq!(
            h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
                .await,
            format!("{last}.00")
        );
    }
    // And jobsite-material rates alike
    let mut jm = jm_1();
    jm["rates"] = json!([
        { "_id": oid("621664550000000000000215"), "date": date("2022-01-01T00:00:00Z"), "rate": 12, "estimated": false },
        { "_id": oid("621664550000000000000216"), "date": date("2022-01-01T00:00:00Z"), "rate": 9, "estimated": false },
    ]);
    h.put(Entity::JobsiteMaterial, JM_1, jm).await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_COSTED_1)
            .await,
        "9.00"
    );
}

/// The report's employee hours and costs as the company's reports read them.
async fn report_labour(h: &Harness) -> (String, String) {
    let r = h
        .rows(
            "SELECT sum(c.quantity)::text, sum(c.total_cost)::text FROM jobsite_all_costs c
             JOIN dim_daily_report d ON d.id = c.daily_report_id
             WHERE d.mongo_id = $1 AND c.cost_type = 'employee'",
            &[&REPORT_1],
        )
        .await;
    (
        r[0].get::<_, Option<String>>(0).unwrap_or_default(),
        r[0].get::<_, Option<String>>(1).unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_report_whose_crew_document_is_gone_keeps_its_hours_and_costs_in_the_reports() {
    // Given the seed, whose report 1 has 8 h of Base Foreman 1 at 25.00
    let mut h = Harness::new().await;
    h.seed().await;
    let before = report_labour(&h).await;
    assert_eq!(before, ("8.00".into(), "200.00".into()));
    // When its crew document is deleted
    h.del(Entity::Crew, CREW_BASE_1).await;
    // Then the report and its facts stay (no cascade), against the crew's placeholder row,
    // and the reports show the same hours and costs
    assert_eq!(report_labour(&h).await, before);
    let crew: (String, String) = {
        let r = h
            .rows(
                "SELECT name, type FROM dim_crew WHERE mongo_id = $1",
                &[&CREW_BASE_1],
            )
            .await;
        (r[0].get(0), r[0].get(1))
    };
    assert_eq!(crew, ("(missing crew)".into(), "Unknown".into()));
    assert_eq!(
        h.num("fact_employee_work", "crew_type", EMPLOYEE_WORK_1)
            .await,
        "Unknown"
    );
    // And a report naming a crew that never existed is projected as well
    let mut r = report_1();
    r["crew"] = oid("6216645500000000000000c9");
    h.put(Entity::DailyReport, REPORT_1, r).await;
    assert_eq!(report_labour(&h).await, before);
}

#[tokio::test]
async fn deleting_any_dimension_document_never_removes_reports_or_facts() {
    let mut h = Harness::new().await;
    h.seed().await;
    let facts = "SELECT (SELECT count(*) FROM fact_employee_work) + (SELECT count(*) FROM fact_vehicle_work)
        + (SELECT count(*) FROM fact_material_shipment) + (SELECT count(*) FROM fact_non_costed_material)
        + (SELECT count(*) FROM fact_trucking) + (SELECT count(*) FROM fact_production)
        + (SELECT count(*) FROM dim_daily_report)";
    let before = h.count(facts, &[]).await;
    assert!(before > 10);
    // When every dimension document the reports use is deleted
    for (e, k) in [
        (Entity::Jobsite, JOBSITE_1),
        (Entity::Jobsite, JOBSITE_2),
        (Entity::Crew, CREW_BASE_1),
        (Entity::Employee, BASE_FOREMAN_1),
        (Entity::Vehicle, SKIDSTEER_1),
        (Entity::JobsiteMaterial, JM_1),
        (Entity::Material, MATERIAL_GRAVEL),
        (Entity::Company, SUPPLIER),
    ] {
        h.del(e, k).await;
    }
    // Then every report and fact row is still there and still live
    assert_eq!(h.count(facts, &[]).await, before);
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(false)
    );
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "8.00"
    );
    // (the employee's row is archived, not replaced; its rates are gone with its document, so
    // the hours cost 0 as for any employee without a rate)
    assert_eq!(h.archived("dim_employee", BASE_FOREMAN_1).await, Some(true));
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "0.00"
    );
    // (the shipment of the deleted jobsite material is costed 0, estimated, not dropped)
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_COSTED_1)
            .await,
        "0.00"
    );
    assert_eq!(
        h.num("fact_material_shipment", "estimated", SHIPMENT_COSTED_1)
            .await,
        "true"
    );
}

#[tokio::test]
async fn a_row_postgres_still_rejects_quarantines_its_own_document_and_nothing_else() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Given one batch: the report, an edited employee work, and a vehicle work whose hours
    // (a billion) overflow the column
    let mut v = vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, 1.0);
    v["hours"] = json!(1_000_000_000.0);
    let w = employee_work(
        EMPLOYEE_WORK_1,
        BASE_FOREMAN_1,
        "2022-02-23T07:00:00Z",
        "2022-02-23T17:00:00Z",
    );
    let t = h.tick();
    h.t += 3;
    let stats = h
        .apply(&[
            upsert(Entity::VehicleWork, VEHICLE_WORK_1, v, t),
            upsert(Entity::EmployeeWork, EMPLOYEE_WORK_1, w, t + 1),
            upsert(Entity::DailyReport, REPORT_1, report_1(), t + 2),
        ])
        .await;
    // Then only the vehicle work is left out and listed in the quarantine, with the SQLSTATE,
    // table and column but not the value
    assert_eq!(
        stats.quarantined.iter().collect::<Vec<_>>(),
        [&("vehicle_work".to_string(), VEHICLE_WORK_1.to_string())]
    );
    let q = h
        .rows("SELECT entity, key, reason, ct_t FROM cdc.quarantine", &[])
        .await;
    assert_eq!(q.len(), 1);
    let reason: String = q[0].get(2);
    assert!(reason.contains("22003"), "{reason}");
    assert!(reason.contains("fact_vehicle_work"), "{reason}");
    assert!(!reason.contains("1000000000"), "{reason}");
    assert_eq!(q[0].get::<_, i64>(3), i64::from(t));
    assert_eq!(
        h.archived("fact_vehicle_work", VEHICLE_WORK_1).await,
        Some(true),
        "its earlier row is archived, as any row no longer derivable"
    );
    // (the rest of the batch applied: the report and its other children)
    assert_eq!(
        h.num("fact_employee_work", "hours", EMPLOYEE_WORK_1).await,
        "10.00"
    );
    assert_eq!(
        h.num("fact_production", "quantity", PRODUCTION_1).await,
        "150.000"
    );
    // When a newer version of the document arrives, it applies and leaves the quarantine
    h.put(
        Entity::VehicleWork,
        VEHICLE_WORK_1,
        vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, 6.0),
    )
    .await;
    assert_eq!(h.count("SELECT count(*) FROM cdc.quarantine", &[]).await, 0);
    assert_eq!(
        h.archived("fact_vehicle_work", VEHICLE_WORK_1).await,
        Some(false)
    );
    assert_eq!(
        h.num("fact_vehicle_work", "hours", VEHICLE_WORK_1).await,
        "6.00"
    );
}
