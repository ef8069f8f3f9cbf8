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
///
/// Production-shaped, as a complete 2023 snapshot is: free text that is long and padded (job
/// titles of 400-440 characters, units of ~500), mid-length (51-180) or empty; optional fields
/// missing (a jobsite's `active`, a vehicle object's `vehicleType`, an invoice's `accrual`);
/// about 3 % of the daily reports naming a crew whose document was deleted; two rates on one
/// date, in either order; quantities as int, double and Decimal128.
pub struct Workload {
    pub collections: BTreeMap<&'static str, Vec<Document>>,
    /// Crews the reports name whose documents are gone (deleted before the snapshot).
    pub gone_crews: usize,
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

/// Free text as production holds it, for the `k`-th document: now and then long and padded
/// (400-440 characters), mid-length (51-180), empty, or missing (`None`).
fn free_text(k: usize, ordinary: &str) -> Option<String> {
    match k % 211 {
        5 => Some(format!(
            "{} {}",
            format!("{ordinary} / flagger / night shift, ").repeat(14),
            " ".repeat(k % 40)
        )),
        17 | 90 | 150 => Some(format!("{ordinary} ({})", "relief ".repeat(7 + k % 20))),
        31 | 120 => Some(String::new()),
        60 => None,
        _ => Some(ordinary.to_string()),
    }
}

/// Set `field` of `d` to `free_text(k, ordinary)` (left out when missing).
fn set_text(d: &mut Document, field: &str, k: usize, ordinary: &str) {
    if let Some(t) = free_text(k, ordinary) {
        d.insert(field, t);
    }
}

/// A quantity as the app stores it, for the `k`-th document: int, double or Decimal128.
fn quantity(k: usize, q: i64) -> Bson {
    match k % 3 {
        0 => Bson::Int32(q as i32),
        1 => Bson::Double(q as f64 + 0.5),
        _ => Bson::Decimal128(format!("{q}.25").parse().expect("a decimal")),
    }
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
        // Crews deleted from MongoDB that old reports still name.
        let gone: Vec<ObjectId> = (0..2).map(|_| g.ids.next()).collect();
        let employees = g.employees(shape.employees);
        let vehicles = g.vehicles(shape.vehicles);
        let sites = g.jobsites(&shape, &companies, &materials);
        g.reports(shape.reports, &sites, &crews, &gone, &employees, &vehicles);
        g.out.insert(
            "systems",
            vec![doc! {"_id": g.ids.next(), "timezone": "America/Edmonton"}],
        );
        let gone_crews = gone
            .iter()
            .filter(|id| {
                g.out["dailyreports"]
                    .iter()
                    .any(|r| r.get_object_id("crew").ok() == Some(**id))
            })
            .count();
        Workload {
            collections: g.out,
            gone_crews,
        }
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

    /// Insert everything through the driver as the app saves it: the dimensions, invoices and
    /// jobsite materials first, then per few daily reports their children and after them the
    /// reports (so a child always arrives before the report that lists it).
    pub async fn insert_children_first(
        &self,
        db: &mongodb::Database,
    ) -> mongodb::error::Result<()> {
        const CHILDREN: [(&str, &str); 4] = [
            ("employeeWork", "employeeworks"),
            ("vehicleWork", "vehicleworks"),
            ("materialShipment", "materialshipments"),
            ("production", "productions"),
        ];
        let is_child = |c: &str| CHILDREN.iter().any(|(_, coll)| *coll == c);
        for (coll, docs) in &self.collections {
            if *coll == "dailyreports" || is_child(coll) {
                continue;
            }
            for batch in docs.chunks(1000) {
                db.collection::<Document>(coll)
                    .insert_many(batch.to_vec())
                    .await?;
            }
        }
        let by_id: BTreeMap<ObjectId, &Document> = CHILDREN
            .iter()
            .flat_map(|(_, coll)| self.collections.get(coll).into_iter().flatten())
            .filter_map(|d| Some((d.get_object_id("_id").ok()?, d)))
            .collect();
        for reports in self.collections["dailyreports"].chunks(25) {
            for (field, coll) in CHILDREN {
                let kids: Vec<Document> = reports
                    .iter()
                    .flat_map(|r| r.get_array(field).into_iter().flatten())
                    .filter_map(|id| by_id.get(&id.as_object_id()?).map(|d| (*d).clone()))
                    .collect();
                if !kids.is_empty() {
                    db.collection::<Document>(coll).insert_many(kids).await?;
                }
            }
            db.collection::<Document>("dailyreports")
                .insert_many(reports.to_vec())
                .await?;
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
                let mut rates = rates(&mut self.ids, &mut self.rng, 30.0);
                if i % 5 == 0 {
                    // A second rate on the date of the first (a correction entered later),
                    // listed before or after it.
                    let same_day = doc! {"_id": self.ids.next(),
                    "date": at(BASE_MS + if i % 10 == 0 { 0 } else { 9 * HOUR_MS }),
                    "rate": 31.0 + (i % 7) as f64};
                    rates.insert(if i % 2 == 0 { 0 } else { 1 }, Bson::Document(same_day));
                }
                let mut d = doc! {"_id": id, "name": format!("Employee {i}"), "rates": rates};
                set_text(&mut d, "jobTitle", i, JOB_TITLES[i % JOB_TITLES.len()]);
                self.push("employees", d);
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
                {
                let mut d = doc! {"_id": id, "name": format!("Jobsite {s}"), "jobcode": format!("22-{s:04}"),
                "materials": jms.clone(),
                "revenueInvoices": revenue, "expenseInvoices": expense,
                "truckingRates": [{"_id": trucking, "title": "Tandem",
                    "rates": [{"_id": rate_id, "date": at(BASE_MS - DAY_MS * 30),
                               "rate": 120, "type": "Hour"}]}]};
                // (old jobsites have no `active`: the app's default is inactive)
                if s % 7 != 3 {
                    d.insert("active", s % 3 != 0);
                }
                d
                },
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
            "quantity": 1000.0,
            "unit": if self.ids.n % 41 == 7 {
                format!("{} ", "cubic metres delivered to the north stockpile, ".repeat(11))
            } else {
                UNITS[m % UNITS.len()].to_string()
            },
            "costType": "rate",
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
        self.push("invoices", {
            let mut d = doc! {"_id": id, "company": company, "invoiceNumber": format!("INV-{n}"),
            "cost": cost, "internal": internal, "date": at(BASE_MS + DAY_MS * day)};
            set_text(&mut d, "description", n as usize, "generated");
            // (about 2 % of the invoices have no `accrual`)
            if n % 50 != 1 {
                d.insert("accrual", false);
            }
            d
        });
        id
    }

    fn reports(
        &mut self,
        n: usize,
        sites: &[Site],
        crews: &[ObjectId],
        gone_crews: &[ObjectId],
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
            // About 3 % of the reports name a crew whose document was deleted.
            let crew = if r % 33 == 7 {
                gone_crews[r % gone_crews.len()]
            } else {
                crew
            };
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
        let mut d = doc! {"_id": id, "startTime": at(day), "endTime": at(day + hours * HOUR_MS),
        "employee": employee};
        set_text(&mut d, "jobTitle", self.ids.n as usize, "Labour");
        self.push("employeeworks", d);
        id
    }

    fn vehicle_work(&mut self, vehicles: &[ObjectId]) -> ObjectId {
        let id = self.ids.next();
        let vehicle = vehicles[self.rng.random_range(0..vehicles.len())];
        let hours = self.rng.random_range(1..9);
        let k = self.ids.n as usize;
        let mut d = doc! {"_id": id, "hours": if k.is_multiple_of(2) { Bson::Int32(hours) } else { Bson::Double(f64::from(hours) + 0.25) },
        "vehicle": vehicle};
        set_text(&mut d, "jobTitle", k, "Hauling");
        self.push("vehicleworks", d);
        id
    }

    /// The first shipment of a report is costed and trucked; one in five second shipments is
    /// non-costed, the rest costed without trucking.
    fn shipment(&mut self, day: i64, site: &Site, k: usize) -> ObjectId {
        let id = self.ids.next();
        let qty = self.rng.random_range(1..40);
        let n = self.ids.n as usize;
        let d = if k == 1 && self.rng.random_range(0..5) == 0 {
            let mut d = doc! {"_id": id, "quantity": quantity(n, qty), "noJobsiteMaterial": true,
            "shipmentType": "Gravel", "supplier": "Local Supplier",
            "startTime": Bson::Null, "endTime": Bson::Null, "vehicleObject": Bson::Null};
            set_text(&mut d, "unit", n, "tonnes");
            d
        } else {
            let jm = site.materials[self.rng.random_range(0..site.materials.len())];
            let mut d = doc! {"_id": id, "quantity": quantity(n, qty), "noJobsiteMaterial": false,
            "jobsiteMaterial": jm, "startTime": at(day), "endTime": at(day + 2 * HOUR_MS)};
            let mut vehicle = if k == 0 {
                doc! {"source": "Company", "vehicleCode": "T1", "truckingRateId": site.trucking}
            } else {
                doc! {"source": "Supplier", "vehicleCode": "S1"}
            };
            // (no vehicleType on some: the app's default is "Truck"; empty source on others)
            if n % 9 != 4 {
                vehicle.insert("vehicleType", if k == 0 { "Tandem" } else { "Truck" });
            }
            if n % 13 == 6 {
                vehicle.insert("source", "");
            }
            d.insert("vehicleObject", vehicle);
            d
        };
        self.push("materialshipments", d);
        id
    }

    fn production(&mut self, day: i64) -> ObjectId {
        let id = self.ids.next();
        let qty = self.rng.random_range(10..500);
        self.push("productions", {
            let n = self.ids.n as usize;
            let mut d = doc! {"_id": id, "jobTitle": "Paving", "quantity": quantity(n, qty),
            "unit": "tonnes", "startTime": at(day), "endTime": at(day + 8 * HOUR_MS)};
            set_text(&mut d, "description", n, "generated");
            d
        });
        id
    }
}
