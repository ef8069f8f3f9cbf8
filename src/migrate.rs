//! Schema migrations: the legacy star schema and the `cdc` bookkeeping schema, embedded with
//! refinery, with adoption of databases that the legacy dbmate migrations built.
