//! NIAH as a recipe data source: recipe checks, training on it (loss falls, exact resume), the
//! checkpoint evaluation on a grid of lengths × depths or on the recipe's test set, NIAH on an
//! MQAR-trained checkpoint, and the grid table.
use burn::backend::{Autodiff, NdArray};
use ember_train::niah::{evaluate_checkpoint, grid_table, NiahOptions, NiahResult};
use ember_train::recipe::Recipe;
use ember_train::trainer::{train, TrainOptions};
use std::path::Path;

type B = Autodiff<NdArray<f32>>;
type I = NdArray<f32>;

/// A tiny NIAH recipe: conv + attention, vocabulary 64 (keys 1..16, values 16..32, filler
/// 32..64), trained at T = 32 with random depths.
fn recipe_text(name: &str, out: &Path) -> String {
    format!(
        r#"
[model]
vocab_size = 64
d_model = 32
n_layers = 2

[model.mlp]
kind = "none"

[model.mixers.conv]
kind = "base_conv"
kernel_size = 3

[model.mixers.mixer]
kind = "attention"
heads = 2

[model.schedule]
default = "conv"
at.mixer = [1]

[data]
seq_len = 32

[data.niah]
vocab_size = 64
train = [{{ examples = 4000 }}, {{ needles = 2, seq_len = 16, examples = 2000 }}]
test = [{{ examples = 32 }}, {{ examples = 32, depth = 0.5 }}, {{ examples = 32, needles = 2, seq_len = 48 }}]

[optim]
lr = 1e-2
warmup_steps = 5
weight_decay = 0.0

[train]
name = "{name}"
out_dir = {out:?}
batch_size = 32
steps = 60
eval_interval = 30
eval_batches = 100
checkpoint_interval = 1000
seed = 5

[log]
samples = 0
progress = false
"#
    )
}

fn recipe(dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    let text = recipe_text(name, &dir.join(name));
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Recipe::from_str(&text, &dir.join(format!("{name}.toml")), &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

#[test]
fn recipe_mistakes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = recipe_text("r", dir.path());
    let path = dir.path().join("r.toml");
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Recipe::from_str(&text, &path, &sets).unwrap_err()
    };
    let e = err(&["data.niah.test=[{ examples = 5 }, { examples = 5, depth = 1.5 }]"]);
    assert_eq!(e.key(), Some("data.niah.test[1].depth"), "{e}");
    let e = err(&["data.niah.train=[{ examples = 5 }, { examples = 5, needles = 0 }]"]);
    assert_eq!(e.key(), Some("data.niah.train[1].needles"), "{e}");
    let e = err(&["data.niah.train=[{ examples = 5, seq_len = 3 }]"]);
    assert_eq!(e.key(), Some("data.niah.train[0].seq_len"), "{e}");
    let e = err(&["data.niah.test=[{ examples = 0 }]"]);
    assert_eq!(e.key(), Some("data.niah.test[0].examples"), "{e}");
    let e = err(&["data.niah.vocab_size=4"]);
    assert_eq!(e.key(), Some("data.niah.vocab_size"), "{e}");
    let e = err(&["data.niah.vocab_size=128"]);
    assert_eq!(e.key(), Some("model.vocab_size"), "{e}");
    let e = err(&["data.tokenizer=\"tok.json\""]);
    assert_eq!(e.key(), Some("data.tokenizer"), "{e}");
    assert!(e.to_string().contains("[data.niah]"), "{e}");
    let e = err(&["data.mqar.train=[{ pairs = 2, examples = 10 }]"]);
    assert_eq!(e.key(), Some("data.niah"), "{e}");
    assert!(e.to_string().contains("one synthetic task"), "{e}");
    let e = err(&["data.niah.depth=0.5"]);
    assert!(e.to_string().contains("depth"), "{e}");
    // The vocabulary defaults to the model's.
    let text = text.replace("[data.niah]\nvocab_size = 64\n", "[data.niah]\n");
    let r = Recipe::from_str(&text, &path, &[]).unwrap();
    assert_eq!(r.data.niah.as_ref().unwrap().vocab(r.model.vocab_size), 64);
}

