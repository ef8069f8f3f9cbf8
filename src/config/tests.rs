use super::*;

const GOOD: &str = r#"
name = "paving"
[mongo]
database = "paving"
collections = { employees = "employee", dailyreports = "daily_report" }
[rabbitmq]
vhost = "bowmark"
[postgres]
database = "bowmark_reports_paving"
"#;

fn parse(text: &str) -> Result<Pipeline, ConfigError> {
    Pipeline::parse(Path::new("p.toml"), text)
}

#[test]
fn defaults_fill_optional_settings() {
    let p = parse(GOOD).unwrap();
    assert_eq!(p.exchange, DEFAULT_EXCHANGE);
    assert_eq!(p.report_timezone, chrono_tz::UTC);
    assert_eq!(p.history_lost, HistoryLostPolicy::Fail);
    assert_eq!(p.entity_of("employees"), Some(Entity::Employee));
}

#[test]
fn misspelled_key_is_named_with_its_path() {
    let err = parse(&GOOD.replace("vhost =", "vhots ="))
        .unwrap_err()
        .to_string();
    assert!(err.contains("p.toml"), "{err}");
    assert!(err.contains("vhots"), "{err}");
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let text = GOOD.replace("vhost = \"bowmark\"", "vhost = \"bowmark");
    let err = parse(&text).unwrap_err().to_string();
    let line = text.lines().position(|l| l.starts_with("vhost")).unwrap() + 1;
    assert!(
        err.starts_with(&format!("p.toml:{line}:")),
        "names the file and line {line}: {err}"
    );
    assert!(err.contains("TOML syntax error"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
}

#[test]
fn unknown_entity_is_named() {
    let err = parse(&GOOD.replace("\"employee\"", "\"employe\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mongo.collections.employees"), "{err}");
}

#[test]
fn bad_timezone_and_policy_are_named() {
    let err = parse(&format!("report_timezone = \"Mars/Base\"\n{GOOD}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("report_timezone"), "{err}");
    let err = parse(&format!("history_lost = \"skip\"\n{GOOD}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("history_lost"), "{err}");
}

#[test]
fn backfill_workers_default_to_two_and_out_of_range_is_named() {
    assert_eq!(parse(GOOD).unwrap().backfill.workers, 2);
    for bad in ["0", "5"] {
        let err = parse(&format!("{GOOD}[backfill]\nworkers = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("backfill.workers"), "{err}");
    }
    let one = parse(&format!("{GOOD}[backfill]\nworkers = 1\n")).unwrap();
    assert_eq!(one.backfill.workers, 1);
}

#[test]
fn environment_wins_and_secrets_stay_hidden() {
    let mut env = BTreeMap::new();
    env.insert("RABBITMQ_VHOST".to_string(), "other".to_string());
    env.insert("POSTGRES_DB".to_string(), "db2".to_string());
    env.insert("POSTGRES_PASSWORD".to_string(), "hunter2".to_string());
    env.insert("RABBITMQ_PASSWORD".to_string(), "rabbit-secret".to_string());
    let s = Settings::resolve(parse(GOOD).unwrap(), &env).unwrap();
    assert_eq!(s.rabbitmq.vhost, "other");
    assert_eq!(s.postgres.database, "db2");
    let dbg = format!("{s:?}");
    assert!(
        !dbg.contains("hunter2") && !dbg.contains("rabbit-secret"),
        "{dbg}"
    );
    assert!(s.rabbitmq.uri().expose().ends_with("/other"));
}

fn with_mongo_uri(uri: &str) -> Result<Settings, ConfigError> {
    let env: BTreeMap<String, String> = [("MONGO_URI".to_string(), uri.to_string())].into();
    Settings::resolve(parse(GOOD).unwrap(), &env)
}

#[test]
fn the_database_mongo_uri_names_must_agree_with_the_file() {
    let uri = "mongodb://user:hunter2@db.example:27017/paving?authSource=admin&replicaSet=rs0";
    assert_eq!(
        with_mongo_uri(uri).unwrap().pipeline.mongo_database,
        "paving"
    );
    let s = with_mongo_uri("mongodb://db.example:27017/?replicaSet=rs0").unwrap();
    assert_eq!(
        s.pipeline.mongo_database, "paving",
        "no database in the URI: the file's"
    );
    let err = with_mongo_uri(&uri.replace("/paving?", "/bowmark?"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mongo.database"), "{err}");
    assert!(
        err.contains("\"paving\"") && err.contains("\"bowmark\""),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let err = with_mongo_uri("mongodb://user:hunter2@db.example:notaport/paving")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MONGO_URI") && !err.contains("hunter2"),
        "{err}"
    );
}
