//! The legacy test seed (the legacy sync's behaviour checklist) as relaxed extended JSON documents, reusable
//! as projector input ([`Seed::source_docs`]) or as v1 change events to publish
//! ([`Seed::events`]). Dates are UTC (the legacy seed used the test process's local time).

#![allow(dead_code)]

use bowmark_cdc::event::{ChangeEvent, ClusterTime, Entity, Namespace, Op, Version};
use bowmark_cdc::project::SourceDoc;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

// Dimensions.
pub const JOBSITE_1: &str = "6216645500000000000000a1";
pub const JOBSITE_2: &str = "6216645500000000000000a2";
pub const JOBSITE_3: &str = "6216645500000000000000a3";
pub const TANDEM_RATE: &str = "6216645500000000000000b1";
pub const CREW_BASE_1: &str = "6216645500000000000000c1";
pub const CREW_BASE_2: &str = "6216645500000000000000c2";
pub const BASE_FOREMAN_1: &str = "6216645500000000000000d1";
pub const OFFICE_ADMIN: &str = "6216645500000000000000d2";
pub const SKIDSTEER_1: &str = "6216645500000000000000e1";
pub const MATERIAL_GRAVEL: &str = "6216645500000000000000f1";
pub const MATERIAL_ASPHALT: &str = "6216645500000000000000f2";
pub const SUPPLIER: &str = "621664550000000000000101";
pub const CUSTOMER: &str = "621664550000000000000102";
pub const BOWMARK: &str = "621664550000000000000103";
// Jobsite materials (jobsite 2 claims material_1, material_2 and the scenario material; the
// delivered-rate material is claimed by no jobsite).
pub const JM_1: &str = "621664550000000000000201";
pub const JM_2: &str = "621664550000000000000202";
pub const JM_INVOICE: &str = "621664550000000000000203";
pub const JM_DELIVERED: &str = "621664550000000000000204";
pub const JM_SCENARIO: &str = "621664550000000000000205";
pub const DELIVERED_TANDEM: &str = "629a49205f76f65244785a13";
pub const SCENARIO_PICKUP: &str = "629a49205f76f65244785a15";
pub const SCENARIO_DELIVERED: &str = "629a49205f76f65244785a16";
// Reports and children.
pub const REPORT_1: &str = "621664558c026b7ac8fb32f0";
pub const REPORT_2: &str = "621664558c026b7ac8fb32f1";
pub const EMPLOYEE_WORK_1: &str = "621664550000000000000301";
pub const VEHICLE_WORK_1: &str = "621664550000000000000302";
pub const PRODUCTION_1: &str = "621664550000000000000303";
pub const SHIPMENT_COSTED_1: &str = "621664550000000000000401";
pub const SHIPMENT_NON_COSTED_1: &str = "621664550000000000000402";
pub const SHIPMENT_TRUCKING_1: &str = "621664550000000000000403";
pub const SHIPMENT_INVOICE_COST_1: &str = "621664550000000000000404";
pub const SHIPMENT_DELIVERED_RATE_1: &str = "621664550000000000000405";
pub const SHIPMENT_SCENARIO_PICKUP_1: &str = "621664550000000000000406";
pub const SHIPMENT_SCENARIO_DELIVERED_1: &str = "621664550000000000000407";
// Invoices.
pub const INVOICE_MATERIAL_1: &str = "621664550000000000000501";
pub const INVOICE_REVENUE_1: &str = "621664550000000000000502";
pub const INVOICE_EXPENSE_1: &str = "621664550000000000000503";

pub fn oid(k: &str) -> Value {
    json!({ "$oid": k })
}

pub fn oids(ks: &[&str]) -> Value {
    Value::Array(ks.iter().map(|k| oid(k)).collect())
}

pub fn date(iso: &str) -> Value {
    json!({ "$date": iso })
}

/// The instant the seed was written: the Tandem trucking rate is dated then, after every
/// work date, which exercises the oldest-rate fallback.
pub const SEEDING_TIME: &str = "2026-11-27T05:00:00Z";

