use std::fs;

use ember_scaling::{
    load_csv, load_jsonl, load_runs, write_csv, write_jsonl, DataError, RunResult,
};

fn sample_runs() -> Vec<RunResult> {
    let mut labelled = RunResult::new("mamba-small", "mamba", 1.25e7, 2.5e9, 3.4125);
    labelled.budget = Some(2e17);
    vec![
        RunResult::new("tf-small", "transformer", 1.25e7, 2.5e9, 3.51),
        labelled,
        RunResult::new("tf-big", "transformer", 8.1e8, 1.6e10, 2.71),
    ]
}

#[test]
fn csv_and_jsonl_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let runs = sample_runs();
    let csv = dir.path().join("runs.csv");
    let jsonl = dir.path().join("runs.jsonl");
    write_csv(&csv, &runs).unwrap();
    write_jsonl(&jsonl, &runs).unwrap();
    assert_eq!(load_csv(&csv).unwrap(), runs);
    assert_eq!(load_jsonl(&jsonl).unwrap(), runs);
    assert_eq!(load_runs(&csv).unwrap(), runs);
    assert_eq!(load_runs(&jsonl).unwrap(), runs);
}

#[test]
fn csv_ignores_extra_columns_and_fills_missing_flops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.csv");
    fs::write(&path, "name,arch,n_params,tokens,flops,loss,wall_hours\nr1,tf,1e6,1e9,,3.5,1.5\nr2,tf,2e6,1e9,1.3e16,3.2,2\n").unwrap();
    let runs = load_csv(&path).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].flops, 6e15, "6·N·D when flops is empty");
    assert_eq!(runs[1].flops, 1.3e16);
    assert_eq!(runs[1].budget, None);
}

#[test]
fn bad_csv_row_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    fs::write(
        &path,
        "name,arch,n_params,tokens,flops,loss\nr1,tf,1e6,1e9,6e15,3.5\nr2,tf,lots,1e9,6e15,3.2\n",
    )
    .unwrap();
    let err = load_csv(&path).unwrap_err();
    assert!(matches!(err, DataError::BadRow { line: 3, .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("bad.csv") && message.contains("line 3") && message.contains("n_params"),
        "{message}"
    );
}

#[test]
fn bad_jsonl_rows_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let good = r#"{"name":"r1","arch":"tf","n_params":1e6,"tokens":1e9,"loss":3.5}"#;
    fs::write(
        &path,
        format!("{good}\n\n{{\"name\":\"r2\",\"n_params\":1e6}}\n"),
    )
    .unwrap();
    let err = load_jsonl(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl, line 3") && err.contains("tokens"),
        "{err}"
    );

    fs::write(&path, format!("{good}\n{}\n", good.replace("3.5", "-1"))).unwrap();
    let err = load_jsonl(&path).unwrap_err().to_string();
    assert!(
        err.contains("line 2") && err.contains("loss must be a positive"),
        "{err}"
    );
}

#[test]
fn unknown_extension_and_missing_file_are_errors() {
    assert!(matches!(
        load_runs("runs.txt".as_ref()),
        Err(DataError::UnknownFormat { .. })
    ));
    let err = load_runs("/nonexistent/runs.csv".as_ref()).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("/nonexistent/runs.csv"),
        "{err}"
    );
}
