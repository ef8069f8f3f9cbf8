//! Each departure from the legacy rules (README, "Differences from the legacy sync"), as a user would notice it.

use bowmark_cdc::event::Entity;
use serde_json::json;

use super::Harness;
use super::seed::*;

#[tokio::test]
async fn d1_dates_are_calendar_dates_in_the_report_time_zone() {
    // Given a report at 03:00Z on 2022-02-23 (the evening of the 22nd in Edmonton).
    for (tz, expected) in [("UTC", "2022-02-23"), ("America/Edmonton", "2022-02-22")] {
        let mut p = crate::support::pipeline("paving");
        p.report_timezone = tz.parse().expect("tz");
        let mut h = Harness::with_pipeline(p).await;
        h.seed().await;
        let mut r = report_1();
        r["date"] = date("2022-02-23T03:00:00Z");
        h.put(Entity::DailyReport, REPORT_1, r).await;
        assert_eq!(
            h.num("dim_daily_report", "report_date", REPORT_1).await,
            expected,
            "{tz}"
        );
        assert_eq!(
            h.num("fact_employee_work", "work_date", EMPLOYEE_WORK_1)
                .await,
            expected,
            "{tz}"
        );
        assert_eq!(
            h.num("fact_invoice", "invoice_date", INVOICE_REVENUE_1)
                .await,
            if tz == "UTC" {
                "2022-03-01"
            } else {
                "2022-02-28"
            },
            "{tz}"
        );
    }
}

#[tokio::test]
async fn d2_quantity_trucking_costs_quantity_and_hours_wrap_overnight() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Given the Tandem rate priced per Quantity (stored capitalised, as Mongo holds it).
    let mut j2 = jobsite_2();
    j2["truckingRates"][0]["rates"][0]["type"] = json!("Quantity");
    h.put(Entity::Jobsite, JOBSITE_2, j2).await;
    assert_eq!(
        h.num("fact_trucking", "rate_type", SHIPMENT_TRUCKING_1)
            .await,
        "Quantity"
    );
    assert_eq!(
        h.num("fact_trucking", "total_cost", SHIPMENT_TRUCKING_1)
            .await,
        "240.00"
    ); // 2 x 120
    assert_eq!(
        h.num("fact_trucking", "total_cost", SHIPMENT_SCENARIO_PICKUP_1)
            .await,
        "720.00"
    ); // 6 x 120
    // Given an Hour rate and a trip from 22:00 to 01:30 the next day: 3.5 h.
    h.put(Entity::Jobsite, JOBSITE_2, jobsite_2()).await;
    let mut s = shipment_trucking_1();
    s["startTime"] = date("2022-02-25T22:00:00Z");
    s["endTime"] = date("2022-02-25T01:30:00Z");
    h.put(Entity::MaterialShipment, SHIPMENT_TRUCKING_1, s)
        .await;
    assert_eq!(
        h.num("fact_trucking", "hours", SHIPMENT_TRUCKING_1).await,
        "3.50"
    );
    assert_eq!(
        h.num("fact_trucking", "total_cost", SHIPMENT_TRUCKING_1)
            .await,
        "420.00"
    );
}

#[tokio::test]
async fn d3_material_linked_invoices_feed_the_rate_not_fact_invoice() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Even when a jobsite also lists it as an expense.
    let mut j2 = jobsite_2();
    j2["expenseInvoices"] = oids(&[INVOICE_MATERIAL_1]);
    h.put(Entity::Jobsite, JOBSITE_2, j2).await;
    assert_eq!(
        h.num("fact_invoice", "amount", INVOICE_MATERIAL_1).await,
        "NO ROW"
    );
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "50.00"
    );
    // Once no material lists it, it is the jobsite's expense.
    let mut jm = jm_invoice();
    jm["invoices"] = json!([]);
    h.put(Entity::JobsiteMaterial, JM_INVOICE, jm).await;
    assert_eq!(
        h.num("fact_invoice", "amount", INVOICE_MATERIAL_1).await,
        "500.00"
    );
    assert_eq!(
        h.num("fact_invoice", "direction", INVOICE_MATERIAL_1).await,
        "expense"
    );
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "0.00"
    );
}

async fn jm_jobsite(h: &Harness, jm: &str) -> String {
    h.rows(
        "SELECT j.mongo_id FROM dim_jobsite_material m JOIN dim_jobsite j ON j.id = m.jobsite_id \
            WHERE m.mongo_id = $1",
        &[&jm],
    )
    .await[0]
        .get(0)
}

#[tokio::test]
async fn d4_jobsite_material_belongs_to_the_jobsite_claiming_it() {
    let mut h = Harness::new().await;
    h.seed().await;
    // JM_1 is used by report 1 on jobsite 1, but jobsite 2 claims it.
    assert_eq!(jm_jobsite(&h, JM_1).await, JOBSITE_2);
    // JM_DELIVERED is claimed by nobody: the jobsite of the report using it.
    assert_eq!(jm_jobsite(&h, JM_DELIVERED).await, JOBSITE_2);
    // Once jobsite 3 claims it, it moves there.
    let mut j3 = jobsite(JOBSITE_3, "Jobsite 3", None, &[JM_DELIVERED]);
    j3["active"] = json!(true);
    h.put(Entity::Jobsite, JOBSITE_3, j3).await;
    assert_eq!(jm_jobsite(&h, JM_DELIVERED).await, JOBSITE_3);
}