/// Collection name of each entity, as in `pipeline/paving.toml`.
pub fn collection(e: Entity) -> &'static str {
    match e {
        Entity::DailyReport => "dailyreports",
        Entity::EmployeeWork => "employeeworks",
        Entity::VehicleWork => "vehicleworks",
        Entity::MaterialShipment => "materialshipments",
        Entity::Production => "productions",
        Entity::Invoice => "invoices",
        Entity::Employee => "employees",
        Entity::Vehicle => "vehicles",
        Entity::Jobsite => "jobsites",
        Entity::JobsiteMaterial => "jobsiteMaterials",
        Entity::Crew => "crews",
        Entity::Material => "materials",
        Entity::Company => "companies",
        Entity::System => "systems",
    }
}

pub fn jobsite(key: &str, name: &str, jobcode: Option<&str>, materials: &[&str]) -> Value {
    let mut j = json!({
        "_id": oid(key), "name": name, "active": true,
        "materials": oids(materials), "revenueInvoices": [], "expenseInvoices": [],
        "truckingRates": []
    });
    if let Some(c) = jobcode {
        j["jobcode"] = json!(c);
    }
    j
}

pub fn jobsite_2() -> Value {
    let mut j = jobsite(
        JOBSITE_2,
        "Jobsite 2",
        Some("2022-2"),
        &[JM_1, JM_2, JM_SCENARIO],
    );
    j["truckingRates"] = json!([{
        "_id": oid(TANDEM_RATE), "title": "Tandem",
        "rates": [{ "_id": oid("6216645500000000000000b2"), "date": date(SEEDING_TIME),
                    "rate": 120, "type": "Hour" }]
    }]);
    j
}

pub fn crew(key: &str, name: &str, kind: &str) -> Value {
    json!({ "_id": oid(key), "name": name, "type": kind })
}

pub fn base_foreman_1() -> Value {
    json!({
        "_id": oid(BASE_FOREMAN_1), "name": "Base Foreman 1", "jobTitle": "Foreman",
        "rates": [
            { "_id": oid("6216645500000000000000d3"), "date": date("2022-01-01T00:00:00Z"), "rate": 25 },
            { "_id": oid("6216645500000000000000d4"), "date": date("2021-01-01T00:00:00Z"), "rate": 20 }
        ]
    })
}

pub fn skidsteer_1() -> Value {
    json!({
        "_id": oid(SKIDSTEER_1), "name": "G-25", "vehicleCode": "G-25",
        "vehicleType": "Skidsteer", "rental": false, "sourceCompany": "Bow Mark",
        "rates": [{ "_id": oid("6216645500000000000000e2"), "date": date("2022-01-01T00:00:00Z"), "rate": 85 }]
    })
}

fn rate(id: &str, day: &str, r: f64) -> Value {
    json!({ "_id": oid(id), "date": date(&format!("{day}T00:00:00Z")), "rate": r, "estimated": false })
}

pub fn jobsite_material(key: &str, material: &str, cost_type: &str) -> Value {
    json!({
        "_id": oid(key), "material": oid(material), "supplier": oid(SUPPLIER),
        "quantity": 1000, "unit": "tonnes", "costType": cost_type, "delivered": false,
        "rates": [], "deliveredRates": [], "invoices": []
    })
}

pub fn jm_1() -> Value {
    let mut j = jobsite_material(JM_1, MATERIAL_GRAVEL, "rate");
    j["rates"] = json!([rate("621664550000000000000211", "2022-01-01", 10.0)]);
    j
}

pub fn jm_invoice() -> Value {
    let mut j = jobsite_material(JM_INVOICE, MATERIAL_ASPHALT, "invoice");
    j["invoices"] = oids(&[INVOICE_MATERIAL_1]);
    j
}

pub fn jm_delivered() -> Value {
    let mut j = jobsite_material(JM_DELIVERED, MATERIAL_GRAVEL, "deliveredRate");
    j["deliveredRates"] = json!([{
        "_id": oid(DELIVERED_TANDEM), "title": "Tandem",
        "rates": [rate("621664550000000000000212", "2022-01-01", 25.0)]
    }]);
    j
}

pub fn jm_scenario() -> Value {
    let mut j = jobsite_material(JM_SCENARIO, MATERIAL_ASPHALT, "rate");
    j["costModel"] = json!("rate");
    j["scenarios"] = json!([
        { "_id": oid(SCENARIO_PICKUP), "label": "Pickup", "delivered": false,
          "rates": [rate("621664550000000000000213", "2022-01-01", 30.0)] },
        { "_id": oid(SCENARIO_DELIVERED), "label": "Tandem Delivered", "delivered": true,
          "rates": [rate("621664550000000000000214", "2022-01-01", 45.0)] }
    ]);
    j
}

