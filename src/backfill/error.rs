//! Everything that stops a backfill, each naming what the operator needs to act on.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::project::ProjectError;

use super::DumpError;
use super::guard::{DeleteEstimate, NoneWatched};

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "unknown collection {name:?}: pipeline {pipeline} watches {watched} \
         (see [mongo.collections] in {file})"
    )]
    UnknownCollection {
        name: String,
        pipeline: String,
        watched: String,
        file: String,
    },
    #[error("configuration")]
    Config(#[source] ConfigError),
    #[error("cannot connect to PostgreSQL database {database}")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL")]
    Postgres(#[source] tokio_postgres::Error),
    #[error(
        "database {database} has no cdc backfill tables: run `bowmark-cdc migrate --pipeline …` first"
    )]
    NotMigrated { database: String },
    #[error(
        "another backfill of pipeline {pipeline} is running against this database (advisory lock \
         held); wait for it to finish or stop it"
    )]
    Locked { pipeline: String },
    #[error(
        "pipeline {pipeline} has an unfinished backfill from {was}; this run reads {now}. Run it \
         again with the same source to resume, or pass --restart to start over"
    )]
    SourceChanged {
        pipeline: String,
        was: String,
        now: String,
    },
    #[error(transparent)]
    NoWatchedCollections(NoneWatched),
    #[error(
        "refusing to mark {} of the {} mirror documents of {} deleted ({}): more than a tenth \
         of the mirror, which looks like the wrong source (an empty or wrong database, a dump \
         folder one level too high) rather than deletions; {}. If the deletions are real, run \
         again with --allow-deletes",
        .0.deleted, .0.mirror, .0.scope, .0.per_collection(), .0.written
    )]
    TooManyDeletes(Box<DeleteEstimate>),
    #[error("MongoDB")]
    Mongo(#[source] mongodb::error::Error),
    #[error("MongoDB did not report an operationTime (is it a replica set?)")]
    NoClusterTime,
    #[error("MongoDB did not return a change-stream resume token (is it a replica set?)")]
    NoResumeToken,
    #[error("the backfill checkpoint of {collection} holds an unreadable _id; use --restart")]
    BadCheckpoint { collection: String },
    #[error("cannot read the dump folder {dir}")]
    DumpDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dump")]
    Dump(#[source] DumpError),
    #[error("projection")]
    Project(#[source] ProjectError),
    #[error("interrupted")]
    Interrupted,
    #[error(
        "rebuilding the indexes and foreign keys dropped for the bulk load (cdc.deferred_ddl); \
         run the backfill again or `bowmark-cdc migrate` to retry"
    )]
    Rebuild(#[source] tokio_postgres::Error),
    #[error(
        "collection {collection} stopped after {done} of {total} documents; run the same command \
         again to continue from there"
    )]
    Collection {
        collection: String,
        done: u64,
        total: String,
        #[source]
        source: Box<BackfillError>,
    },
}

impl From<tokio_postgres::Error> for BackfillError {
    fn from(e: tokio_postgres::Error) -> Self {
        BackfillError::Postgres(e)
    }
}
