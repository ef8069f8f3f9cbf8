//! The unified change-streams tests of the MongoDB specifications
//! (`source/change-streams/tests/unified/`), ported to the Rust driver against mongosim (and
//! a real replica set with `MONGO_TEST_URI`). Each test keeps the scenario's operations and
//! `expectResult`/`expectError`, matched with the unified format's rules (extra fields only
//! at the root; `$$exists`, `$$type`, `$$unsetOrMatches`; numbers by value).
//! `expectEvents` (command monitoring) is checked against the simulator's command log where
//! it says something about the commands; on a real server that part is skipped.
//!
//! | file / scenario | status |
//! |---|---|
//! | change-streams: Test array truncation | ported |
//! | change-streams: Test with document comment | ported |
//! | change-streams: Test with document comment - pre 4.4 | left out: needs a pre-4.4 server |
//! | change-streams: Test with string comment | ported |
//! | change-streams: Test that comment is set on getMore | ported |
//! | change-streams: Test that comment is not set on getMore - pre 4.4 | left out: needs a pre-4.4 server |
//! | change-streams: to field is set in a rename change event | ported |
//! | change-streams: Test unknown operationType MUST NOT err | ported |
//! | change-streams: Test newField added in response MUST NOT err | ported |
//! | change-streams: Test new structure in ns document MUST NOT err | ported |
//! | change-streams: Test modified structure in ns document MUST NOT err | ported |
//! | change-streams: Test server error on projecting out _id | ported |
//! | change-streams: Test projection in change stream returns expected fields | ported |
//! | change-streams: $changeStream must be the first stage in a change stream pipeline sent to the server | ported |
//! | change-streams: The server returns change stream responses in the specified server response format | ported |
//! | change-streams: Executing a watch helper on a Collection results in notifications for changes to the specified collection | ported |
//! | change-streams: Change Stream should allow valid aggregate pipeline stages | ported |
//! | change-streams: Executing a watch helper on a Database results in notifications for changes to all collections in the specified database. | ported |
//! | change-streams: Executing a watch helper on a MongoClient results in notifications for changes to all collections in all databases in the cluster. | ported |
//! | change-streams: Test insert, update, replace, and delete event types | ported |
//! | change-streams: Test rename and invalidate event types | ported |
//! | change-streams: Test drop and invalidate event types | ported |
//! | change-streams: Test consecutive resume | ported |
//! | change-streams-errors: The watch helper must not throw a custom exception when executed against a single server topology | left out: needs a standalone server (the simulator is always a replica-set member) |
//! | change-streams-errors: Change Stream should error when an invalid aggregation stage is passed in | ported |
//! | change-streams-errors: Change Stream should error when _id is projected out | ported |
//! | change-streams-errors: change stream errors on ElectionInProgress | ported |
//! | change-streams-resume-errorLabels: change stream resumes after {HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress, PrimarySteppedDown, ExceededTimeLimit, SocketException, NotWritablePrimary, InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary, StaleShardVersion, StaleEpoch, RetryChangeStream, FailedToSatisfyReadPreference} (16) | ported (one test over the codes) |
//! | change-streams-resume-errorLabels: change stream resumes if error contains ResumableChangeStreamError | ported |
//! | change-streams-resume-errorLabels: change stream does not resume if error does not contain ResumableChangeStreamError | ported |
//! | change-streams-resume-allowlist: change stream resumes after a network error | ported |
//! | change-streams-resume-allowlist: change stream resumes after CursorNotFound | ported |
//! | change-streams-resume-allowlist: the 4.2-only scenarios (resume on an unlabelled allow-listed code) | left out: need a 4.2 server; the Rust driver 3.x requires wire version 9 (4.4) |
//! | change-streams-showExpandedEvents: when provided, showExpandedEvents is sent as a part of the aggregate command | ported |
//! | change-streams-showExpandedEvents: when omitted, showExpandedEvents is not sent as a part of the aggregate command | ported |
//! | change-streams-showExpandedEvents: when showExpandedEvents is true, new fields on change stream events are handled appropriately | ported |
//! | change-streams-showExpandedEvents: when showExpandedEvents is true, createIndex events are reported | ported |
//! | change-streams-showExpandedEvents: when showExpandedEvents is true, dropIndexes events are reported | ported |
//! | change-streams-showExpandedEvents: when showExpandedEvents is true, create events are reported | ported |
//! | change-streams-showExpandedEvents: when showExpandedEvents is true, modify events are reported | ported |
//! | change-streams-showExpandedEvents: when showExpandedEvents is true, shardCollection events are reported | left out: needs a sharded cluster |
//! | change-streams-pre_and_post_images: all 10 scenarios (fullDocument whenAvailable/required, fullDocumentBeforeChange whenAvailable/required/off, with the option enabled and disabled) | ported |
//! | change-streams-disambiguatedPaths: all 3 scenarios | ported |
//! | change-streams-clusterTime: clusterTime is present | ported |
//! | change-streams-commitTimestamp, change-streams-nsType | left out: need server versions the simulator does not claim (8.x) |

use std::time::Duration;

use bson::{Bson, Document};
use mongodb::change_stream::ChangeStream;
use mongodb::{Client, Collection};

use super::try_next_event;
use crate::support::mongo::TestMongo;

const WAIT: Duration = Duration::from_secs(5);

// ---- the unified format's matching rules ----------------------------------------------

fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::String(_) => "string",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::Double(_) => "double",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::ObjectId(_) => "objectId",
        Bson::DateTime(_) => "date",
        Bson::Timestamp(_) => "timestamp",
        Bson::Binary(_) => "binData",
        _ => "other",
    }
}

