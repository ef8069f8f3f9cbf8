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
fn unbuilt_subcommands_say_so_and_fail() {
    let out = cdc_bin()
        .args(["verify", "--pipeline", "pipeline/paving.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify must not pretend to work");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not available yet"));
}
