//! Dimension changes reach exactly the facts they affect (what the legacy sync never did).

use bowmark_cdc::event::Entity;
use serde_json::json;

use super::Harness;
use super::seed::*;

const ADMIN_WORK: &str = "6216645500000000000006a1";

#[tokio::test]
async fn an_employee_rate_change_recosts_exactly_that_employees_facts() {
    let mut h = Harness::new().await;
    h.seed().await;
    h.put(
        Entity::EmployeeWork,
        ADMIN_WORK,
        employee_work(
            ADMIN_WORK,
            OFFICE_ADMIN,
            "2022-02-23T07:00:00Z",
            "2022-02-23T15:00:00Z",
        ),
    )
    .await;
    let mut r = report_1();
    r["employeeWork"] = oids(&[EMPLOYEE_WORK_1, ADMIN_WORK]);
    h.put(Entity::DailyReport, REPORT_1, r).await;
    let admin_synced = h.num("fact_employee_work", "synced_at", ADMIN_WORK).await;
    let mut e = base_foreman_1();
    e["rates"][0]["rate"] = json!(27.5);
    let stats = h.put(Entity::Employee, BASE_FOREMAN_1, e).await;
    assert_eq!(stats.rows_written.get("fact_employee_work"), Some(&1));
    assert_eq!(
        h.num("fact_employee_work", "hourly_rate", EMPLOYEE_WORK_1)
            .await,
        "27.50"
    );
    assert_eq!(
        h.num("fact_employee_work", "total_cost", EMPLOYEE_WORK_1)
            .await,
        "220.00"
    );
    assert_eq!(
        h.num("fact_employee_work", "synced_at", ADMIN_WORK).await,
        admin_synced
    );
    // A vehicle rate change likewise.
    let mut v = skidsteer_1();
    v["rates"][0]["rate"] = json!(90);
    h.put(Entity::Vehicle, SKIDSTEER_1, v).await;
    assert_eq!(
        h.num("fact_vehicle_work", "total_cost", VEHICLE_WORK_1)
            .await,
        "270.00"
    );
}

#[tokio::test]
async fn a_crew_type_change_rewrites_crew_type_on_every_fact() {
    let mut h = Harness::new().await;
    h.seed().await;
    h.put(
        Entity::Crew,
        CREW_BASE_1,
        crew(CREW_BASE_1, "Base Crew 1", "Paving"),
    )
    .await;
    for (t, k) in [
        ("fact_employee_work", EMPLOYEE_WORK_1),
        ("fact_vehicle_work", VEHICLE_WORK_1),
        ("fact_production", PRODUCTION_1),
        ("fact_material_shipment", SHIPMENT_INVOICE_COST_1),
        ("fact_non_costed_material", SHIPMENT_NON_COSTED_1),
        ("fact_trucking", SHIPMENT_TRUCKING_1),
    ] {
        assert_eq!(h.num(t, "crew_type", k).await, "Paving", "{t}");
    }
}

#[tokio::test]
async fn jobsite_trucking_and_material_rate_changes_recost_shipments() {
    let mut h = Harness::new().await;
    h.seed().await;
    let mut j2 = jobsite_2();
    j2["truckingRates"][0]["rates"] = json!([
        { "_id": oid("6216645500000000000006b1"), "date": date("2022-01-01T00:00:00Z"), "rate": 100, "type": "Hour" },
        { "_id": oid("6216645500000000000006b2"), "date": date(SEEDING_TIME), "rate": 120, "type": "Hour" }
    ]);
    h.put(Entity::Jobsite, JOBSITE_2, j2).await;
    assert_eq!(
        h.num("fact_trucking", "rate", SHIPMENT_TRUCKING_1).await,
        "100.00"
    );
    assert_eq!(
        h.num("fact_trucking", "total_cost", SHIPMENT_TRUCKING_1)
            .await,
        "200.00"
    );
    // A jobsite-material rate change.
    let mut jm = jm_1();
    jm["rates"][0]["rate"] = json!(12);
    h.put(Entity::JobsiteMaterial, JM_1, jm).await;
    assert_eq!(
        h.num("fact_material_shipment", "total_cost", SHIPMENT_COSTED_1)
            .await,
        "60.00"
    );
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_TRUCKING_1)
            .await,
        "12.00"
    );
    // A cost-type change to invoice with no invoices: rate 0, not estimated.
    let mut jm = jm_1();
    jm["costType"] = json!("invoice");
    h.put(Entity::JobsiteMaterial, JM_1, jm).await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_COSTED_1)
            .await,
        "0.00"
    );
    assert_eq!(
        h.num("fact_material_shipment", "estimated", SHIPMENT_COSTED_1)
            .await,
        "false"
    );
}

#[tokio::test]
async fn invoice_month_rates_follow_new_invoices_and_new_shipments() {
    let mut h = Harness::new().await;
    h.seed().await;
    // A second February invoice of 300: (500 + 300) / 10 = 80.
    let second = "6216645500000000000006c1";
    h.put(
        Entity::Invoice,
        second,
        invoice(second, "INV-SYNC-002", "2022-02-15", 300.0, false, SUPPLIER),
    )
    .await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "50.00",
        "not listed by the material yet"
    );
    let mut jm = jm_invoice();
    jm["invoices"] = oids(&[INVOICE_MATERIAL_1, second]);
    h.put(Entity::JobsiteMaterial, JM_INVOICE, jm).await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "80.00"
    );
    // A later invoice amount change re-costs too.
    h.put(
        Entity::Invoice,
        second,
        invoice(
            second,
            "INV-SYNC-002",
            "2022-02-15",
            1500.0,
            false,
            SUPPLIER,
        ),
    )
    .await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "200.00"
    );
    // A new February shipment of 10 on report 1 halves the rate of both.
    let extra = "6216645500000000000006c2";
    h.put(
        Entity::MaterialShipment,
        extra,
        shipment(extra, 10.0, Some(JM_INVOICE), serde_json::Value::Null),
    )
    .await;
    let mut r = report_1();
    r["materialShipment"] = oids(&[SHIPMENT_COSTED_1, extra]);
    h.put(Entity::DailyReport, REPORT_1, r).await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", extra).await,
        "100.00"
    );
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "100.00"
    );
    // Deleting the extra shipment restores the earlier rate.
    h.del(Entity::MaterialShipment, extra).await;
    assert_eq!(
        h.num("fact_material_shipment", "rate", SHIPMENT_INVOICE_COST_1)
            .await,
        "200.00"
    );
}