fn number(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(n) => Some(*n as f64),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

/// Does `actual` match `expected` (unified test format)? Extra fields are allowed at the
/// root only (everywhere when `lenient`).
fn check(expected: &Bson, actual: Option<&Bson>, root: bool, path: &str) -> Result<(), String> {
    check_in(expected, actual, root, false, path)
}

fn check_in(
    expected: &Bson,
    actual: Option<&Bson>,
    root: bool,
    lenient: bool,
    path: &str,
) -> Result<(), String> {
    let root = root || lenient;
    if let Bson::Document(e) = expected
        && let Some((op, arg)) = e.iter().next()
        && op.starts_with("$$")
    {
        return match op.as_str() {
            "$$exists" => (actual.is_some() == arg.as_bool().unwrap_or(true))
                .then_some(())
                .ok_or(format!("{path}: $$exists {arg} but got {actual:?}")),
            "$$type" => {
                let names: Vec<&str> = match arg {
                    Bson::Array(a) => a.iter().filter_map(Bson::as_str).collect(),
                    other => other.as_str().into_iter().collect(),
                };
                let t = actual.map(type_name).unwrap_or("missing");
                names
                    .contains(&t)
                    .then_some(())
                    .ok_or(format!("{path}: $$type {names:?} but got {t}"))
            }
            "$$unsetOrMatches" => match actual {
                None => Ok(()),
                Some(_) => check_in(arg, actual, false, lenient, path),
            },
            other => Err(format!(
                "{path}: operator {other} not supported by this port"
            )),
        };
    }
    let Some(actual) = actual else {
        return Err(format!("{path}: missing, expected {expected}"));
    };
    match (expected, actual) {
        (Bson::Document(e), Bson::Document(a)) => {
            for (k, v) in e {
                check_in(v, a.get(k), false, lenient, &format!("{path}.{k}"))?;
            }
            if !root && let Some(k) = a.keys().find(|k| !e.contains_key(*k)) {
                return Err(format!("{path}: unexpected field {k} in {a}"));
            }
            Ok(())
        }
        (Bson::Array(e), Bson::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).enumerate().try_for_each(|(i, (x, y))| {
                check_in(x, Some(y), false, lenient, &format!("{path}.{i}"))
            })
        }
        (e, a) if number(e).is_some() && number(e) == number(a) => Ok(()),
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

#[track_caller]
fn assert_result(actual: &Document, expected: Document) {
    if let Err(e) = check(
        &Bson::Document(expected),
        Some(&Bson::Document(actual.clone())),
        true,
        "",
    ) {
        panic!("{e}\nactual: {actual}");
    }
}

/// `expectEvents` with `ignoreExtraEvents`: the expected commands appear in this order in
/// the simulator's command log (skipped on a real server). Extra fields are allowed at any
/// level: the Rust driver also copies options such as `comment` into `$changeStream`.
fn expect_commands(m: &TestMongo, expected: &[Document]) {
    let Some(sim) = m.sim() else {
        eprintln!("SKIP: command expectations (need the simulator's command log)");
        return;
    };
    let log = sim.command_log();
    let mut it = log.iter();
    for e in expected {
        let want = Bson::Document(e.clone());
        let found =
            it.any(|c| check_in(&want, Some(&Bson::Document(c.clone())), true, true, "").is_ok());
        assert!(found, "command {e} not found in order in {log:#?}");
    }
}

// ---- entities --------------------------------------------------------------------------

struct Spec {
    m: TestMongo,
}

impl Spec {
    /// initialData: an empty `database0.collection0`.
    async fn start() -> Spec {
        let m = TestMongo::start().await;
        let _ = m.db().collection::<Document>("collection0").drop().await;
        m.db().create_collection("collection0").await.unwrap();
        Spec { m }
    }
    fn db0(&self) -> String {
        self.m.db_name().to_string()
    }
    fn db1(&self) -> String {
        format!("{}_1", self.m.db_name())
    }
    fn client(&self) -> &Client {
        self.m.client()
    }
    fn coll(&self, db: &str, coll: &str) -> Collection<Document> {
        self.client().database(db).collection(coll)
    }
    fn coll0(&self) -> Collection<Document> {
        self.coll(&self.db0(), "collection0")
    }
    async fn fail_point(&self, cmd: Document) {
        self.client()
            .database("admin")
            .run_command(cmd)
            .await
            .expect("configureFailPoint");
    }
}

impl Drop for Spec {
    fn drop(&mut self) {
        if self.m.sim().is_none() {
            let c = self.client().clone();
            let db1 = self.db1();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        let _ = c.database(&db1).drop().await;
                    });
                }
            })
            .join();
        }
    }
}

async fn watch(c: &Collection<Document>, pipeline: Vec<Document>) -> ChangeStream<Document> {
    c.watch()
        .pipeline(pipeline)
        .max_await_time(Duration::from_millis(100))
        .await
        .expect("createChangeStream")
        .with_type::<Document>()
}

/// iterateUntilDocumentOrError expecting a document.
async fn iterate(s: &mut ChangeStream<Document>) -> Document {
    match try_next_event(s, WAIT).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("no change event within {WAIT:?}"),
        Err(e) => panic!("change stream error: {e}"),
    }
}

/// iterateUntilDocumentOrError expecting an error.
async fn iterate_error(s: &mut ChangeStream<Document>) -> mongodb::error::Error {
    match try_next_event(s, WAIT).await {
        Err(e) => e,
        Ok(d) => panic!("expected an error, got {d:?}"),
    }
}

fn labels(e: &mongodb::error::Error) -> Vec<String> {
    e.labels().iter().cloned().collect()
}

mod change_streams;
mod expanded_and_images;
mod resume_and_errors;
