//! What the app's reports read: generated columns, views and functions compute the legacy
//! numbers (the legacy report layer and its checklist).

use tokio_postgres::Client;

use crate::support::migrated_db;

/// One daily report (dated 2022-02-23) on its own jobsite, crew and employee; returns the
/// ids as text: (jobsite, report, crew, employee).
async fn seed_report(c: &Client, tag: &str, approved: bool) -> [String; 4] {
    let row = c
        .query_one(
            "WITH j AS (INSERT INTO dim_jobsite (mongo_id, name, jobcode)
                        VALUES ($1::text || 'j', 'Jobsite ' || $1::text, $1::text) RETURNING id),
                  cr AS (INSERT INTO dim_crew (mongo_id, name, type)
                        VALUES ($1::text || 'c', 'Crew ' || $1::text, 'Base') RETURNING id),
                  e AS (INSERT INTO dim_employee (mongo_id, name)
                        VALUES ($1::text || 'e', 'Employee ' || $1::text) RETURNING id),
                  dr AS (INSERT INTO dim_daily_report (mongo_id, jobsite_id, crew_id, report_date, approved)
                        SELECT $1::text || 'd', j.id, cr.id, DATE '2022-02-23', $2 FROM j, cr
                        RETURNING id, jobsite_id, crew_id)
             SELECT dr.jobsite_id::text, dr.id::text, dr.crew_id::text, e.id::text FROM dr, e",
            &[&tag, &approved],
        )
        .await
        .expect("seed daily report");
    [row.get(0), row.get(1), row.get(2), row.get(3)]
}

