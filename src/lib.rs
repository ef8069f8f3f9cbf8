//! bowmark-cdc: change-data-capture from Bow-Mark's MongoDB databases into RabbitMQ and the
//! PostgreSQL reporting star schemas. See `docs/architecture.md` and `README.md`.

pub mod amqp;
pub mod backfill;
pub mod capture;
pub mod cause;
pub mod checkpoint;
pub mod config;
pub mod dumpdir;
pub mod event;
pub mod health;
pub mod http;
pub(crate) mod locks;
pub(crate) mod metrics;
pub mod migrate;
pub mod model;
pub mod ops;
pub mod pg;
pub mod project;
pub mod projector;
pub mod publish;
pub(crate) mod retry;
pub mod runtime;
pub mod telemetry;
pub(crate) mod tls;
pub mod topology;
