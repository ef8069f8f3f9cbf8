//! `--load-dump`: the bowmark-dev paving dump through the library and the binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bson::{Document, doc};

use crate::support::{self, mongo::TestMongo};

const PAVING: &[(&str, u64)] = &[
    ("companies", 377),
    ("crews", 19),
    ("employees", 257),
    ("invoices", 6_867),
    ("jobsiteMaterials", 1_727),
    ("jobsites", 1_014),
    ("materials", 51),
    ("productions", 3_442),
    ("vehicles", 1_142),
    ("systems", 1),
    ("dailyreports", 0),
    ("employeeworks", 0),
    ("materialshipments", 0),
    ("vehicleworks", 0),
];

async fn check_counts(db: &mongodb::Database) {
    let names = db.list_collection_names().await.unwrap();
    for (coll, n) in PAVING {
        assert!(
            names.contains(&coll.to_string()),
            "{coll} missing from {names:?}"
        );
        let c = db.collection::<Document>(coll);
        assert_eq!(c.count_documents(doc! {}).await.unwrap(), *n, "{coll}");
    }
}

#[tokio::test]
async fn load_dump_gives_the_documented_counts() {
    let Some(dir) = support::fixtures("paving") else {
        return;
    };
    let m = TestMongo::start().await;
    let counts = m.load_dump(&dir).await;
    assert_eq!(counts.get("invoices"), Some(&6_867));
    check_counts(&m.db()).await;
    // _id-range paging over the loaded data works in BSON order.
    let c = m.db().collection::<Document>("invoices");
    let first = c
        .find_one(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    let id = first.get("_id").unwrap().clone();
    let rest = c.count_documents(doc! {"_id": {"$gt": id}}).await.unwrap();
    assert_eq!(rest, 6_866);
}

fn mongosim_binary() -> Option<std::path::PathBuf> {
    // target/<profile>/deps/it-<hash> -> target/<profile>/mongosim
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let bin = dir.join(format!("mongosim{}", std::env::consts::EXE_SUFFIX));
    if bin.exists() {
        return Some(bin);
    }
    // Not built by `cargo test` of the main package: build it (incremental, seconds).
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "mongosim", "--bin", "mongosim"])
        .current_dir(support::project_root())
        .status()
        .ok()?;
    (status.success() && bin.exists()).then_some(bin)
}

#[tokio::test]
async fn binary_serves_a_loaded_dump_and_exits_on_sigterm() {
    let Some(dir) = support::fixtures("paving") else {
        return;
    };
    let Some(bin) = mongosim_binary() else {
        eprintln!("SKIP: the mongosim binary is not built (cargo build -p mongosim)");
        return;
    };
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--replset", "rs0", "--load-dump"])
        .arg(format!("paving={}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).map(|_| l)
    })
    .await
    .unwrap()
    .unwrap();
    let uri = line.trim().to_string();
    assert!(
        uri.starts_with("mongodb://127.0.0.1:") && uri.ends_with("replicaSet=rs0"),
        "{uri}"
    );
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    check_counts(&client.database("paving")).await;
    client.shutdown().await;
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mongosim did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
