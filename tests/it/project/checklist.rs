//! The legacy sync's behaviour checklist, item by item, with the legacy seed and numbers.

use bowmark_cdc::event::Entity;
use serde_json::json;

use super::Harness;
use super::seed::*;

const ZEROS: &str = "000000000000000000000000";

#[tokio::test]
async fn dimensions_jobsite_rows_are_idempotent_and_follow_renames() {
    let mut h = Harness::new().await;
    h.seed().await;
    let id_of = "SELECT id::text, name, jobcode, active FROM dim_jobsite WHERE mongo_id = $1";
    let first = h.rows(id_of, &[&JOBSITE_2]).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].get::<_, String>(1), "Jobsite 2");
    assert_eq!(
        first[0].get::<_, Option<String>>(2).as_deref(),
        Some("2022-2")
    );
    assert!(first[0].get::<_, bool>(3));

    // Given the same jobsite again, then a renamed one.
    h.put(Entity::Jobsite, JOBSITE_2, jobsite_2()).await;
    let mut renamed = jobsite_2();
    renamed["name"] = json!("Updated Jobsite Name");
    h.put(Entity::Jobsite, JOBSITE_2, renamed).await;
    let again = h.rows(id_of, &[&JOBSITE_2]).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].get::<_, String>(0), first[0].get::<_, String>(0));
    assert_eq!(again[0].get::<_, String>(1), "Updated Jobsite Name");

    // Jobsite 3 has no jobcode: NULL is accepted.
    let j3 = h.rows(id_of, &[&JOBSITE_3]).await;
    assert_eq!(j3[0].get::<_, Option<String>>(2), None);
}

#[tokio::test]
async fn dimensions_employee_rates_are_replaced_not_appended() {
    let mut h = Harness::new().await;
    h.seed().await;
    let rates = "SELECT r.rate::text, r.effective_date::text FROM dim_employee_rate r \
                 JOIN dim_employee e ON e.id = r.employee_id WHERE e.mongo_id = $1 \
                 ORDER BY r.effective_date";
    let got: Vec<(String, String)> = h
        .rows(rates, &[&BASE_FOREMAN_1])
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("20.00".to_string(), "2021-01-01".to_string()),
            ("25.00".to_string(), "2022-01-01".to_string())
        ]
    );
    let emp = "SELECT id::text, name, job_title FROM dim_employee WHERE mongo_id = $1";
    let before: String = h.rows(emp, &[&BASE_FOREMAN_1]).await[0].get(0);
    let mut renamed = base_foreman_1();
    renamed["name"] = json!("Base Foreman One");
    h.put(Entity::Employee, BASE_FOREMAN_1, renamed).await;
    assert_eq!(h.rows(rates, &[&BASE_FOREMAN_1]).await.len(), 2);
    let after = h.rows(emp, &[&BASE_FOREMAN_1]).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].get::<_, String>(0), before);
    assert_eq!(after[0].get::<_, String>(1), "Base Foreman One");
    assert_eq!(
        after[0].get::<_, Option<String>>(2).as_deref(),
        Some("Foreman")
    );
    assert_eq!(h.rows(rates, &[&OFFICE_ADMIN]).await.len(), 0);
}

#[tokio::test]
async fn dimensions_crews_keep_ids_and_follow_renames() {
    let mut h = Harness::new().await;
    h.seed().await;
    let q = "SELECT id::text, name, type FROM dim_crew WHERE mongo_id = $1";
    let c1 = h.rows(q, &[&CREW_BASE_1]).await;
    let c2 = h.rows(q, &[&CREW_BASE_2]).await;
    assert_eq!(
        (c1[0].get::<_, String>(1), c1[0].get::<_, String>(2)),
        ("Base Crew 1".into(), "Base".into())
    );
    assert_ne!(c1[0].get::<_, String>(0), c2[0].get::<_, String>(0));
    h.put(
        Entity::Crew,
        CREW_BASE_1,
        crew(CREW_BASE_1, "Renamed Crew", "Base"),
    )
    .await;
    let again = h.rows(q, &[&CREW_BASE_1]).await;
    assert_eq!(again[0].get::<_, String>(0), c1[0].get::<_, String>(0));
    assert_eq!(again[0].get::<_, String>(1), "Renamed Crew");
    assert_eq!(h.count("SELECT count(*) FROM dim_crew", &[]).await, 2);
}