pub fn report(key: &str, day_iso: &str, jobsite: &str, crew: &str) -> Value {
    json!({
        "_id": oid(key), "date": date(day_iso), "jobsite": oid(jobsite), "crew": oid(crew),
        "approved": true, "payrollComplete": false, "archived": false,
        "employeeWork": [], "vehicleWork": [], "production": [], "materialShipment": []
    })
}

pub fn report_1() -> Value {
    let mut r = report(REPORT_1, "2022-02-23T07:00:00Z", JOBSITE_1, CREW_BASE_1);
    r["employeeWork"] = oids(&[EMPLOYEE_WORK_1]);
    r["vehicleWork"] = oids(&[VEHICLE_WORK_1]);
    r["production"] = oids(&[PRODUCTION_1]);
    r["materialShipment"] = oids(&[SHIPMENT_COSTED_1]);
    r
}

pub fn report_2() -> Value {
    let mut r = report(REPORT_2, "2022-02-25T07:00:00Z", JOBSITE_2, CREW_BASE_1);
    r["materialShipment"] = oids(&[
        SHIPMENT_NON_COSTED_1,
        SHIPMENT_TRUCKING_1,
        SHIPMENT_INVOICE_COST_1,
        SHIPMENT_DELIVERED_RATE_1,
        SHIPMENT_SCENARIO_PICKUP_1,
        SHIPMENT_SCENARIO_DELIVERED_1,
    ]);
    r
}

pub fn employee_work(key: &str, employee: &str, start: &str, end: &str) -> Value {
    json!({ "_id": oid(key), "startTime": date(start), "endTime": date(end),
            "jobTitle": "Grading work", "employee": oid(employee) })
}

pub fn vehicle_work(key: &str, vehicle: &str, hours: f64) -> Value {
    json!({ "_id": oid(key), "hours": hours, "jobTitle": "Skid work", "vehicle": oid(vehicle) })
}

pub fn production_1() -> Value {
    json!({ "_id": oid(PRODUCTION_1), "jobTitle": "Grading", "quantity": 150, "unit": "tonnes",
            "startTime": date("2022-02-23T07:00:00Z"), "endTime": date("2022-02-23T15:00:00Z"),
            "description": "Grading production" })
}

pub fn shipment(key: &str, quantity: f64, jm: Option<&str>, vehicle: Value) -> Value {
    let mut s = json!({ "_id": oid(key), "quantity": quantity, "noJobsiteMaterial": false,
                        "vehicleObject": vehicle });
    if let Some(jm) = jm {
        s["jobsiteMaterial"] = oid(jm);
    }
    s
}

pub fn shipment_non_costed_1() -> Value {
    json!({ "_id": oid(SHIPMENT_NON_COSTED_1), "quantity": 3, "noJobsiteMaterial": true,
            "shipmentType": "Gravel", "supplier": "Local Supplier", "unit": "tonnes",
            "vehicleObject": null })
}

pub fn shipment_trucking_1() -> Value {
    let mut s = shipment(
        SHIPMENT_TRUCKING_1,
        2.0,
        Some(JM_1),
        json!({ "source": "Company", "vehicleType": "Tandem", "vehicleCode": "T0",
                "truckingRateId": oid(TANDEM_RATE) }),
    );
    s["startTime"] = date("2022-02-25T08:00:00Z");
    s["endTime"] = date("2022-02-25T10:00:00Z");
    s
}

pub fn shipment_scenario_pickup_1() -> Value {
    let mut s = shipment(
        SHIPMENT_SCENARIO_PICKUP_1,
        6.0,
        Some(JM_SCENARIO),
        json!({ "source": "Company", "vehicleType": "Tandem", "vehicleCode": "T1",
                "truckingRateId": oid(TANDEM_RATE), "rateScenarioId": oid(SCENARIO_PICKUP) }),
    );
    s["startTime"] = date("2022-02-25T08:00:00Z");
    s["endTime"] = date("2022-02-25T10:00:00Z");
    s
}

pub fn invoice(
    key: &str,
    number: &str,
    day: &str,
    cost: f64,
    internal: bool,
    company: &str,
) -> Value {
    json!({ "_id": oid(key), "company": oid(company), "invoiceNumber": number, "cost": cost,
            "description": null, "internal": internal, "accrual": false,
            "date": date(&format!("{day}T00:00:00Z")) })
}