#[tokio::test]
async fn d5_dimensions_are_eager() {
    let mut h = Harness::new().await;
    h.seed().await;
    // Nothing references these, yet each has its row.
    for (table, key) in [
        ("dim_jobsite", JOBSITE_3),
        ("dim_employee", OFFICE_ADMIN),
        ("dim_crew", CREW_BASE_2),
        ("dim_jobsite_material", JM_2),
        ("dim_company", CUSTOMER),
        ("dim_material", MATERIAL_ASPHALT),
    ] {
        let n = h
            .count(
                &format!("SELECT count(*) FROM {table} WHERE mongo_id = $1"),
                &[&key],
            )
            .await;
        assert_eq!(n, 1, "{table} {key}");
    }
}

#[tokio::test]
async fn d6_rate_tables_mirror_rates_exactly_and_an_empty_array_empties_them() {
    let mut h = Harness::new().await;
    h.seed().await;
    let mut e = base_foreman_1();
    e["rates"] = json!([]);
    h.put(Entity::Employee, BASE_FOREMAN_1, e).await;
    let n = h
        .count(
            "SELECT count(*) FROM dim_employee_rate r JOIN dim_employee e ON e.id = r.employee_id \
                     WHERE e.mongo_id = $1",
            &[&BASE_FOREMAN_1],
        )
        .await;
    assert_eq!(n, 0);
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "0.00"
    );
    let mut jm = jm_1();
    jm["rates"] = json!([]);
    h.put(Entity::JobsiteMaterial, JM_1, jm).await;
    let n = h
        .count(
            "SELECT count(*) FROM dim_jobsite_material_rate r JOIN dim_jobsite_material m \
                     ON m.id = r.jobsite_material_id WHERE m.mongo_id = $1",
            &[&JM_1],
        )
        .await;
    assert_eq!(n, 0);
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
async fn d7_unknown_crew_type_everywhere_and_shipment_delete_archives_non_costed() {
    let mut h = Harness::new().await;
    h.seed().await;
    h.put(
        Entity::Crew,
        CREW_BASE_1,
        json!({ "_id": oid(CREW_BASE_1), "name": "Base Crew 1" }),
    )
    .await;
    for (t, k) in [
        ("fact_employee_work", EMPLOYEE_WORK_1),
        ("fact_vehicle_work", VEHICLE_WORK_1),
        ("fact_production", PRODUCTION_1),
        ("fact_material_shipment", SHIPMENT_COSTED_1),
        ("fact_non_costed_material", SHIPMENT_NON_COSTED_1),
        ("fact_trucking", SHIPMENT_TRUCKING_1),
    ] {
        assert_eq!(h.num(t, "crew_type", k).await, "Unknown", "{t}");
    }
    h.del(Entity::MaterialShipment, SHIPMENT_NON_COSTED_1).await;
    assert_eq!(
        h.archived("fact_non_costed_material", SHIPMENT_NON_COSTED_1)
            .await,
        Some(true)
    );
}

#[tokio::test]
async fn d8_archived_reports_keep_rows_and_missed_lookups_cost_zero() {
    let mut h = Harness::new().await;
    h.seed().await;
    let mut r = report_1();
    r["archived"] = json!(true);
    r["approved"] = json!(false);
    h.put(Entity::DailyReport, REPORT_1, r).await;
    assert_eq!(
        h.num("dim_daily_report", "archived", REPORT_1).await,
        "true"
    );
    assert_eq!(
        h.archived("fact_employee_work", EMPLOYEE_WORK_1).await,
        Some(false)
    );
    assert_eq!(
        h.archived("fact_vehicle_work", VEHICLE_WORK_1).await,
        Some(false)
    );
    // An employee without rates: 0. A delivered-rate id that matches nothing: (0, estimated).
    h.put(
        Entity::EmployeeWork,
        EMPLOYEE_WORK_1,
        employee_work(
            EMPLOYEE_WORK_1,
            OFFICE_ADMIN,
            "2022-02-23T07:00:00Z",
            "2022-02-23T15:00:00Z",
        ),
    )
    .await;
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "0.00"
    );
    let mut s = shipment(
        SHIPMENT_DELIVERED_RATE_1,
        8.0,
        Some(JM_DELIVERED),
        json!({ "deliveredRateId": oid("629a49205f76f65244785aff") }),
    );
    s["noJobsiteMaterial"] = json!(false);
    h.put(Entity::MaterialShipment, SHIPMENT_DELIVERED_RATE_1, s)
        .await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_DELIVERED_RATE_1)
            .await,
        "0.00"
    );
    assert_eq!(
        h.num(
            "fact_material_shipment",
            "estimated",
            SHIPMENT_DELIVERED_RATE_1
        )
        .await,
        "true"
    );
}

#[tokio::test]
async fn a_jobsite_material_without_any_jobsite_leaves_the_dimension() {
    // JM_2 is claimed by jobsite 2 only and no shipment uses it.
    let mut h = Harness::new().await;
    h.seed().await;
    let q = "SELECT count(*) FROM dim_jobsite_material WHERE mongo_id = $1";
    assert_eq!(h.count(q, &[&JM_2]).await, 1);
    let mut j2 = jobsite_2();
    j2["materials"] = oids(&[JM_1, JM_SCENARIO]);
    h.put(Entity::Jobsite, JOBSITE_2, j2).await;
    assert_eq!(h.count(q, &[&JM_2]).await, 0, "no jobsite to hang it on");
    // Claimed again: back.
    h.put(Entity::Jobsite, JOBSITE_2, jobsite_2()).await;
    assert_eq!(h.count(q, &[&JM_2]).await, 1);
}
