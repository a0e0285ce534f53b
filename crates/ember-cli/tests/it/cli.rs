//! The `ember` binary as a user runs it from the repository root.
use crate::common::*;

#[test]
fn recipe_check_reports_the_based_360m_reference_size() {
    // A bare file name is looked up in recipes/.
    let out = ember(&["recipe", "check", "based-360m.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    let params: u64 = report
        .lines()
        .find(|l| l.starts_with("parameters"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no parameter count in:\n{report}"));
    // BASED's reference configuration is a 360M-parameter model.
    assert!((350_000_000..375_000_000).contains(&params), "{params}");
    assert_eq!(report.matches(" based_linear ").count(), 5, "{report}");
    assert_eq!(report.matches(" attention ").count(), 5, "{report}");
    assert_eq!(report.matches(" base_conv ").count(), 17, "{report}");
}

#[test]
fn threads_flag_is_global_and_zero_is_refused() {
    // `--threads` sits before or after the subcommand; 0 threads is an error naming the flag.
    for args in [&["--threads", "1", "recipe", "check", "attn-tiny.toml"][..], &["recipe", "check", "attn-tiny.toml", "--threads", "2"]] {
        let out = ember(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let out = ember(&["--threads", "0", "recipe", "check", "attn-tiny.toml"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--threads must be at least 1"), "{}", text(&out));
}

#[test]
fn recipe_mistakes_name_file_line_and_key_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let base = std::fs::read_to_string(repo().join("recipes/based-tiny.toml")).unwrap();
    // Replaces the line that starts with `key =` (the recipe must have one).
    let edit = |key: &str, line: &str| {
        let old = base.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap_or_else(|| panic!("no {key} line"));
        base.replace(old, line)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown key", edit("d_model", "d_model = 128\ndmodel = 3"), "dmodel"),
        ("wrong type", edit("lr", "lr = \"fast\""), "optim.lr"),
        ("bad value", edit("batch_size", "batch_size = 0"), "train.batch_size"),
        ("missing file", edit("valid", "valid = \"data/corpus/nope.jsonl\""), "data.valid"),
    ];
    for (what, recipe, key) in cases {
        let path = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, &recipe).unwrap();
        let out = ember(&[
            "train",
            "--recipe",
            path.to_str().unwrap(),
            "--set",
            &format!("train.out_dir={:?}", out_dir.to_str().unwrap()),
        ]);
        let msg = text(&out);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(msg.contains(path.file_name().unwrap().to_str().unwrap()), "{what}: no file name in {msg}");
        assert!(msg.contains(key), "{what}: no key {key} in {msg}");
        if what != "missing file" {
            assert!(msg.contains(".toml:"), "{what}: no line number in {msg}");
        }
        assert!(!out_dir.exists(), "{what}: wrote {}", out_dir.display());
    }
}

#[test]
fn conformance_exits_non_zero_on_a_wrong_reference() {
    let Some(fixtures) = ember_train::conformance::default_fixture_dir() else {
        if in_ci() {
            panic!("fixtures not found");
        }
        eprintln!("SKIPPED: reference fixtures not found");
        return;
    };
    let ok = ember(&["conformance", "--fixtures", fixtures.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("0 failed"), "{}", text(&ok));

    // The same fixture with its expected output perturbed must fail.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures.join("linear_attn.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec(), view.shape().to_vec()))
        .collect();
    for (name, data, _) in owned.iter_mut() {
        if name == "o" {
            for chunk in data.chunks_exact_mut(4) {
                let v = f32::from_le_bytes(chunk.try_into().unwrap()) * 1.01;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, meta.metadata().clone(), &dir.path().join("linear_attn.safetensors")).unwrap();
    std::fs::write(dir.path().join("unknown_op.safetensors"), b"not even safetensors").ok();
    let bad = ember(&["conformance", "--fixtures", dir.path().to_str().unwrap()]);
    assert!(!bad.status.success(), "{}", text(&bad));
}

#[test]
fn data_prepare_and_tokenizer_train_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("docs.jsonl");
    let docs: Vec<String> = (0..40)
        .map(|i| format!("{{\"text\": \"Document {i} talks about ownership, borrowing and lifetimes in Rust.\"}}"))
        .collect();
    std::fs::write(&corpus, docs.join("\n")).unwrap();
    let tok = dir.path().join("tok.json");
    let out = ember(&["tokenizer", "train", "--vocab-size", "300", "--out", tok.to_str().unwrap(), corpus.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let shards = dir.path().join("shards");
    let out = ember(&[
        "data", "prepare", "--tokenizer", tok.to_str().unwrap(), "--out", shards.to_str().unwrap(), corpus.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("40 documents"), "{}", text(&out));
    assert!(shards.join("manifest.json").is_file());

    // A broken line is reported with its path and line number.
    std::fs::write(&corpus, "{\"text\": \"fine\"}\n{\"txt\": \"no text field\"}\n").unwrap();
    let out = ember(&[
        "data", "prepare", "--tokenizer", tok.to_str().unwrap(), "--out", dir.path().join("bad").to_str().unwrap(), corpus.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("docs.jsonl") && text(&out).contains('2'), "{}", text(&out));
}

#[test]
fn train_then_generate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = format!("train.out_dir={:?}", run.to_str().unwrap());
    let cache = format!("data.cache_dir={:?}", dir.path().join("cache").to_str().unwrap());
    let sets = [
        "model.d_model=64", "data.seq_len=32", "train.batch_size=4", "train.steps=4", "optim.warmup_steps=1",
        "train.eval_interval=2", "train.eval_batches=1", "train.checkpoint_interval=2", "log.sample_tokens=8",
    ];
    let mut args = vec!["train", "--recipe", "based-tiny.toml", "--quiet", "--set", &run_s, "--set", &cache];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = ember(&args);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("validation loss") && log.contains("--- sample 1 ---"), "{log}");
    assert!(run.join("metrics.jsonl").is_file());
    assert!(std::fs::read_dir(run.join("tensorboard")).unwrap().count() == 1);

    let out = ember(&["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", "The borrow checker", "--max-tokens", "6"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("tokens/s") && text(&out).contains("recurrent state"), "{}", text(&out));

    // ember's own export layout loads like a checkpoint; BASED has no Hugging Face layout.
    let export = dir.path().join("export");
    let out = ember(&["export", "--checkpoint", run.to_str().unwrap(), "--out", export.to_str().unwrap(), "--format", "ember"]);
    assert!(out.status.success() && text(&out).contains("model.safetensors"), "{}", text(&out));
    let out = ember(&["generate", "--checkpoint", export.to_str().unwrap(), "--prompt", "The", "--max-tokens", "4"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ember(&["export", "--checkpoint", run.to_str().unwrap(), "--out", dir.path().join("hf").to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("Hugging Face layout"), "{}", text(&out));

    let out = ember(&["generate", "--checkpoint", dir.path().join("nothing").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing"), "{}", text(&out));
}

#[test]
fn bench_ops_prints_a_row_per_mixer_and_writes_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ops.jsonl");
    let shape = ["--batch", "1", "--seq", "16", "--heads", "2", "--head-dim", "8", "--warmup", "0", "--reps", "1"];
    let mut args = vec!["bench", "ops", "--device", "cpu", "--json", json.to_str().unwrap()];
    args.extend(shape);
    let out = ember(&args);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("fwd+bwd ms") && log.contains("based_linear") && log.contains("chunked"), "{log}");
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), ember_layers::mixer::KINDS.len(), "{rows:?}");
    assert!(rows.iter().all(|r| r["fwd_bwd_ms"].as_f64().unwrap() > 0.0 && r["seq_len"] == 16));

    // bf16 on ndarray is refused before anything runs, naming the device.
    let mut args = vec!["bench", "ops", "--device", "cpu", "--dtype", "bf16", "--level", "op"];
    args.extend(shape);
    let out = ember(&args);
    assert!(!out.status.success());
    assert!(text(&out).contains("device cpu") && text(&out).contains("cannot compute in bf16"), "{}", text(&out));
}

#[test]
fn eval_niah_prints_a_grid_of_depths_by_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("niah");
    // recipes/niah/attention-tiny.toml shrunk to seconds: vocabulary 64, T = 32, 10 steps.
    let sets = [
        "model.vocab_size=64".to_string(),
        "data.niah.vocab_size=64".into(),
        "model.d_model=32".into(),
        "data.seq_len=32".into(),
        "data.niah.train=[{ needles = 2, examples = 200 }]".into(),
        "data.niah.test=[{ examples = 16 }, { examples = 16, seq_len = 48 }]".into(),
        "train.steps=10".into(),
        "optim.warmup_steps=2".into(),
        "train.eval_interval=5".into(),
        format!("train.out_dir={:?}", run.to_str().unwrap()),
    ];
    let mut args = vec!["train", "--recipe", "recipes/niah/attention-tiny.toml", "--quiet"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = ember(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("accuracy"), "{}", text(&out));
    let ckpt = run.to_str().unwrap();

    let json = dir.path().join("niah.json");
    let grid = ["--lengths", "32,48", "--depths", "0,0.5,1", "--examples", "8"];
    let mut args = vec!["eval", "niah", "--checkpoint", ckpt, "--device", "cpu", "--json", json.to_str().unwrap()];
    args.extend(grid);
    let out = ember(&args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 2 + 3, "{stdout}");
    assert!(table[0].contains("depth") && table[0].ends_with("| 32 | 48 |"), "{stdout}");
    for (row, depth) in table[2..].iter().zip(["0.00", "0.50", "1.00"]) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells[0], depth, "{stdout}");
        for cell in &cells[1..] {
            let accuracy: f64 = cell.parse().unwrap_or_else(|_| panic!("{cell:?} in {stdout}"));
            assert!((0.0..=1.0).contains(&accuracy), "{stdout}");
        }
    }
    // A progress line per cell on stderr.
    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("accuracy").count(), 6, "{}", text(&out));
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = results[0]["results"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    assert!(cells.iter().all(|c| c["examples"] == 8 && c["needles"] == 1));

    // Without a grid: the recipe's test segments (random depths), quietly.
    let out = ember(&["eval", "niah", "--checkpoint", ckpt, "--device", "cpu", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("| depth \\ length | 32 | 48 |") && text(&out).contains("| random |"), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("accuracy"), "{}", text(&out));

    let out = ember(&["eval", "niah", "--checkpoint", ckpt, "--device", "cpu", "--depths", "1.5"]);
    assert!(!out.status.success() && text(&out).contains("depth"), "{}", text(&out));
    let out = ember(&["generate", "--checkpoint", ckpt]);
    assert!(!out.status.success() && text(&out).contains("ember eval niah"), "{}", text(&out));
}
