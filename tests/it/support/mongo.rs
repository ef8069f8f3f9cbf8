//! MongoDB for tests: the in-process `mongosim` simulator by default, or a real replica set
//! when `MONGO_TEST_URI` is set (e.g. `mongodb://host:27017/?replicaSet=rs0`, started with
//! `--setParameter enableTestCommands=1` so `failCommand` works). Each test gets a unique
//! database `test_<random>`, dropped on a real server when the `TestMongo` drops.
//!
//! Simulator-only tests start with `let sim = require_sim!(m, "why");`, which prints
//! `SKIP: <why> (needs the simulator)` and returns on a real server.

#![allow(dead_code)]

use bson::{Document, doc};
use mongodb::Client;

/// A MongoDB target for one test.
pub struct TestMongo {
    sim: Option<mongosim::Sim>,
    uri: String,
    db: String,
    client: Client,
}

/// Append `opts` (`a=b&c=d`) to a connection string's query.
pub fn with_options(uri: &str, opts: &str) -> String {
    if opts.is_empty() {
        return uri.to_string();
    }
    if uri.contains('?') {
        format!("{uri}&{opts}")
    } else if uri.ends_with('/') {
        format!("{uri}?{opts}")
    } else {
        format!("{uri}/?{opts}")
    }
}

impl TestMongo {
    /// The simulator (no `MONGO_TEST_URI`) or the real replica set.
    pub async fn start() -> TestMongo {
        let db = super::unique_name("test").replace('-', "_");
        let real = std::env::var("MONGO_TEST_URI")
            .ok()
            .filter(|u| !u.is_empty());
        let (sim, uri) = match real {
            Some(u) => (None, u),
            None => {
                let sim = mongosim::Sim::start().await;
                let uri = sim.uri();
                (Some(sim), uri)
            }
        };
        let client = Client::with_uri_str(with_options(&uri, &format!("appName={db}")))
            .await
            .expect("mongodb client");
        TestMongo {
            sim,
            uri,
            db,
            client,
        }
    }

    /// Like `start`, with a simulator configuration (ignored against a real server).
    pub async fn start_with(config: mongosim::SimConfig) -> TestMongo {
        if std::env::var("MONGO_TEST_URI").is_ok_and(|u| !u.is_empty()) {
            return TestMongo::start().await;
        }
        let db = super::unique_name("test").replace('-', "_");
        let sim = mongosim::Sim::start_with(config)
            .await
            .expect("start mongosim");
        let uri = sim.uri();
        let client = Client::with_uri_str(with_options(&uri, &format!("appName={db}")))
            .await
            .expect("mongodb client");
        TestMongo {
            sim: Some(sim),
            uri,
            db,
            client,
        }
    }

    /// Load a mongodump folder (e.g. `support::fixtures("paving")`) into this test's
    /// database: directly into the simulator (no change events), or through the driver on a
    /// real server. Returns documents per collection.
    pub async fn load_dump(&self, dir: &std::path::Path) -> mongosim::DumpCounts {
        if let Some(sim) = &self.sim {
            return sim.load_dump(&self.db, dir).expect("load dump");
        }
        let mut counts = mongosim::DumpCounts::new();
        for (coll, docs) in mongosim::read_dump_documents(dir).expect("read dump") {
            counts.insert(coll.clone(), docs.len());
            let c = self.db().collection::<Document>(&coll);
            if docs.is_empty() {
                let _ = self.db().create_collection(&coll).await;
                continue;
            }
            for chunk in docs.chunks(1000) {
                c.insert_many(chunk.to_vec())
                    .await
                    .expect("insert dump documents");
            }
        }
        counts
    }

    /// The connection string (without the per-test appName).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// This test's database name (also the default client's appName, for scoping failpoints).
    pub fn db_name(&self) -> &str {
        &self.db
    }

    /// The default client (appName = `db_name()`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This test's database through the default client.
    pub fn db(&self) -> mongodb::Database {
        self.client.database(&self.db)
    }

    /// A new client with extra URI options, e.g. `"retryReads=false"`; appName stays
    /// `db_name()` unless `opts` sets one.
    pub async fn client_with(&self, opts: &str) -> Client {
        let mut all = opts.to_string();
        if !opts.contains("appName=") {
            all = format!("appName={}&{opts}", self.db);
        }
        Client::with_uri_str(with_options(&self.uri, all.trim_end_matches('&')))
            .await
            .expect("mongodb client")
    }

    /// The in-process simulator, when not running against a real server.
    pub fn sim(&self) -> Option<&mongosim::Sim> {
        self.sim.as_ref()
    }

    /// `configureFailPoint failCommand` scoped to this test's appName.
    pub async fn fail_command(&self, mode: bson::Bson, mut data: Document) {
        if !data.contains_key("appName") {
            data.insert("appName", self.db.clone());
        }
        self.client
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
            .await
            .expect("configureFailPoint failCommand (real servers need enableTestCommands=1)");
    }

    /// Turn the `failCommand` fail point off.
    pub async fn fail_command_off(&self) {
        let _ = self
            .client
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await;
    }
}

impl Drop for TestMongo {
    fn drop(&mut self) {
        if self.sim.is_some() {
            return;
        }
        let (uri, db) = (self.uri.clone(), self.db.clone());
        // A thread of its own: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = Client::with_uri_str(&uri).await {
                    let _ = c.database(&db).drop().await;
                    c.shutdown().await;
                }
            });
        })
        .join();
    }
}

/// `let sim = require_sim!(m, "why");` — the simulator, or print a SKIP line and return.
macro_rules! require_sim {
    ($m:expr, $why:expr) => {
        match $m.sim() {
            Some(s) => s,
            None => {
                eprintln!("SKIP: {} (needs the simulator)", $why);
                return;
            }
        }
    };
}
pub(crate) use require_sim;
