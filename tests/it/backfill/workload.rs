//! A generated Bow-Mark dataset with realistic links and proportions: dimensions (companies,
//! materials, crews, employees and vehicles with rates, jobsites with trucking rates and
//! materials, jobsite materials with rates), invoices linked from jobsites, and daily reports
//! holding their children (employee and vehicle work, shipments, production).
//!
//! Deterministic for a seed. Used by the backfill tests (inserted through the driver), by the
//! stream-vs-backfill equivalence test, and by `examples/gen_dump.rs` (written as a mongodump
//! folder for the benchmark), which includes this file with `#[path]`: keep it free of
//! test-support imports.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use bson::oid::ObjectId;
use bson::{Bson, DateTime, Document, doc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sizes of a generated dataset.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub reports: usize,
    pub companies: usize,
    pub materials: usize,
    pub crews: usize,
    pub employees: usize,
    pub vehicles: usize,
    pub jobsites: usize,
    /// Jobsite materials per jobsite.
    pub materials_per_jobsite: usize,
    /// Invoices per jobsite (half revenue, half expense).
    pub invoices_per_jobsite: usize,
}

impl Shape {
    /// A small linked dataset for tests: about 40 documents per 4 reports.
    pub fn small(reports: usize) -> Shape {
        Shape {
            reports,
            companies: 6,
            materials: 4,
            crews: 3,
            employees: 8,
            vehicles: 5,
            jobsites: 4,
            materials_per_jobsite: 2,
            invoices_per_jobsite: 2,
        }
    }

    /// Production-like proportions: about 10 documents per daily report.
    pub fn realistic(reports: usize) -> Shape {
        let k = (reports / 100).max(1);
        Shape {
            reports,
            companies: 30 + 3 * k,
            materials: 40,
            crews: 20,
            employees: 60 + 2 * k,
            vehicles: 50 + 2 * k,
            jobsites: 10 + 2 * k,
            materials_per_jobsite: 3,
            invoices_per_jobsite: 6,
        }
    }
}

/// The generated documents by collection (names as in `pipeline/paving.toml`).
pub struct Workload {
    pub collections: BTreeMap<&'static str, Vec<Document>>,
}

/// ObjectIds in increasing order from a fixed epoch, so `_id` order is insertion order.
struct Ids {
    n: u64,
}

impl Ids {
    fn next(&mut self) -> ObjectId {
        self.n += 1;
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&0x6400_0000u32.to_be_bytes());
        b[4..].copy_from_slice(&self.n.to_be_bytes());
        ObjectId::from_bytes(b)
    }
}

const CREW_TYPES: [&str; 6] = ["Base", "Paving", "Tech", "Shop", "Patch", "Pour"];
const JOB_TITLES: [&str; 4] = ["Foreman", "Operator", "Labourer", "Driver"];
const UNITS: [&str; 3] = ["tonnes", "m3", "loads"];

/// 2022-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_640_995_200_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

fn at(ms: i64) -> DateTime {
    DateTime::from_millis(ms)
}

fn rates(ids: &mut Ids, rng: &mut StdRng, base: f64) -> Vec<Bson> {
    (0..2)
        .map(|y| {
            Bson::Document(doc! {
                "_id": ids.next(),
                "date": at(BASE_MS - DAY_MS * 365 * y),
                "rate": (base + rng.random_range(0.0..10.0) - y as f64 * 2.0).round(),
            })
        })
        .collect()
}

impl Workload {
    /// Generate a dataset of `shape` from `seed`.
    pub fn generate(seed: u64, shape: Shape) -> Workload {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed),
            ids: Ids { n: seed << 32 },
            out: BTreeMap::new(),
        };
        let companies = g.simple("companies", shape.companies, "Company");
        let materials = g.simple("materials", shape.materials, "Material");
        let crews = g.crews(shape.crews);
        let employees = g.employees(shape.employees);
        let vehicles = g.vehicles(shape.vehicles);
        let sites = g.jobsites(&shape, &companies, &materials);
        g.reports(shape.reports, &sites, &crews, &employees, &vehicles);
        g.out.insert(
            "systems",
            vec![doc! {"_id": g.ids.next(), "timezone": "America/Edmonton"}],
        );
        Workload { collections: g.out }
    }

    /// Documents over every collection.
    pub fn len(&self) -> usize {
        self.collections.values().map(Vec::len).sum()
    }

    pub fn count(&self, coll: &str) -> usize {
        self.collections.get(coll).map_or(0, Vec::len)
    }

    /// Shipments of a kind: costed (with a jobsite material), non-costed, with trucking.
    pub fn shipments(&self, pred: impl Fn(&Document) -> bool) -> usize {
        self.collections
            .get("materialshipments")
            .map_or(0, |v| v.iter().filter(|d| pred(d)).count())
    }

    /// Invoices linked from a jobsite's revenue or expense list.
    pub fn linked_invoices(&self) -> usize {
        self.collections["jobsites"]
            .iter()
            .map(|j| {
                j.get_array("revenueInvoices").map_or(0, Vec::len)
                    + j.get_array("expenseInvoices").map_or(0, Vec::len)
            })
            .sum()
    }

    /// Insert everything through the driver, dimensions first, in batches.
    pub async fn insert(&self, db: &mongodb::Database) -> mongodb::error::Result<()> {
        for (coll, docs) in &self.collections {
            for batch in docs.chunks(1000) {
                db.collection::<Document>(coll)
                    .insert_many(batch.to_vec())
                    .await?;
            }
        }
        Ok(())
    }

    /// Write a mongodump folder: `<coll>.bson` plus a minimal `<coll>.metadata.json`, and a
    /// metadata-only collection (`jobsiteDayReports`) as in the real dumps.
    pub fn write_dump(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (coll, docs) in &self.collections {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{coll}.bson")))?);
            for d in docs {
                let bytes = bson::serialize_to_vec(d)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                f.write_all(&bytes)?;
            }
            f.flush()?;
            write_metadata(dir, coll)?;
        }
        write_metadata(dir, "jobsiteDayReports")
    }
}

