//! The command line as a user meets it: `validate`, help, and subcommands not built yet.

use crate::support::{cdc_bin, project_root};

#[test]
fn validate_accepts_both_pipeline_files() {
    let out = cdc_bin()
        .args(["validate", "pipeline/paving.toml", "pipeline/concrete.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pipeline/paving.toml: ok"), "{stdout}");
    assert!(stdout.contains("pipeline/concrete.toml: ok"), "{stdout}");
}

#[test]
fn validate_names_a_misspelled_key_and_its_file() {
    // Given the concrete pipeline with `report_timezone` misspelled
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(project_root().join("pipeline/concrete.toml")).unwrap();
    let bad = dir.path().join("concrete.toml");
    std::fs::write(&bad, text.replace("report_timezone =", "report_timzone =")).unwrap();
    // When it is validated
    let out = cdc_bin().arg("validate").arg(&bad).output().unwrap();
    // Then it fails, naming the file and the key
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("report_timzone"), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
}

#[test]
fn validate_names_bad_values_and_missing_sections() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(project_root().join("pipeline/paving.toml")).unwrap();
    let cases = [
        (
            text.replace("\"employee_work\"", "\"employee_works\""),
            "mongo.collections.employeeworks",
        ),
        (
            text.replace("history_lost = \"fail\"", "history_lost = \"ignore\""),
            "history_lost",
        ),
        (
            text.replace("[postgres]\ndatabase = \"bowmark_reports_paving\"", ""),
            "postgres",
        ),
    ];
    for (i, (body, field)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&f, body).unwrap();
        let out = cdc_bin().arg("validate").arg(&f).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} should fail");
        assert!(stderr.contains(field), "case {i}: {stderr}");
    }
}

#[test]
fn verify_help_states_both_checks_its_options_and_exit_codes() {
    let out = cdc_bin().args(["verify", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for words in [
        "exit 0 clean, 1 on drift, 2 on error",
        "Source against mirror",
        "Mirror against star",
        "--from-dump",
        "--no-source",
        "--max-keys",
        "--settle",
        "--json",
    ] {
        assert!(help.contains(words), "{words:?} missing from:\n{help}");
    }
}

#[test]
fn validate_names_the_line_and_column_of_a_toml_syntax_error() {
    // Given the paving pipeline with an unterminated string on the vhost line
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(project_root().join("pipeline/paving.toml")).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("vhost = \"bowmark\""))
        .expect("the vhost line")
        + 1;
    let bad = dir.path().join("paving.toml");
    std::fs::write(
        &bad,
        text.replacen("vhost = \"bowmark\"", "vhost = \"bowmark", 1),
    )
    .unwrap();
    // When it is validated, and when `run` loads it
    for args in [vec!["validate"], vec!["run", "--pipeline"]] {
        let out = cdc_bin()
            .args(&args)
            .arg(&bad)
            .env("CDC_HTTP_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        // Then it fails naming the file, the line and the column
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!("{}:{line}:", bad.display())),
            "{args:?}: names {}:{line}: {stderr}",
            bad.display()
        );
        assert!(stderr.contains("TOML syntax error"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_lists_every_subcommand_and_none_is_unavailable() {
    let out = cdc_bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!help.contains("not available"), "{help}");
    for cmd in [
        "run",
        "backfill",
        "migrate",
        "verify",
        "validate",
        "status",
        "reproject",
        "dlq",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "{cmd} is listed: {help}"
        );
    }
}