#[tokio::test]
async fn daily_report_creates_its_dim_row_and_children_once() {
    let mut h = Harness::new().await;
    h.seed().await;
    let q = "SELECT dr.approved, j.mongo_id, c.mongo_id FROM dim_daily_report dr \
             JOIN dim_jobsite j ON j.id = dr.jobsite_id JOIN dim_crew c ON c.id = dr.crew_id \
             WHERE dr.mongo_id = $1";
    let r = h.rows(q, &[&REPORT_1]).await;
    assert_eq!(r.len(), 1);
    assert!(r[0].get::<_, bool>(0));
    assert_eq!(r[0].get::<_, String>(1), JOBSITE_1);
    assert_eq!(r[0].get::<_, String>(2), CREW_BASE_1);
    // Running the report again leaves one row.
    h.put(Entity::DailyReport, REPORT_1, report_1()).await;
    assert_eq!(
        h.count(
            "SELECT count(*) FROM dim_daily_report WHERE mongo_id = $1",
            &[&REPORT_1]
        )
        .await,
        1
    );
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(false)
    );
    assert_eq!(
        h.num("fact_production", "quantity", PRODUCTION_1).await,
        "150.000"
    );
}

#[tokio::test]
async fn daily_report_delete_archives_it_and_its_facts_and_unknown_ids_are_fine() {
    let mut h = Harness::new().await;
    h.seed().await;
    h.del(Entity::DailyReport, REPORT_1).await;
    let archived: bool = h
        .rows(
            "SELECT archived FROM dim_daily_report WHERE mongo_id = $1",
            &[&REPORT_1],
        )
        .await[0]
        .get(0);
    assert!(archived);
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(true)
    );
    assert_eq!(
        h.archived("fact_vehicle_work", VEHICLE_WORK_1).await,
        Some(true)
    );
    assert_eq!(
        h.archived("fact_material_shipment", SHIPMENT_COSTED_1)
            .await,
        Some(true)
    );
    assert_eq!(
        h.num("fact_production", "quantity", PRODUCTION_1).await,
        "NO ROW"
    );
    // Unknown id: nothing happens, no error.
    let stats = h.del(Entity::DailyReport, ZEROS).await;
    assert_eq!(stats.applied, 1);
}

#[tokio::test]
async fn employee_work_is_costed_at_the_rate_effective_on_the_work_date() {
    let mut h = Harness::new().await;
    h.seed().await;
    let r = h
        .rows(
            "SELECT start_time::text, end_time::text, hourly_rate::text, hours::text, \
                    total_cost::text, crew_type, work_date::text \
             FROM fact_employee_work WHERE mongo_id = $1",
            &[&EMPLOYEE_WORK_1],
        )
        .await;
    assert_eq!(r.len(), 1);
    let row = &r[0];
    assert_eq!(row.get::<_, String>(0), "2022-02-23 07:00:00+00");
    assert_eq!(row.get::<_, String>(1), "2022-02-23 15:00:00+00");
    assert_eq!(
        row.get::<_, String>(2),
        "25.00",
        "the 2022-01-01 rate, not 20"
    );
    assert_eq!(row.get::<_, String>(3), "8.00");
    assert_eq!(row.get::<_, String>(4), "200.00");
    assert_eq!(row.get::<_, String>(5), "Base");
    assert_eq!(row.get::<_, String>(6), "2022-02-23");
    for (table, key) in [
        ("dim_jobsite", JOBSITE_1),
        ("dim_employee", BASE_FOREMAN_1),
        ("dim_crew", CREW_BASE_1),
    ] {
        let n = h
            .count(
                &format!("SELECT count(*) FROM {table} WHERE mongo_id = $1"),
                &[&key],
            )
            .await;
        assert_eq!(n, 1, "{table}");
    }
    // Twice: one row. Deleted: archived, the row stays.
    h.put(
        Entity::EmployeeWork,
        EMPLOYEE_WORK_1,
        employee_work(
            EMPLOYEE_WORK_1,
            BASE_FOREMAN_1,
            "2022-02-23T07:00:00Z",
            "2022-02-23T15:00:00Z",
        ),
    )
    .await;
    assert_eq!(
        h.count("SELECT count(*) FROM fact_employee_work", &[])
            .await,
        1
    );
    h.del(Entity::EmployeeWork, EMPLOYEE_WORK_1).await;
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(true)
    );
}

