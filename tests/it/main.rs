//! The one integration-test binary. Every module here talks to real services:
//! PostgreSQL and RabbitMQ on localhost (see `scripts/services.sh`), and MongoDB through
//! the `mongosim` wire simulator or a real replica set named by `MONGO_TEST_URI`.

mod support;

mod alarm;
mod backfill;
mod capture;
mod checkpoint;
mod cli;
mod cluster;
mod first_run;
mod migrate;
mod monitoring;
mod ops;
mod project;
mod projector;
mod sim;
mod timeouts;
mod tls;
mod topology;
mod verify;
