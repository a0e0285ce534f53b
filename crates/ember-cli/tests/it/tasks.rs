//! MQAR and scaling sweeps from the command line, as a user runs them.
use crate::common::*;
use std::path::Path;

/// recipes/mqar/gla.toml shrunk to seconds: vocab 64, T ≤ 32, 30 steps.
fn tiny_mqar_sets(run: &Path) -> Vec<String> {
    vec![
        "model.vocab_size=64".into(),
        "data.mqar.vocab_size=64".into(),
        "model.d_model=32".into(),
        "data.seq_len=32".into(),
        "data.mqar.train=[{ pairs = 2, seq_len = 16, examples = 200 }, { pairs = 4, examples = 200 }]".into(),
        "data.mqar.test=[{ pairs = 4, examples = 40 }, { pairs = 8, examples = 40 }]".into(),
        "train.steps=30".into(),
        "optim.warmup_steps=3".into(),
        "train.eval_interval=15".into(),
        format!("train.out_dir={:?}", run.to_str().unwrap()),
    ]
}

#[test]
fn mqar_trains_evaluates_and_refuses_to_generate_text() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("gla");
    let sets = tiny_mqar_sets(&run);
    let mut args = vec!["train", "--recipe", "recipes/mqar/gla.toml", "--quiet"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = ember(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("accuracy"), "{}", text(&out));
    assert!(!run.join("checkpoints/step-000030/tokenizer.json").exists());

    let json = dir.path().join("acc.json");
    let out = ember(&["eval", "mqar", "--checkpoint", run.to_str().unwrap(), "--device", "cpu", "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let table = text(&out);
    assert!(table.contains("accuracy") && table.lines().any(|l| l.split_whitespace().take(3).eq(["32", "8", "40"])), "{table}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(results[0]["results"].as_array().unwrap().len(), 2);
    // Other pair counts on request.
    let out = ember(&["eval", "mqar", "--checkpoint", run.to_str().unwrap(), "--device", "cpu", "--pairs", "1,2", "--examples", "10"]);
    assert!(out.status.success() && text(&out).lines().any(|l| l.split_whitespace().take(3).eq(["32", "1", "10"])), "{}", text(&out));

    let out = ember(&["generate", "--checkpoint", run.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ember eval mqar"), "{}", text(&out));
}

#[test]
fn a_sweep_runs_from_its_emitted_script_then_collects_and_fits() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo();
    let data = |p: &str| format!("{:?}", root.join(p).display().to_string());
    let sweep = format!(
        r#"[sweep]
name = "cli"
design = "grid"
out_dir = {out:?}
archs.attention = "{attn}"
shapes = [{{ d_model = 32, n_layers = 1 }}, {{ d_model = 32, n_layers = 2 }}, {{ d_model = 64, n_layers = 2 }}]
tokens = [384, 768]
set = ["data.seq_len=32", "train.batch_size=2", "train.eval_batches=2", "model.mlp.multiple_of=16",
  'data.tokenizer={tok}', 'data.train={train}', 'data.valid={valid}', 'data.cache_dir={cache:?}']
"#,
        out = dir.path().join("out").display().to_string(),
        attn = root.join("recipes/attn-tiny.toml").display(),
        tok = data("data/tokenizer.json"),
        train = data("data/corpus/train.jsonl"),
        valid = data("data/corpus/valid.jsonl"),
        cache = dir.path().join("cache").display().to_string(),
    );
    let path = dir.path().join("cli.toml");
    std::fs::write(&path, sweep).unwrap();
    let recipe = path.to_str().unwrap();

    let script = dir.path().join("sweep.sh");
    let out = ember(&["sweep", "--recipe", recipe, "--emit", "shell", "--script", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("6 runs"), "{}", text(&out));
    let run = std::process::Command::new("bash")
        .arg(&script)
        .env("EMBER", env!("CARGO_BIN_EXE_ember"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));

    let out = ember(&["sweep", "collect", "--recipe", recipe]);
    assert!(out.status.success() && text(&out).contains("6 of 6 runs finished"), "{}", text(&out));
    let csv = std::fs::read_to_string(dir.path().join("out/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");

    // Running the sweep now finds every run finished, collects and fits.
    let out = ember(&["sweep", "--recipe", recipe, "--jobs", "2", "--device", "cpu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("already finished").count(), 6, "{}", text(&out));
    let out = ember(&["sweep", "fit", "--recipe", recipe]);
    assert!(out.status.success(), "{}", text(&out));
    let report = std::fs::read_to_string(dir.path().join("out/report/report.md")).unwrap();
    assert!(report.contains("attention"), "{report}");
}