fn write_metadata(dir: &Path, coll: &str) -> std::io::Result<()> {
    std::fs::write(
        dir.join(format!("{coll}.metadata.json")),
        format!(
            r#"{{"indexes":[{{"v":{{"$numberInt":"2"}},"key":{{"_id":{{"$numberInt":"1"}}}},"name":"_id_"}}],"uuid":"","collectionName":"{coll}","type":"collection"}}"#
        ),
    )
}

struct Site {
    id: ObjectId,
    materials: Vec<ObjectId>,
    trucking: ObjectId,
}

struct Gen {
    rng: StdRng,
    ids: Ids,
    out: BTreeMap<&'static str, Vec<Document>>,
}

impl Gen {
    fn push(&mut self, coll: &'static str, d: Document) {
        self.out.entry(coll).or_default().push(d);
    }

    fn simple(&mut self, coll: &'static str, n: usize, name: &str) -> Vec<ObjectId> {
        (0..n)
            .map(|i| {
                let id = self.ids.next();
                self.push(
                    coll,
                    doc! {"_id": id, "name": format!("{name} {i}"), "__v": 0},
                );
                id
            })
            .collect()
    }

    fn crews(&mut self, n: usize) -> Vec<ObjectId> {
        (0..n)
            .map(|i| {
                let id = self.ids.next();
                let kind = CREW_TYPES[i % CREW_TYPES.len()];
                self.push(
                    "crews",
                    doc! {"_id": id, "name": format!("{kind} Crew {i}"), "type": kind},
                );
                id
            })
            .collect()
    }

    fn employees(&mut self, n: usize) -> Vec<ObjectId> {
        (0..n)
            .map(|i| {
                let id = self.ids.next();
                let rates = rates(&mut self.ids, &mut self.rng, 30.0);
                self.push(
                    "employees",
                    doc! {"_id": id, "name": format!("Employee {i}"),
                    "jobTitle": JOB_TITLES[i % JOB_TITLES.len()], "rates": rates},
                );
                id
            })
            .collect()
    }

    fn vehicles(&mut self, n: usize) -> Vec<ObjectId> {
        (0..n)
            .map(|i| {
                let id = self.ids.next();
                let rates = rates(&mut self.ids, &mut self.rng, 90.0);
                self.push(
                    "vehicles",
                    doc! {"_id": id, "name": format!("Unit {i}"), "vehicleCode": format!("V-{i}"),
                    "vehicleType": "Truck", "rental": false, "sourceCompany": "Bow Mark",
                    "rates": rates},
                );
                id
            })
            .collect()
    }

    fn jobsites(
        &mut self,
        shape: &Shape,
        companies: &[ObjectId],
        materials: &[ObjectId],
    ) -> Vec<Site> {
        let mut sites = Vec::new();
        for s in 0..shape.jobsites {
            let id = self.ids.next();
            let jms: Vec<ObjectId> = (0..shape.materials_per_jobsite)
                .map(|m| self.jobsite_material(companies, materials, m))
                .collect();
            let (mut revenue, mut expense) = (Vec::new(), Vec::new());
            for k in 0..shape.invoices_per_jobsite {
                let inv = self.invoice(companies, k % 2 == 1);
                if k % 2 == 0 {
                    revenue.push(inv);
                } else {
                    expense.push(inv);
                }
            }
            let trucking = self.ids.next();
            let rate_id = self.ids.next();
            self.push(
                "jobsites",
                doc! {"_id": id, "name": format!("Jobsite {s}"), "jobcode": format!("22-{s:04}"),
                "active": s % 3 != 0, "materials": jms.clone(),
                "revenueInvoices": revenue, "expenseInvoices": expense,
                "truckingRates": [{"_id": trucking, "title": "Tandem",
                    "rates": [{"_id": rate_id, "date": at(BASE_MS - DAY_MS * 30),
                               "rate": 120, "type": "Hour"}]}]},
            );
            sites.push(Site {
                id,
                materials: jms,
                trucking,
            });
        }
        sites
    }