/// An employee-work fact; returns (hours, total_cost) as PostgreSQL prints them.
async fn employee_work(
    c: &Client,
    ids: &[String; 4],
    mongo_id: &str,
    start: &str,
    end: &str,
    rate: &str,
) -> (String, String) {
    let row = c
        .query_one(
            "INSERT INTO fact_employee_work (mongo_id, daily_report_id, jobsite_id, employee_id,
                 crew_id, crew_type, work_date, start_time, end_time, job_title, hourly_rate)
             VALUES ($1, $2::text::uuid, $3::text::uuid, $4::text::uuid, $5::text::uuid, 'Base',
                 DATE '2022-02-23', $6::text::timestamptz, $7::text::timestamptz, 'Foreman',
                 $8::text::numeric)
             RETURNING hours::text, total_cost::text",
            &[
                &mongo_id, &ids[1], &ids[0], &ids[3], &ids[2], &start, &end, &rate,
            ],
        )
        .await
        .expect("insert employee work");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn generated_columns_compute_the_legacy_values() {
    let db = migrated_db().await;
    let c = db.client().await;
    let ids = seed_report(&c, "gen", true).await;
    // 07:00 → 15:20 at 25: hours rounded to 8.33, cost from the unrounded hours
    assert_eq!(
        employee_work(
            &c,
            &ids,
            "ew1",
            "2022-02-23T07:00:00Z",
            "2022-02-23T15:20:00Z",
            "25"
        )
        .await,
        ("8.33".to_string(), "208.33".to_string())
    );
    // 22:00 → 06:00 recorded on one day: an overnight shift, +24 h
    assert_eq!(
        employee_work(
            &c,
            &ids,
            "ew2",
            "2022-02-23T22:00:00Z",
            "2022-02-23T06:00:00Z",
            "30"
        )
        .await,
        ("8.00".to_string(), "240.00".to_string())
    );
    // 22:00 day 1 → 06:00 day 3: a 32 h span is kept as it is
    assert_eq!(
        employee_work(
            &c,
            &ids,
            "ew3",
            "2022-02-23T22:00:00Z",
            "2022-02-25T06:00:00Z",
            "10"
        )
        .await,
        ("32.00".to_string(), "320.00".to_string())
    );
    // fact_production.hours uses the same overnight rule
    let prod: String = c
        .query_one(
            "INSERT INTO fact_production (mongo_id, daily_report_id, jobsite_id, crew_id, crew_type,
                 work_date, job_title, quantity, unit, start_time, end_time)
             VALUES ('prod1', $1::text::uuid, $2::text::uuid, $3::text::uuid, 'Base',
                 DATE '2022-02-23', 'Grading', 150, 'tonnes',
                 TIMESTAMPTZ '2022-02-23T22:00:00Z', TIMESTAMPTZ '2022-02-23T06:00:00Z')
             RETURNING hours::text",
            &[&ids[1], &ids[0], &ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prod, "8.00");
    // fact_vehicle_work.total_cost = hours × hourly_rate
    let vehicle_cost: String = c
        .query_one(
            "WITH v AS (INSERT INTO dim_vehicle (mongo_id, name, vehicle_code)
                        VALUES ('veh1', 'G-25', 'G-25') RETURNING id)
             INSERT INTO fact_vehicle_work (mongo_id, daily_report_id, jobsite_id, vehicle_id,
                 crew_id, crew_type, work_date, hours, hourly_rate)
             SELECT 'vw1', $1::text::uuid, $2::text::uuid, v.id, $3::text::uuid, 'Base',
                 DATE '2022-02-23', 2.5, 85.50 FROM v
             RETURNING total_cost::text",
            &[&ids[1], &ids[0], &ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(vehicle_cost, "213.75");
    // fact_material_shipment.total_cost = quantity × rate, rounded to cents
    let shipment_cost: String = c
        .query_one(
            "WITH m AS (INSERT INTO dim_material (mongo_id, name) VALUES ('mat1', 'Gravel') RETURNING id),
                  co AS (INSERT INTO dim_company (mongo_id, name) VALUES ('co1', 'Supplier') RETURNING id),
                  jm AS (INSERT INTO dim_jobsite_material (mongo_id, jobsite_id, material_id,
                             supplier_id, quantity, unit, cost_type)
                         SELECT 'jm1', $2::text::uuid, m.id, co.id, 100, 'tonnes', 'rate' FROM m, co
                         RETURNING id)
             INSERT INTO fact_material_shipment (mongo_id, daily_report_id, jobsite_id,
                 jobsite_material_id, crew_id, crew_type, work_date, quantity, unit, rate)
             SELECT 'ms1', $1::text::uuid, $2::text::uuid, jm.id, $3::text::uuid, 'Base',
                 DATE '2022-02-23', 12.5, 'tonnes', 10.33 FROM jm
             RETURNING total_cost::text",
            &[&ids[1], &ids[0], &ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipment_cost, "129.13");
}

#[tokio::test]
async fn jobsite_daily_summary_counts_approved_work_of_one_jobsite_only() {
    // Given two employee-work rows on one approved report (07:00–15:00Z at 25, 08:00–14:00Z
    // at 30), a row on another jobsite's approved report, and one on an unapproved report
    let db = migrated_db().await;
    let c = db.client().await;
    let a = seed_report(&c, "a", true).await;
    let b = seed_report(&c, "b", true).await;
    let u = seed_report(&c, "u", false).await;
    employee_work(
        &c,
        &a,
        "a1",
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
        "25",
    )
    .await;
    employee_work(
        &c,
        &a,
        "a2",
        "2022-02-23T08:00:00Z",
        "2022-02-23T14:00:00Z",
        "30",
    )
    .await;
    employee_work(
        &c,
        &b,
        "b1",
        "2022-02-23T07:00:00Z",
        "2022-02-23T17:00:00Z",
        "50",
    )
    .await;
    employee_work(
        &c,
        &u,
        "u1",
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
        "25",
    )
    .await;
    // When the report layer is read
    let summary = |jobsite: String| {
        let c = &c;
        async move {
            c.query(
                "SELECT jobsite_name::text, employee_hours::text, employee_cost::text,
                        total_cost::text, crew_types::text
                   FROM jobsite_daily_summary WHERE jobsite_id = $1::text::uuid",
                &[&jobsite],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (0..5)
                    .map(|i| r.get::<_, String>(i))
                    .collect::<Vec<String>>()
            })
            .collect::<Vec<_>>()
        }
    };
    // Then jobsite A has 14 hours and 380.00 of labour, untouched by jobsite B
    assert_eq!(
        summary(a[0].clone()).await,
        vec![vec!["Jobsite a", "14.00", "380.00", "380.00", "{Base}"]]
    );
    assert_eq!(
        summary(b[0].clone()).await,
        vec![vec!["Jobsite b", "10.00", "500.00", "500.00", "{Base}"]]
    );
    // And the unapproved report gives no day at all
    assert!(summary(u[0].clone()).await.is_empty());
    // And the financial summary and the period function agree
    let row = c
        .query_one(
            "SELECT employee_hours::text, employee_cost::text, net_income::text, days_worked
               FROM jobsite_period_summary($1::text::uuid, DATE '2022-02-01', DATE '2022-02-28')",
            &[&a[0]],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3)
        ),
        ("14.00".into(), "380.00".into(), "-380.00".into(), 1)
    );
    let days: i64 = c
        .query_one("SELECT count(*) FROM jobsite_daily_financial_summary", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(days, 2);
}

/// A vehicle (G-25) working 3 h at 85 on the report ($1 report, $2 jobsite, $3 crew).
const VEHICLE_WORK: &str = "
    WITH v AS (INSERT INTO dim_vehicle (mongo_id, name, vehicle_code)
               VALUES ('veh', 'G-25', 'G-25') RETURNING id)
    INSERT INTO fact_vehicle_work (mongo_id, daily_report_id, jobsite_id, vehicle_id, crew_id,
        crew_type, work_date, hours, hourly_rate)
    SELECT 'vw', $1::text::uuid, $2::text::uuid, v.id, $3::text::uuid, 'Base',
        DATE '2022-02-23', 3, 85
      FROM v";