/// The seed: (entity, key, document) in dependency order (as a fresh database sees it).
pub struct Seed {
    pub docs: Vec<(Entity, String, Value)>,
}

impl Seed {
    /// The whole legacy checklist seed, with the two sync invoices pushed onto jobsite 1's arrays.
    pub fn legacy() -> Seed {
        let mut jobsite_1 = jobsite(JOBSITE_1, "Jobsite 1", Some("2022-1"), &[]);
        jobsite_1["revenueInvoices"] = oids(&[INVOICE_REVENUE_1]);
        jobsite_1["expenseInvoices"] = oids(&[INVOICE_EXPENSE_1]);
        let d = |e: Entity, k: &str, v: Value| (e, k.to_string(), v);
        let docs = vec![
            d(Entity::Jobsite, JOBSITE_1, jobsite_1),
            d(Entity::Jobsite, JOBSITE_2, jobsite_2()),
            d(
                Entity::Jobsite,
                JOBSITE_3,
                jobsite(JOBSITE_3, "Jobsite 3", None, &[]),
            ),
            d(
                Entity::Crew,
                CREW_BASE_1,
                crew(CREW_BASE_1, "Base Crew 1", "Base"),
            ),
            d(
                Entity::Crew,
                CREW_BASE_2,
                crew(CREW_BASE_2, "Base Crew 2", "Base"),
            ),
            d(Entity::Employee, BASE_FOREMAN_1, base_foreman_1()),
            d(
                Entity::Employee,
                OFFICE_ADMIN,
                json!({ "_id": oid(OFFICE_ADMIN), "name": "Office Admin", "jobTitle": "Admin", "rates": [] }),
            ),
            d(Entity::Vehicle, SKIDSTEER_1, skidsteer_1()),
            d(
                Entity::Material,
                MATERIAL_GRAVEL,
                json!({ "_id": oid(MATERIAL_GRAVEL), "name": "Gravel Base" }),
            ),
            d(
                Entity::Material,
                MATERIAL_ASPHALT,
                json!({ "_id": oid(MATERIAL_ASPHALT), "name": "Asphalt" }),
            ),
            d(
                Entity::Company,
                SUPPLIER,
                json!({ "_id": oid(SUPPLIER), "name": "Supplier Co" }),
            ),
            d(
                Entity::Company,
                CUSTOMER,
                json!({ "_id": oid(CUSTOMER), "name": "City of Calgary" }),
            ),
            d(
                Entity::Company,
                BOWMARK,
                json!({ "_id": oid(BOWMARK), "name": "Bow Mark Concrete" }),
            ),
            d(Entity::JobsiteMaterial, JM_1, jm_1()),
            d(
                Entity::JobsiteMaterial,
                JM_2,
                jobsite_material(JM_2, MATERIAL_GRAVEL, "rate"),
            ),
            d(Entity::JobsiteMaterial, JM_INVOICE, jm_invoice()),
            d(Entity::JobsiteMaterial, JM_DELIVERED, jm_delivered()),
            d(Entity::JobsiteMaterial, JM_SCENARIO, jm_scenario()),
            d(
                Entity::Invoice,
                INVOICE_MATERIAL_1,
                invoice(
                    INVOICE_MATERIAL_1,
                    "INV-SYNC-001",
                    "2022-02-01",
                    500.0,
                    false,
                    SUPPLIER,
                ),
            ),
            d(
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
            ),
            d(
                Entity::Invoice,
                INVOICE_EXPENSE_1,
                invoice(
                    INVOICE_EXPENSE_1,
                    "INV-EXP-001",
                    "2022-03-01",
                    8000.0,
                    true,
                    BOWMARK,
                ),
            ),
            d(Entity::DailyReport, REPORT_1, report_1()),
            d(Entity::DailyReport, REPORT_2, report_2()),
            d(
                Entity::EmployeeWork,
                EMPLOYEE_WORK_1,
                employee_work(
                    EMPLOYEE_WORK_1,
                    BASE_FOREMAN_1,
                    "2022-02-23T07:00:00Z",
                    "2022-02-23T15:00:00Z",
                ),
            ),
            d(
                Entity::VehicleWork,
                VEHICLE_WORK_1,
                vehicle_work(VEHICLE_WORK_1, SKIDSTEER_1, 3.0),
            ),
            d(Entity::Production, PRODUCTION_1, production_1()),
            d(
                Entity::MaterialShipment,
                SHIPMENT_COSTED_1,
                shipment(SHIPMENT_COSTED_1, 5.0, Some(JM_1), Value::Null),
            ),
            d(
                Entity::MaterialShipment,
                SHIPMENT_NON_COSTED_1,
                shipment_non_costed_1(),
            ),
            d(
                Entity::MaterialShipment,
                SHIPMENT_TRUCKING_1,
                shipment_trucking_1(),
            ),
            d(
                Entity::MaterialShipment,
                SHIPMENT_INVOICE_COST_1,
                shipment(SHIPMENT_INVOICE_COST_1, 10.0, Some(JM_INVOICE), Value::Null),
            ),
            d(
                Entity::MaterialShipment,
                SHIPMENT_DELIVERED_RATE_1,
                shipment(
                    SHIPMENT_DELIVERED_RATE_1,
                    8.0,
                    Some(JM_DELIVERED),
                    json!({ "source": "Company", "vehicleType": "Tandem", "vehicleCode": "T3",
                               "deliveredRateId": oid(DELIVERED_TANDEM) }),
                ),
            ),
            d(
                Entity::MaterialShipment,
                SHIPMENT_SCENARIO_PICKUP_1,
                shipment_scenario_pickup_1(),
            ),
            d(
                Entity::MaterialShipment,
                SHIPMENT_SCENARIO_DELIVERED_1,
                shipment(
                    SHIPMENT_SCENARIO_DELIVERED_1,
                    4.0,
                    Some(JM_SCENARIO),
                    json!({ "source": "Company", "vehicleType": "Tandem", "vehicleCode": "T2",
                               "rateScenarioId": oid(SCENARIO_DELIVERED) }),
                ),
            ),
        ];
        Seed { docs }
    }