/// Given an employee whose rates include two entries for one date, when work items fall
/// before the first rate, on a rate's date, between rates and after the last, then each is
/// costed at the latest rate dated on or before its work date (the higher of a date's two),
/// and at 0 before the first.
#[tokio::test]
async fn work_items_take_the_rate_of_their_work_date_the_highest_of_a_date_and_zero_before_any() {
    let mut h = Harness::new().await;
    h.seed().await;
    let mut employee = base_foreman_1();
    employee["rates"] = json!([
        { "_id": oid("6216645500000000000009e1"), "date": date("2022-01-01T00:00:00Z"), "rate": 40 },
        { "_id": oid("6216645500000000000009e2"), "date": date("2022-06-01T00:00:00Z"), "rate": 45 },
        { "_id": oid("6216645500000000000009e3"), "date": date("2022-06-01T00:00:00Z"), "rate": 50 },
        { "_id": oid("6216645500000000000009e4"), "date": date("2023-01-01T00:00:00Z"), "rate": 60 }
    ]);
    h.put(Entity::Employee, BASE_FOREMAN_1, employee).await;
    let cases = [
        ("2021-12-31", "0.00"),
        ("2022-01-01", "40.00"),
        ("2022-05-31", "40.00"),
        ("2022-06-01", "50.00"),
        ("2022-12-31", "50.00"),
        ("2023-01-01", "60.00"),
        ("2024-03-01", "60.00"),
    ];
    let mut docs = Vec::new();
    for (i, (day, _)) in cases.iter().enumerate() {
        let (report_key, work_key) = (
            format!("62166455000000000000a{i:03}"),
            format!("62166455000000000000b{i:03}"),
        );
        let mut r = report(
            &report_key,
            &format!("{day}T12:00:00Z"),
            JOBSITE_1,
            CREW_BASE_1,
        );
        r["employeeWork"] = oids(&[work_key.as_str()]);
        let t = h.tick();
        docs.push(upsert(Entity::DailyReport, &report_key, r, t));
        let w = employee_work(
            &work_key,
            BASE_FOREMAN_1,
            &format!("{day}T07:00:00Z"),
            &format!("{day}T15:00:00Z"),
        );
        docs.push(upsert(Entity::EmployeeWork, &work_key, w, t));
    }
    h.apply(&docs).await;
    for (i, (day, rate)) in cases.iter().enumerate() {
        assert_eq!(
            h.num(
                "fact_employee_work",
                "hourly_rate",
                &format!("62166455000000000000b{i:03}")
            )
            .await,
            *rate,
            "work on {day}"
        );
    }
}

#[tokio::test]
async fn vehicle_work_takes_hours_as_stored_at_the_vehicle_rate() {
    let mut h = Harness::new().await;
    h.seed().await;
    assert_eq!(
        h.num("fact_vehicle_work", "hours", VEHICLE_WORK_1).await,
        "3.00"
    );
    assert_eq!(
        h.num("fact_vehicle_work", "hourly_rate", VEHICLE_WORK_1)
            .await,
        "85.00"
    );
    assert_eq!(
        h.num("fact_vehicle_work", "total_cost", VEHICLE_WORK_1)
            .await,
        "255.00"
    );
    for (table, key) in [
        ("dim_vehicle", SKIDSTEER_1),
        ("dim_crew", CREW_BASE_1),
        ("dim_jobsite", JOBSITE_1),
        ("dim_daily_report", REPORT_1),
    ] {
        let n = h
            .count(
                &format!("SELECT count(*) FROM {table} WHERE mongo_id = $1"),
                &[&key],
            )
            .await;
        assert_eq!(n, 1, "{table}");
    }
    h.put(
        Entity::VehicleWork,
        VEHICLE_WORK_1,
        vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, 3.0),
    )
    .await;
    assert_eq!(
        h.count("SELECT count(*) FROM fact_vehicle_work", &[]).await,
        1
    );
    h.del(Entity::VehicleWork, VEHICLE_WORK_1).await;
    assert_eq!(
        h.archived("fact_vehicle_work", VEHICLE_WORK_1).await,
        Some(true)
    );
}