/// Two costed shipments of one jobsite material: 5 at an estimated 10, and 4 at rate 0.
const SHIPMENTS: &str = "
    WITH m AS (INSERT INTO dim_material (mongo_id, name) VALUES ('m', 'Asphalt') RETURNING id),
         co AS (INSERT INTO dim_company (mongo_id, name) VALUES ('co', 'Supplier') RETURNING id),
         jm AS (INSERT INTO dim_jobsite_material (mongo_id, jobsite_id, material_id,
                    supplier_id, quantity, unit, cost_type)
                SELECT 'jm', $2::text::uuid, m.id, co.id, 100, 'tonnes', 'rate' FROM m, co
                RETURNING id)
    INSERT INTO fact_material_shipment (mongo_id, daily_report_id, jobsite_id,
        jobsite_material_id, crew_id, crew_type, work_date, quantity, unit, rate, estimated)
    SELECT s.mongo_id, $1::text::uuid, $2::text::uuid, jm.id, $3::text::uuid, 'Base',
           DATE '2022-02-23', s.quantity, 'tonnes', s.rate, s.estimated
      FROM jm,
           (VALUES ('ms1', 5, 10, TRUE), ('ms2', 4, 0, FALSE)) s(mongo_id, quantity, rate, estimated)";

/// Run a statement that takes (report, jobsite, crew) as $1..$3.
async fn on_report(c: &Client, ids: &[String; 4], sql: &str) {
    c.execute(sql, &[&ids[1], &ids[0], &ids[2]])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
}

/// The numeric columns of one query row, as f64.
async fn numbers(c: &Client, sql: &str, param: &String) -> Vec<f64> {
    let row = c
        .query_one(sql, &[param])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    (0..row.len()).map(|i| row.get::<_, f64>(i)).collect()
}

