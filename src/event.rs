//! The change event, wire contract v1 (see `docs/architecture.md`): built once at capture (or
//! by the backfill), carried unchanged through RabbitMQ to the projector.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod key;
pub use key::mongo_key;

/// AMQP `type` property of every v1 event.
pub const EVENT_TYPE: &str = "bowmark.cdc.v1";
/// AMQP header carrying the cluster time as `t.i`.
pub(crate) const CLUSTER_TIME_HEADER: &str = "x-cdc-cluster-time";
/// JSON content type of the body.
pub const CONTENT_TYPE: &str = "application/json";

/// The business entities Bow-Mark syncs: singular snake_case names, used in routing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    DailyReport,
    EmployeeWork,
    VehicleWork,
    MaterialShipment,
    Production,
    Invoice,
    Employee,
    Vehicle,
    Jobsite,
    JobsiteMaterial,
    Crew,
    Material,
    Company,
    System,
}

impl Entity {
    pub const ALL: [Entity; 14] = [
        Entity::DailyReport,
        Entity::EmployeeWork,
        Entity::VehicleWork,
        Entity::MaterialShipment,
        Entity::Production,
        Entity::Invoice,
        Entity::Employee,
        Entity::Vehicle,
        Entity::Jobsite,
        Entity::JobsiteMaterial,
        Entity::Crew,
        Entity::Material,
        Entity::Company,
        Entity::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::DailyReport => "daily_report",
            Entity::EmployeeWork => "employee_work",
            Entity::VehicleWork => "vehicle_work",
            Entity::MaterialShipment => "material_shipment",
            Entity::Production => "production",
            Entity::Invoice => "invoice",
            Entity::Employee => "employee",
            Entity::Vehicle => "vehicle",
            Entity::Jobsite => "jobsite",
            Entity::JobsiteMaterial => "jobsite_material",
            Entity::Crew => "crew",
            Entity::Material => "material",
            Entity::Company => "company",
            Entity::System => "system",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown entity {0:?}")]
pub struct UnknownEntity(pub String);

impl FromStr for Entity {
    type Err = UnknownEntity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEntity(s.to_string()))
    }
}

/// The MongoDB operation type of the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Insert,
    Update,
    Replace,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Replace => "replace",
            Op::Delete => "delete",
        }
    }

    /// The legacy-compatible action of this operation.
    pub fn action(self) -> Action {
        match self {
            Op::Insert => Action::Created,
            Op::Update | Op::Replace => Action::Updated,
            Op::Delete => Action::Deleted,
        }
    }
}

/// The legacy sync's action, part of the routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

/// A MongoDB cluster time (BSON Timestamp): seconds and increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterTime {
    pub t: u32,
    pub i: u32,
}

/// The position of an event in the stream: strictly increasing along it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub cluster_time: ClusterTime,
    pub ordinal: u32,
}

impl Version {
    /// The version of a document read by a dump backfill: older than any streamed event.
    pub const ZERO: Version = Version {
        cluster_time: ClusterTime { t: 0, i: 0 },
        ordinal: 0,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub lsid: String,
    pub txn_number: i64,
}

/// One normalized change, as published on `bowmark.sync`. `D` is how the document is held:
/// a JSON value (the capture builds one), or the JSON text it arrived in (the projector reads
/// it so, building no tree of values for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent<D = serde_json::Value> {
    pub v: u32,
    pub id: String,
    pub pipeline: String,
    pub entity: Entity,
    pub op: Op,
    pub action: Action,
    pub ns: Namespace,
    /// The document's `_id`: 24-char lowercase hex for ObjectIds.
    pub key: String,
    pub cluster_time: ClusterTime,
    pub ordinal: u32,
    #[serde(with = "rfc3339_millis")]
    pub wall_time: DateTime<Utc>,
    /// Post-image as relaxed extended JSON; `null` for deletes and for an update whose
    /// looked-up document is gone (that is not a delete).
    pub doc: Option<D>,
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
    #[serde(default)]
    pub txn: Option<Txn>,
    /// The change stream's resume token, opaque, stored whole.
    pub resume_token: serde_json::Value,
    /// Legacy-compatible fields: every event is a valid legacy sync message.
    #[serde(rename = "mongoId")]
    pub mongo_id: String,
    #[serde(with = "rfc3339_millis")]
    pub timestamp: DateTime<Utc>,
}

impl ChangeEvent {
    /// The event id: `<pipeline>:<t>.<i>.<ordinal>`.
    pub fn make_id(pipeline: &str, ct: ClusterTime, ordinal: u32) -> String {
        format!("{pipeline}:{}.{}.{ordinal}", ct.t, ct.i)
    }
}

impl<D> ChangeEvent<D> {
    pub fn version(&self) -> Version {
        Version {
            cluster_time: self.cluster_time,
            ordinal: self.ordinal,
        }
    }

    /// Routing key `<entity>.<action>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.entity.as_str(), self.action.as_str())
    }

    /// Value of the `x-cdc-cluster-time` header.
    pub fn cluster_time_header(&self) -> String {
        format!("{}.{}", self.cluster_time.t, self.cluster_time.i)
    }
}

/// RFC 3339 UTC timestamps with milliseconds (`2026-11-27T04:15:03.120Z`).
pub mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_round_trip() {
        for e in Entity::ALL {
            assert_eq!(e.as_str().parse::<Entity>().unwrap(), e);
            assert_eq!(
                serde_json::to_value(e).unwrap(),
                serde_json::json!(e.as_str())
            );
        }
        assert!("employees".parse::<Entity>().is_err());
    }

    #[test]
    fn versions_order_by_cluster_time_then_ordinal() {
        let v = |t, i, o| Version {
            cluster_time: ClusterTime { t, i },
            ordinal: o,
        };
        assert!(v(1, 2, 0) < v(1, 3, 0));
        assert!(v(1, 3, 0) < v(1, 3, 1));
        assert!(v(1, 9, 9) < v(2, 0, 0));
        assert!(Version::ZERO < v(0, 0, 1));
    }
}