#[tokio::test]
async fn material_shipments_costed_non_costed_and_trucking() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Costed: 5 x 10.
    assert_eq!(
        h.num("fact_material_shipment", "quantity", SHIPMENT_COSTED_1)
            .await,
        "5.000"
    );
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_COSTED_1)
            .await,
        "10.00"
    );
    assert_eq!(
        h.num("fact_material_shipment", "total_cost", SHIPMENT_COSTED_1)
            .await,
        "50.00"
    );
    assert_eq!(
        h.num("fact_material_shipment", "unit", SHIPMENT_COSTED_1)
            .await,
        "tonnes"
    );
    // Non-costed: no costed row; Gravel from Local Supplier.
    assert_eq!(
        h.num("fact_material_shipment", "quantity", SHIPMENT_NON_COSTED_1)
            .await,
        "NO ROW"
    );
    let nc = h
        .rows("SELECT quantity::text, material_name, supplier_name FROM fact_non_costed_material WHERE mongo_id = $1",
              &[&SHIPMENT_NON_COSTED_1])
        .await;
    assert_eq!(
        (
            nc[0].get::<_, String>(0),
            nc[0].get::<_, String>(1),
            nc[0].get::<_, String>(2)
        ),
        ("3.000".into(), "Gravel".into(), "Local Supplier".into())
    );
    // Trucking: both rows; Tandem 120/Hour, 2 h, 240 (the only rate is dated after the work
    // date: the oldest-rate fallback).
    assert_eq!(
        h.num("fact_material_shipment", "quantity", SHIPMENT_TRUCKING_1)
            .await,
        "2.000"
    );
    let tr = h
        .rows(
            "SELECT rate::text, rate_type, hours::text, total_cost::text, trucking_type, \
                      vehicle_source, vehicle_type, vehicle_code, trucking_rate_id \
               FROM fact_trucking WHERE mongo_id = $1",
            &[&SHIPMENT_TRUCKING_1],
        )
        .await;
    assert_eq!(tr.len(), 1);
    assert_eq!(tr[0].get::<_, String>(0), "120.00");
    assert_eq!(tr[0].get::<_, String>(1), "Hour");
    assert_eq!(tr[0].get::<_, String>(2), "2.00");
    assert_eq!(tr[0].get::<_, String>(3), "240.00");
    assert_eq!(tr[0].get::<_, String>(4), "Tandem");
    assert_eq!(
        tr[0].get::<_, Option<String>>(5).as_deref(),
        Some("Company")
    );
    assert_eq!(
        tr[0].get::<_, Option<String>>(8).as_deref(),
        Some(TANDEM_RATE)
    );
    // Idempotent: the whole seed again changes nothing.
    h.seed().await;
    for t in [
        "fact_material_shipment",
        "fact_non_costed_material",
        "fact_trucking",
    ] {
        let before = h.count(&format!("SELECT count(*) FROM {t}"), &[]).await;
        assert!(before > 0);
    }
    assert_eq!(h.count("SELECT count(*) FROM fact_trucking", &[]).await, 2);
    assert_eq!(
        h.count("SELECT count(*) FROM fact_material_shipment", &[])
            .await,
        6
    );
    assert_eq!(
        h.count("SELECT count(*) FROM fact_non_costed_material", &[])
            .await,
        1
    );
}