#[tokio::test]
async fn report_views_and_functions_follow_the_legacy_rules() {
    // Given one approved report with every kind of cost line, rate issues, invoices on its day
    // and the next, an archived row, and the same employee on an unapproved report
    let db = migrated_db().await;
    let c = db.client().await;
    let r = seed_report(&c, "r", true).await;
    employee_work(
        &c,
        &r,
        "ew0",
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
        "0",
    )
    .await;
    employee_work(
        &c,
        &r,
        "ewx",
        "2022-02-23T07:00:00Z",
        "2022-02-23T09:00:00Z",
        "40",
    )
    .await;
    c.execute(
        "UPDATE fact_employee_work SET archived_at = now() WHERE mongo_id = 'ewx'",
        &[],
    )
    .await
    .unwrap();
    on_report(&c, &r, VEHICLE_WORK).await;
    on_report(&c, &r, SHIPMENTS).await;
    on_report(
        &c,
        &r,
        "INSERT INTO fact_non_costed_material (mongo_id, daily_report_id, jobsite_id, crew_id,
            crew_type, work_date, material_name, supplier_name, quantity, unit)
        VALUES ('nc', $1::text::uuid, $2::text::uuid, $3::text::uuid, 'Base', DATE '2022-02-23',
            'Gravel', 'Local Supplier', 3, 'tonnes')",
    )
    .await;
    on_report(
        &c,
        &r,
        "INSERT INTO fact_trucking (mongo_id, daily_report_id, jobsite_id, crew_id, crew_type,
            work_date, trucking_type, quantity, hours, rate, rate_type, total_cost)
        VALUES ('ms1', $1::text::uuid, $2::text::uuid, $3::text::uuid, 'Base', DATE '2022-02-23',
            'Tandem', 2, 2, 120, 'Hour', 240)",
    )
    .await;
    c.execute(
        "INSERT INTO fact_invoice (mongo_id, jobsite_id, company_id, invoice_date, direction,
             invoice_type, invoice_number, amount)
         SELECT i.mongo_id, $1::text::uuid, co.id, i.day::date, i.direction, i.kind, i.mongo_id,
                i.amount
           FROM dim_company co,
                (VALUES ('i1', '2022-02-23', 'revenue', 'external', 1000),
                        ('i2', '2022-02-23', 'expense', 'internal', 200),
                        ('i3', '2022-02-23', 'revenue', 'accrual', 50),
                        ('i4', '2022-02-24', 'revenue', 'external', 9999))
                    i(mongo_id, day, direction, kind, amount)
          WHERE co.mongo_id = 'co'",
        &[&r[0]],
    )
    .await
    .expect("insert invoices");
    let unapproved: String = c
        .query_one(
            "INSERT INTO dim_daily_report (mongo_id, jobsite_id, crew_id, report_date, approved)
             VALUES ('r2d', $1::text::uuid, $2::text::uuid, DATE '2022-02-23', FALSE) RETURNING id::text",
            &[&r[0], &r[2]],
        )
        .await
        .unwrap()
        .get(0);
    let on_unapproved = [r[0].clone(), unapproved, r[2].clone(), r[3].clone()];
    employee_work(
        &c,
        &on_unapproved,
        "ewu",
        "2022-02-23T08:00:00Z",
        "2022-02-23T12:00:00Z",
        "20",
    )
    .await;

    // Then the day's financial summary adds every approved, live line and that day's invoices
    let day = numbers(
        &c,
        "SELECT employee_hours::float8, employee_cost::float8, vehicle_hours::float8,
                vehicle_cost::float8, material_quantity::float8, material_cost::float8,
                non_costed_material_quantity::float8, trucking_quantity::float8,
                trucking_hours::float8, trucking_cost::float8, total_cost::float8,
                external_revenue::float8, internal_revenue::float8, accrual_revenue::float8,
                external_expense::float8, internal_expense::float8, accrual_expense::float8,
                net_income::float8, employees_with_zero_rate::float8,
                vehicles_with_zero_rate::float8, materials_with_zero_rate::float8,
                materials_with_estimated_rate::float8, non_costed_material_shipments::float8
           FROM jobsite_daily_financial_summary WHERE jobsite_id = $1::text::uuid",
        &r[0],
    )
    .await;
    assert_eq!(
        day,
        vec![
            8.0, 0.0, 3.0, 255.0, 9.0, 50.0, 3.0, 2.0, 2.0, 240.0, 545.0, 1000.0, 0.0, 50.0, 0.0,
            200.0, 0.0, 255.0, 1.0, 0.0, 1.0, 1.0, 1.0
        ]
    );
    // And an invoice on a day without approved cost lines does not appear
    let days: i64 = c
        .query_one("SELECT count(*) FROM jobsite_daily_financial_summary", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(days, 1);
    // And the issues name the non-costed material with its supplier
    let issues: Vec<(String, Option<String>, i64)> = c
        .query(
            "SELECT issue_type, entity_name::text, occurrence_count FROM jobsite_report_issues
              ORDER BY issue_type",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        issues,
        vec![
            ("EMPLOYEE_RATE_ZERO".into(), None, 1),
            ("MATERIAL_ESTIMATED_RATE".into(), None, 1),
            ("MATERIAL_RATE_ZERO".into(), None, 1),
            (
                "NON_COSTED_MATERIALS".into(),
                Some("Gravel (Local Supplier)".into()),
                1
            ),
        ]
    );
    // And the crew-day views see the one live, approved shift
    let crew = numbers(
        &c,
        "SELECT avg_crew_hours::float8, total_man_hours::float8, total_employees::float8,
                crew_count::float8
           FROM crew_hours_by_day WHERE jobsite_id = $1::text::uuid",
        &r[0],
    )
    .await;
    assert_eq!(crew, vec![8.0, 8.0, 1.0, 1.0]);
    // And employee_productivity ignores approval (8 h approved + 4 h unapproved) but not archiving
    let productivity = numbers(
        &c,
        "SELECT total_hours::float8, total_cost::float8, days_worked::float8,
                avg_hours_per_day::float8
           FROM employee_productivity($1::text::uuid, DATE '2022-02-01', DATE '2022-02-28')",
        &r[3],
    )
    .await;
    assert_eq!(productivity, vec![12.0, 80.0, 1.0, 12.0]);
    let vehicle: String = c
        .query_one(
            "SELECT id::text FROM dim_vehicle WHERE mongo_id = 'veh'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let utilization = numbers(
        &c,
        "SELECT total_hours::float8, total_cost::float8, days_used::float8,
                avg_hours_per_day::float8
           FROM vehicle_utilization($1::text::uuid, DATE '2022-02-01', DATE '2022-02-28')",
        &vehicle,
    )
    .await;
    assert_eq!(utilization, vec![3.0, 255.0, 1.0, 3.0]);
    // And the period and comparison functions sum the financial summary
    let period = numbers(
        &c,
        "SELECT total_cost::float8, net_income::float8, days_worked::float8
           FROM jobsite_period_summary($1::text::uuid, DATE '2022-02-01', DATE '2022-02-28')",
        &r[0],
    )
    .await;
    assert_eq!(period, vec![545.0, 255.0, 1.0]);
    let comparison = numbers(
        &c,
        "SELECT total_cost::float8, total_revenue::float8, net_income::float8,
                cost_per_day::float8, revenue_per_day::float8
           FROM jobsite_comparison(ARRAY[$1::text::uuid], DATE '2022-02-01', DATE '2022-02-28')",
        &r[0],
    )
    .await;
    assert_eq!(comparison, vec![545.0, 1000.0, 255.0, 545.0, 1000.0]);
}