#[test]
fn niah_trains_resumes_exactly_and_evaluates_on_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let r = recipe(dir.path(), "whole", &[]);
    let report = train::<B>(&r, &quiet(), &device).unwrap();
    let losses: Vec<f64> = report.losses.iter().map(|&(_, l)| l).collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 10..]));
    eprintln!("NIAH training loss {first:.3} → {last:.3}; validation accuracy {:?}", report.val_accuracies);
    // An untrained model is near ln 64 ≈ 4.16; anything learned about the values shows.
    assert!(last < first - 0.5, "loss {first} → {last}");
    assert!(report.val_accuracies.iter().all(|&(_, a)| (0.0..=1.0).contains(&a)));

    // The checkpoint on a grid: one cell per (depth, length), depth-major.
    let opts = NiahOptions { lengths: vec![32, 48], depths: vec![0.0, 0.5, 1.0], examples: Some(16), ..Default::default() };
    let grid = evaluate_checkpoint::<I>(&r.train.out_dir, &opts, 8, &device).unwrap();
    assert_eq!(grid.vocab_size, 64);
    let cells: Vec<(Option<f64>, usize, usize, usize)> = grid.results.iter().map(|c| (c.depth, c.seq_len, c.needles, c.examples)).collect();
    let mut expected = Vec::new();
    for depth in [0.0, 0.5, 1.0] {
        for seq_len in [32, 48] {
            expected.push((Some(depth), seq_len, 1, 16));
        }
    }
    assert_eq!(cells, expected);
    assert!(grid.results.iter().all(|c| (0.0..=1.0).contains(&c.accuracy) && c.loss.is_finite()), "{:?}", grid.results);
    let table = grid_table(&grid.results);
    assert_eq!(table.lines().count(), 2 + 3, "{table}");
    assert!(table.lines().next().unwrap().ends_with("| 32 | 48 |"), "{table}");

    // Without a grid: the recipe's test set, the examples the last validation saw (all of them,
    // in the same batches), so the mean of its three equal-sized segments is that accuracy.
    let test = evaluate_checkpoint::<I>(&r.train.out_dir, &NiahOptions::default(), r.train.batch_size, &device).unwrap();
    let segments: Vec<(usize, Option<f64>, usize)> = test.results.iter().map(|c| (c.seq_len, c.depth, c.needles)).collect();
    assert_eq!(segments, [(32, None, 1), (32, Some(0.5), 1), (48, None, 2)]);
    let mean_accuracy = test.results.iter().map(|c| c.accuracy).sum::<f64>() / 3.0;
    let last_val = report.val_accuracies.last().unwrap().1;
    assert!((mean_accuracy - last_val).abs() < 1e-9, "{mean_accuracy} vs {last_val}");
    // Overriding the segments' examples and needles.
    let opts = NiahOptions { examples: Some(4), needles: Some(3), ..Default::default() };
    let test = evaluate_checkpoint::<I>(&r.train.out_dir, &opts, 8, &device).unwrap();
    assert!(test.results.iter().all(|c| (c.examples, c.needles) == (4, 3)));
    // A grid cell that cannot hold its needles is refused, naming the field.
    let opts = NiahOptions { lengths: vec![6], needles: Some(2), ..Default::default() };
    let e = evaluate_checkpoint::<I>(&r.train.out_dir, &opts, 8, &device).unwrap_err().to_string();
    assert!(e.contains("seq_len"), "{e}");

    // 20 steps, stopped at 8 and resumed, equal 20 straight steps.
    let sets = ["train.steps=20", "train.eval_interval=10"];
    let straight = train::<B>(&recipe(dir.path(), "straight", &sets), &quiet(), &device).unwrap();
    let parts = recipe(dir.path(), "parts", &sets);
    let first = train::<B>(&parts, &TrainOptions { stop_after: Some(8), ..quiet() }, &device).unwrap();
    let second = train::<B>(&parts, &TrainOptions { resume: Some(parts.train.out_dir.clone()), ..quiet() }, &device).unwrap();
    let resumed: Vec<_> = first.losses.iter().chain(&second.losses).cloned().collect();
    assert_eq!(resumed, straight.losses);
}

#[test]
fn an_mqar_checkpoint_is_tested_on_niah_within_its_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    // The NIAH recipe turned into an MQAR one: same model, vocabulary 64.
    let text = recipe_text("mqar", &dir.path().join("mqar"));
    let (start, end) = (text.find("[data.niah]").unwrap(), text.find("[optim]").unwrap());
    let mqar = "[data.mqar]\nvocab_size = 64\ntrain = [{ pairs = 2, examples = 100 }]\ntest = [{ pairs = 2, examples = 8 }]\n\n";
    let text = format!("{}{mqar}{}", &text[..start], &text[end..]);
    let r = Recipe::from_str(&text, &dir.path().join("mqar.toml"), &["train.steps=2".into(), "optim.warmup_steps=1".into()]).unwrap();
    train::<B>(&r, &quiet(), &device).unwrap();
    let opts = NiahOptions { lengths: vec![32], depths: vec![0.5], examples: Some(8), ..Default::default() };
    let report = evaluate_checkpoint::<I>(&r.train.out_dir, &opts, 8, &device).unwrap();
    assert_eq!(report.vocab_size, 64, "the model's vocabulary");
    assert_eq!(report.results.len(), 1);
    assert!((0.0..=1.0).contains(&report.results[0].accuracy));
    // A smaller NIAH vocabulary fits; a larger one does not.
    let small = NiahOptions { vocab_size: Some(32), ..opts.clone() };
    assert_eq!(evaluate_checkpoint::<I>(&r.train.out_dir, &small, 8, &device).unwrap().vocab_size, 32);
    let large = NiahOptions { vocab_size: Some(128), ..opts };
    let e = evaluate_checkpoint::<I>(&r.train.out_dir, &large, 8, &device).unwrap_err().to_string();
    assert!(e.contains("128") && e.contains("vocab"), "{e}");
    // Without a grid there is nothing to test on.
    let e = evaluate_checkpoint::<I>(&r.train.out_dir, &NiahOptions::default(), 8, &device).unwrap_err().to_string();
    assert!(e.contains("[data.niah]") && e.contains("--lengths"), "{e}");
}

#[test]
fn the_grid_table_has_a_row_per_depth_and_a_column_per_length() {
    let cell = |seq_len, depth, needles, accuracy| NiahResult { seq_len, depth, needles, examples: 10, accuracy, loss: 1.0 };
    let results = [
        cell(256, Some(0.5), 1, 0.25),
        cell(128, None, 1, 0.5),
        cell(128, Some(0.5), 1, 1.0),
        cell(128, Some(0.0), 1, 0.75),
    ];
    let table = grid_table(&results);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines,
        [
            "| depth \\ length | 128 | 256 |",
            "|---:|---:|---:|",
            "| 0.00 | 0.750 | - |",
            "| 0.50 | 1.000 | 0.250 |",
            "| random | 0.500 | - |",
        ]
    );
    // Other needle counts get a column of their own.
    let table = grid_table(&[cell(64, Some(1.0), 4, 0.125), cell(64, Some(1.0), 1, 1.0)]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines, ["| needles | depth \\ length | 64 |", "|---:|---:|---:|", "| 1 | 1.00 | 1.000 |", "| 4 | 1.00 | 0.125 |"]);
}