#[tokio::test]
async fn material_shipments_invoice_delivered_and_scenario_rates() {
    let mut h = Harness::new().await;
    h.seed().await;
    let q = "SELECT quantity::text, rate::text, estimated, delivered_rate_id, rate_scenario_id \
             FROM fact_material_shipment WHERE mongo_id = $1";
    let row = |r: &tokio_postgres::Row| -> (String, String, bool, Option<String>, Option<String>) {
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    // Invoice: 500 / 10 = 50.
    let inv = h.rows(q, &[&SHIPMENT_INVOICE_COST_1]).await;
    assert_eq!(
        row(&inv[0]),
        ("10.000".into(), "50.00".into(), false, None, None)
    );
    // Delivered rate 25 with its entry id.
    let del = h.rows(q, &[&SHIPMENT_DELIVERED_RATE_1]).await;
    assert_eq!(
        row(&del[0]),
        (
            "8.000".into(),
            "25.00".into(),
            false,
            Some(DELIVERED_TANDEM.into()),
            None
        )
    );
    // Scenarios: pickup 30 (with trucking 120 x 2 h = 240), delivered 45 (no trucking).
    let pick = h.rows(q, &[&SHIPMENT_SCENARIO_PICKUP_1]).await;
    assert_eq!(
        row(&pick[0]),
        (
            "6.000".into(),
            "30.00".into(),
            false,
            None,
            Some(SCENARIO_PICKUP.into())
        )
    );
    assert_eq!(
        h.num("fact_trucking", "rate", SHIPMENT_SCENARIO_PICKUP_1)
            .await,
        "120.00"
    );
    assert_eq!(
        h.num("fact_trucking", "hours", SHIPMENT_SCENARIO_PICKUP_1)
            .await,
        "2.00"
    );
    assert_eq!(
        h.num("fact_trucking", "total_cost", SHIPMENT_SCENARIO_PICKUP_1)
            .await,
        "240.00"
    );
    let dlv = h.rows(q, &[&SHIPMENT_SCENARIO_DELIVERED_1]).await;
    assert_eq!(
        row(&dlv[0]),
        (
            "4.000".into(),
            "45.00".into(),
            false,
            None,
            Some(SCENARIO_DELIVERED.into())
        )
    );
    assert_eq!(
        h.num("fact_trucking", "rate", SHIPMENT_SCENARIO_DELIVERED_1)
            .await,
        "NO ROW"
    );
}

#[tokio::test]
async fn material_shipment_deletes_archive_and_unknown_ids_are_fine() {
    let mut h = Harness::new().await;
    h.seed().await;
    h.del(Entity::MaterialShipment, SHIPMENT_COSTED_1).await;
    h.del(Entity::MaterialShipment, SHIPMENT_TRUCKING_1).await;
    assert_eq!(
        h.archived("fact_material_shipment", SHIPMENT_COSTED_1)
            .await,
        Some(true)
    );
    assert_eq!(
        h.archived("fact_material_shipment", SHIPMENT_TRUCKING_1)
            .await,
        Some(true)
    );
    assert_eq!(
        h.archived("fact_trucking", SHIPMENT_TRUCKING_1).await,
        Some(true)
    );
    let stats = h.del(Entity::MaterialShipment, ZEROS).await;
    assert_eq!(stats.applied, 1);
    assert!(stats.rows_written.is_empty(), "{:?}", stats.rows_written);
}

#[tokio::test]
async fn production_rows_map_to_their_report_and_are_hard_deleted() {
    let mut h = Harness::new().await;
    h.seed().await;
    let q = "SELECT p.quantity::text, p.unit, dr.mongo_id, j.mongo_id, p.hours::text FROM fact_production p \
             JOIN dim_daily_report dr ON dr.id = p.daily_report_id JOIN dim_jobsite j ON j.id = p.jobsite_id \
             WHERE p.mongo_id = $1";
    let r = h.rows(q, &[&PRODUCTION_1]).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "150.000");
    assert_eq!(r[0].get::<_, String>(1), "tonnes");
    assert_eq!(r[0].get::<_, String>(2), REPORT_1);
    assert_eq!(r[0].get::<_, String>(3), JOBSITE_1);
    assert_eq!(r[0].get::<_, String>(4), "8.00");
    h.put(Entity::Production, PRODUCTION_1, production_1())
        .await;
    assert_eq!(
        h.count("SELECT count(*) FROM fact_production", &[]).await,
        1
    );
    h.del(Entity::Production, PRODUCTION_1).await;
    assert_eq!(
        h.count("SELECT count(*) FROM fact_production", &[]).await,
        0
    );
    h.del(Entity::Production, ZEROS).await;
}

