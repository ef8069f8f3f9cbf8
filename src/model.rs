//! The entity catalog: what the pipeline knows about each source entity, in one table.
//!
//! The projection's statement gating (which statements run for which affected entities), the
//! daily-report children, the backfill's order, parallelism and bulk-load tables, and the list
//! of star tables are all derived from [`CATALOG`]; a test checks that the projection SQL and
//! the catalog agree. Adding an entity: its [`Entity`] variant, its row here, its statements in
//! `src/project/sql/` (`-- @step upsert TABLE` and `cleanup TABLE` for the tables listed here),
//! and its collection in the pipeline files (docs/architecture.md, "Adding an entity").

use crate::event::Entity;

/// Everything per entity.
#[derive(Debug)]
pub struct Model {
    pub entity: Entity,
    /// Star tables its documents' rows live in, each written by its `upsert` step (and a
    /// `cleanup` step, where rows can stop being derivable).
    pub tables: &'static [&'static str],
    /// The daily-report array that lists it: a report child, derived in the report's context.
    pub report_array: Option<&'static str>,
    /// A deleted document's row is archived (`archived_at`); the `dim_*` statement does it.
    pub archives_on_delete: bool,
    /// Tables that take a bulk load (indexes and foreign keys deferred while they are empty)
    /// while its collection backfills.
    pub bulk_tables: &'static [&'static str],
    /// Backfill order: lower first. The dimensions the reports read, then the reports, then the
    /// rest side by side.
    pub rank: u8,
    /// Its backfill chunks may load side by side on several connections: each derives only its
    /// own documents' rows, from reports and dimensions no chunk writes.
    pub splits: bool,
    /// Of the collections loaded side by side, loaded one after the other on one connection
    /// (a shipment's cost reads its jobsite material and the invoices of its month).
    pub chained: bool,
}

const fn dim(entity: Entity, tables: &'static [&'static str], rank: u8, archives: bool) -> Model {
    Model {
        entity,
        tables,
        report_array: None,
        archives_on_delete: archives,
        bulk_tables: &[],
        rank,
        splits: false,
        chained: false,
    }
}

const fn child(
    entity: Entity,
    tables: &'static [&'static str],
    report_array: &'static str,
    rank: u8,
    splits: bool,
) -> Model {
    Model {
        entity,
        tables,
        report_array: Some(report_array),
        archives_on_delete: false,
        bulk_tables: tables,
        rank,
        splits,
        chained: !splits,
    }
}

/// The catalog, in backfill order.
pub(crate) const CATALOG: [Model; 14] = [
    dim(Entity::Company, &["dim_company"], 0, true),
    dim(Entity::Material, &["dim_material"], 1, true),
    dim(Entity::Crew, &["dim_crew"], 2, false),
    dim(
        Entity::Employee,
        &["dim_employee", "dim_employee_rate"],
        3,
        true,
    ),
    dim(
        Entity::Vehicle,
        &["dim_vehicle", "dim_vehicle_rate"],
        4,
        true,
    ),
    dim(Entity::Jobsite, &["dim_jobsite"], 5, true),
    // The app's settings (time zone): watched, nothing derived from it.
    dim(Entity::System, &[], 6, false),
    Model {
        bulk_tables: &["dim_daily_report"],
        ..dim(Entity::DailyReport, &["dim_daily_report"], 7, false)
    },
    Model {
        chained: true,
        ..dim(
            Entity::JobsiteMaterial,
            &["dim_jobsite_material", "dim_jobsite_material_rate"],
            8,
            false,
        )
    },
    Model {
        chained: true,
        ..dim(Entity::Invoice, &["fact_invoice"], 9, false)
    },
    child(
        Entity::MaterialShipment,
        &[
            "fact_material_shipment",
            "fact_non_costed_material",
            "fact_trucking",
        ],
        "materialShipment",
        10,
        false,
    ),
    child(
        Entity::EmployeeWork,
        &["fact_employee_work"],
        "employeeWork",
        11,
        true,
    ),
    child(
        Entity::VehicleWork,
        &["fact_vehicle_work"],
        "vehicleWork",
        12,
        true,
    ),
    child(
        Entity::Production,
        &["fact_production"],
        "production",
        13,
        true,
    ),
];

/// The catalog row of an entity.
pub fn model(e: Entity) -> &'static Model {
    CATALOG
        .iter()
        .find(|m| m.entity == e)
        .expect("every entity is in the catalog")
}

/// The entity whose rows a star table holds.
pub fn owner(table: &str) -> Option<Entity> {
    CATALOG
        .iter()
        .find(|m| m.tables.contains(&table))
        .map(|m| m.entity)
}

/// Every star table, dimensions first, in catalog order.
pub fn star_tables() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = CATALOG
        .iter()
        .flat_map(|m| m.tables.iter().copied())
        .collect();
    out.sort_by_key(|t| !t.starts_with("dim_"));
    out
}

/// The daily-report children, with the report array that lists each.
pub(crate) fn report_children() -> impl Iterator<Item = (Entity, &'static str)> {
    CATALOG
        .iter()
        .filter_map(|m| m.report_array.map(|a| (m.entity, a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_has_one_row_and_every_table_one_owner() {
        for e in Entity::ALL {
            assert_eq!(CATALOG.iter().filter(|m| m.entity == e).count(), 1, "{e}");
        }
        let tables = star_tables();
        for t in &tables {
            assert_eq!(
                CATALOG.iter().filter(|m| m.tables.contains(t)).count(),
                1,
                "{t}"
            );
        }
        assert_eq!(tables.len(), 18);
        let mut ranks: Vec<u8> = CATALOG.iter().map(|m| m.rank).collect();
        ranks.dedup();
        assert_eq!(ranks.len(), CATALOG.len(), "ranks are distinct");
        for m in &CATALOG {
            for b in m.bulk_tables {
                assert!(
                    m.tables.contains(b),
                    "{} bulk-loads {b}, not its own",
                    m.entity
                );
            }
            assert!(!(m.splits && m.chained), "{}", m.entity);
        }
        assert_eq!(report_children().count(), 4);
    }
}