    fn jobsite_material(
        &mut self,
        companies: &[ObjectId],
        materials: &[ObjectId],
        m: usize,
    ) -> ObjectId {
        let id = self.ids.next();
        let material = materials[self.rng.random_range(0..materials.len())];
        let supplier = companies[self.rng.random_range(0..companies.len())];
        let rate_id = self.ids.next();
        let rate = self.rng.random_range(8.0..40.0f64).round();
        self.push(
            "jobsiteMaterials",
            doc! {"_id": id, "material": material, "supplier": supplier,
            "quantity": 1000.0, "unit": UNITS[m % UNITS.len()], "costType": "rate",
            "delivered": false,
            "rates": [{"_id": rate_id, "date": at(BASE_MS - DAY_MS * 10), "rate": rate,
                       "estimated": false}],
            "deliveredRates": [], "invoices": []},
        );
        id
    }

    fn invoice(&mut self, companies: &[ObjectId], internal: bool) -> ObjectId {
        let id = self.ids.next();
        let company = companies[self.rng.random_range(0..companies.len())];
        let day = self.rng.random_range(0..365);
        let cost = self.rng.random_range(100.0..50_000.0f64).round();
        let n = self.ids.n;
        self.push(
            "invoices",
            doc! {"_id": id, "company": company, "invoiceNumber": format!("INV-{n}"),
            "cost": cost, "description": "generated", "internal": internal,
            "accrual": false, "date": at(BASE_MS + DAY_MS * day)},
        );
        id
    }

    fn reports(
        &mut self,
        n: usize,
        sites: &[Site],
        crews: &[ObjectId],
        employees: &[ObjectId],
        vehicles: &[ObjectId],
    ) {
        for r in 0..n {
            let day = BASE_MS + DAY_MS * (r as i64 % 700) + 14 * HOUR_MS;
            let site = &sites[self.rng.random_range(0..sites.len())];
            let ew: Vec<ObjectId> = (0..4).map(|_| self.employee_work(day, employees)).collect();
            let vw: Vec<ObjectId> = (0..2).map(|_| self.vehicle_work(vehicles)).collect();
            let ms: Vec<ObjectId> = (0..2).map(|k| self.shipment(day, site, k)).collect();
            let pr = vec![self.production(day)];
            let id = self.ids.next();
            let crew = crews[self.rng.random_range(0..crews.len())];
            self.push(
                "dailyreports",
                doc! {"_id": id, "date": at(day), "jobsite": site.id, "crew": crew,
                "approved": r % 5 != 0, "payrollComplete": false, "archived": false,
                "employeeWork": ew, "vehicleWork": vw, "production": pr,
                "materialShipment": ms},
            );
        }
    }

    fn employee_work(&mut self, day: i64, employees: &[ObjectId]) -> ObjectId {
        let id = self.ids.next();
        let employee = employees[self.rng.random_range(0..employees.len())];
        let hours = self.rng.random_range(4..11);
        self.push(
            "employeeworks",
            doc! {"_id": id, "startTime": at(day), "endTime": at(day + hours * HOUR_MS),
            "jobTitle": "Labour", "employee": employee},
        );
        id
    }

    fn vehicle_work(&mut self, vehicles: &[ObjectId]) -> ObjectId {
        let id = self.ids.next();
        let vehicle = vehicles[self.rng.random_range(0..vehicles.len())];
        let hours = self.rng.random_range(1..9);
        self.push(
            "vehicleworks",
            doc! {"_id": id, "hours": hours, "jobTitle": "Hauling", "vehicle": vehicle},
        );
        id
    }

    /// The first shipment of a report is costed and trucked; one in five second shipments is
    /// non-costed, the rest costed without trucking.
    fn shipment(&mut self, day: i64, site: &Site, k: usize) -> ObjectId {
        let id = self.ids.next();
        let qty = self.rng.random_range(1..40);
        let d = if k == 1 && self.rng.random_range(0..5) == 0 {
            doc! {"_id": id, "quantity": qty, "noJobsiteMaterial": true,
            "shipmentType": "Gravel", "supplier": "Local Supplier", "unit": "tonnes",
            "startTime": Bson::Null, "endTime": Bson::Null, "vehicleObject": Bson::Null}
        } else {
            let jm = site.materials[self.rng.random_range(0..site.materials.len())];
            let mut d = doc! {"_id": id, "quantity": qty, "noJobsiteMaterial": false,
            "jobsiteMaterial": jm, "startTime": at(day), "endTime": at(day + 2 * HOUR_MS)};
            let vehicle = if k == 0 {
                doc! {"source": "Company", "vehicleType": "Tandem", "vehicleCode": "T1",
                "truckingRateId": site.trucking}
            } else {
                doc! {"source": "Supplier", "vehicleType": "Truck", "vehicleCode": "S1"}
            };
            d.insert("vehicleObject", vehicle);
            d
        };
        self.push("materialshipments", d);
        id
    }

    fn production(&mut self, day: i64) -> ObjectId {
        let id = self.ids.next();
        let qty = self.rng.random_range(10..500);
        self.push(
            "productions",
            doc! {"_id": id, "jobTitle": "Paving", "quantity": qty, "unit": "tonnes",
            "startTime": at(day), "endTime": at(day + 8 * HOUR_MS),
            "description": "generated"},
        );
        id
    }
}