    /// As inserts with versions (t0 + n, 0, 0) and wall times one second apart.
    pub fn source_docs(&self, t0: u32) -> Vec<SourceDoc> {
        self.docs
            .iter()
            .enumerate()
            .map(|(n, (e, k, v))| upsert(*e, k, v.clone(), t0 + n as u32))
            .collect()
    }

    /// As v1 change events (inserts) of `pipeline`, cluster times t0 + n.
    pub fn events(&self, pipeline: &str, t0: u32) -> Vec<ChangeEvent> {
        self.docs
            .iter()
            .enumerate()
            .map(|(n, (e, k, v))| {
                event(pipeline, *e, k, Op::Insert, Some(v.clone()), t0 + n as u32)
            })
            .collect()
    }
}

pub fn wall(t: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + i64::from(t), 0)
        .single()
        .unwrap_or_default()
}

pub fn version(t: u32) -> Version {
    Version {
        cluster_time: ClusterTime { t, i: 0 },
        ordinal: 0,
    }
}

/// An insert/update of `entity` at cluster time `t`.
pub fn upsert(entity: Entity, key: &str, doc: Value, t: u32) -> SourceDoc {
    SourceDoc {
        entity,
        key: key.into(),
        version: version(t),
        wall_time: wall(t),
        doc: Some(bowmark_cdc::project::doc_json(&doc)),
        deleted: false,
    }
}

/// A delete of `entity` at cluster time `t`.
pub fn delete(entity: Entity, key: &str, t: u32) -> SourceDoc {
    SourceDoc {
        entity,
        key: key.into(),
        version: version(t),
        wall_time: wall(t),
        doc: None,
        deleted: true,
    }
}

/// A v1 change event as capture would publish it.
pub fn event(
    pipeline: &str,
    entity: Entity,
    key: &str,
    op: Op,
    doc: Option<Value>,
    t: u32,
) -> ChangeEvent {
    let ct = ClusterTime { t, i: 0 };
    ChangeEvent {
        v: 1,
        id: ChangeEvent::make_id(pipeline, ct, 0),
        pipeline: pipeline.into(),
        entity,
        op,
        action: op.action(),
        ns: Namespace {
            db: pipeline.into(),
            coll: collection(entity).into(),
        },
        key: key.into(),
        cluster_time: ct,
        ordinal: 0,
        wall_time: wall(t),
        doc,
        changed: vec![],
        removed: vec![],
        txn: None,
        resume_token: json!({ "_data": format!("{t:08X}") }),
        mongo_id: key.into(),
        timestamp: wall(t),
    }
}