#[tokio::test]
async fn invoices_revenue_external_and_expense_internal_then_hard_deleted() {
    let mut h = Harness::new().await;
    h.seed().await;
    let q = "SELECT amount::text, direction, invoice_type, invoice_number, invoice_date::text \
             FROM fact_invoice WHERE mongo_id = $1";
    let rev = h.rows(q, &[&INVOICE_REVENUE_1]).await;
    assert_eq!(rev[0].get::<_, String>(0), "25000.00");
    assert_eq!(rev[0].get::<_, String>(1), "revenue");
    assert_eq!(rev[0].get::<_, String>(2), "external");
    assert_eq!(rev[0].get::<_, String>(4), "2022-03-01");
    let exp = h.rows(q, &[&INVOICE_EXPENSE_1]).await;
    assert_eq!(exp[0].get::<_, String>(0), "8000.00");
    assert_eq!(exp[0].get::<_, String>(1), "expense");
    assert_eq!(exp[0].get::<_, String>(2), "internal");
    // Idempotent.
    h.put(
        Entity::Invoice,
        INVOICE_REVENUE_1,
        invoice(
            INVOICE_REVENUE_1,
            "INV-REV-001",
            "2022-03-01",
            25000.0,
            false,
            CUSTOMER,
        ),
    )
    .await;
    assert_eq!(h.count("SELECT count(*) FROM fact_invoice", &[]).await, 2);
    h.del(Entity::Invoice, INVOICE_REVENUE_1).await;
    assert_eq!(
        h.count(
            "SELECT count(*) FROM fact_invoice WHERE mongo_id = $1",
            &[&INVOICE_REVENUE_1]
        )
        .await,
        0
    );
    h.del(Entity::Invoice, ZEROS).await;
}

#[tokio::test]
async fn report_layer_sums_approved_labour_per_jobsite() {
    // Given two employee-work rows on one approved report (07-15 at 25, 08-14 at 30), one on
    // another jobsite and one on an unapproved report.
    let mut h = Harness::new().await;
    h.seed().await;
    let second = "6216645500000000000003a1";
    let other = "6216645500000000000003a2";
    let unapproved_work = "6216645500000000000003a3";
    let unapproved_report = "6216645500000000000003a4";
    let other_report = "6216645500000000000003a5";
    let mut admin = json!({ "_id": oid(OFFICE_ADMIN), "name": "Office Admin", "rates": [
        { "_id": oid("6216645500000000000003b1"), "date": date("2022-01-01T00:00:00Z"), "rate": 30 }]});
    admin["jobTitle"] = json!("Admin");
    h.put(Entity::Employee, OFFICE_ADMIN, admin).await;
    h.put(
        Entity::EmployeeWork,
        second,
        employee_work(
            second,
            OFFICE_ADMIN,
            "2022-02-23T08:00:00Z",
            "2022-02-23T14:00:00Z",
        ),
    )
    .await;
    h.put(
        Entity::EmployeeWork,
        other,
        employee_work(
            other,
            OFFICE_ADMIN,
            "2022-02-23T08:00:00Z",
            "2022-02-23T14:00:00Z",
        ),
    )
    .await;
    h.put(
        Entity::EmployeeWork,
        unapproved_work,
        employee_work(
            unapproved_work,
            OFFICE_ADMIN,
            "2022-02-24T08:00:00Z",
            "2022-02-24T14:00:00Z",
        ),
    )
    .await;
    let mut r1 = report_1();
    r1["employeeWork"] = oids(&[EMPLOYEE_WORK_1, second]);
    h.put(Entity::DailyReport, REPORT_1, r1).await;
    let mut r3 = report(other_report, "2022-02-23T07:00:00Z", JOBSITE_3, CREW_BASE_2);
    r3["employeeWork"] = oids(&[other]);
    h.put(Entity::DailyReport, other_report, r3).await;
    let mut r4 = report(
        unapproved_report,
        "2022-02-24T07:00:00Z",
        JOBSITE_1,
        CREW_BASE_2,
    );
    r4["approved"] = json!(false);
    r4["employeeWork"] = oids(&[unapproved_work]);
    h.put(Entity::DailyReport, unapproved_report, r4).await;

    let q = "SELECT s.date::text, s.employee_hours::text, s.employee_cost::text \
             FROM jobsite_daily_summary s JOIN dim_jobsite j ON j.id = s.jobsite_id \
             WHERE j.mongo_id = $1 ORDER BY s.date";
    let rows = h.rows(q, &[&JOBSITE_1]).await;
    let days: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(days.len(), 1, "the unapproved day is absent: {days:?}");
    assert_eq!(days[0].0, "2022-02-23");
    assert_eq!(days[0].1.parse::<f64>().unwrap(), 14.0);
    assert_eq!(days[0].2.parse::<f64>().unwrap(), 380.0);
}
