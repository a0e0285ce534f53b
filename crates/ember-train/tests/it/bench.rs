//! `ember bench`: a tiny grid point of every mixer and op times, an oversized point is skipped
//! without being attempted, and a training step is timed with its peak memory.
use burn::backend::{Autodiff, NdArray};
use ember_layers::mixer::KINDS;
use ember_ops::precision::Precision;
use ember_train::bench::ops::{self, Level, OpsOptions, OpsRow, Shape};
use ember_train::bench::{train_steps, MemoryProbe, TrainBenchOptions};
use ember_train::recipe::Recipe;
use std::path::{Path, PathBuf};

type B = Autodiff<NdArray<f32>>;

const GIB: f64 = (1u64 << 30) as f64;

fn options(level: Level) -> OpsOptions {
    OpsOptions { level, kinds: None, form: None, mixer_sets: Vec::new(), precision: Precision::F32, warmup: 1, reps: 2, max_mem_bytes: 16.0 * GIB, kernels: Default::default(), compare: false }
}

fn assert_timed(rows: &[OpsRow]) {
    for row in rows {
        assert!(row.skipped.is_none(), "{}", row.line());
        for value in [row.fwd_ms, row.fwd_bwd_ms, row.tokens_per_sec] {
            assert!(value.is_some_and(|v| v.is_finite() && v > 0.0), "{}", row.line());
        }
    }
}

#[test]
fn a_tiny_point_times_every_mixer_and_every_op() {
    let shapes = [Shape { batch: 1, seq_len: 24, heads: 2, head_dim: 8 }];
    let device = Default::default();
    let mixers = ops::run::<B>(&options(Level::Mixer), &shapes, &device, |_| {}).unwrap();
    let names: Vec<&str> = mixers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, KINDS);
    assert_timed(&mixers);

    let ops = ops::run::<B>(&options(Level::Op), &shapes, &device, |_| {}).unwrap();
    let cases: Vec<String> = ops.iter().map(|r| format!("{} {}", r.name, r.form)).collect();
    assert_eq!(
        cases,
        [
            "softmax_attention parallel",
            "linear_attention parallel",
            "linear_attention chunked",
            "based_taylor parallel",
            "based_taylor chunked",
            "gla parallel",
            "gla chunked",
            "decay_per_head parallel",
            "decay_per_head chunked",
        ]
    );
    assert_timed(&ops);
}

#[test]
fn a_point_over_the_memory_limit_is_skipped_not_attempted() {
    // fla's last point: softmax attention would materialise 2·16·32768² scores (128 GiB in f32).
    let huge = Shape { batch: 2, seq_len: 32768, heads: 16, head_dim: 64 };
    let opts = OpsOptions { kinds: Some(vec!["softmax_attention".into()]), ..options(Level::Op) };
    let started = std::time::Instant::now();
    let rows = ops::run::<B>(&opts, &[huge], &Default::default(), |_| {}).unwrap();
    assert!(started.elapsed().as_secs() < 5);
    let why = rows[0].skipped.as_deref().unwrap();
    assert!(why.starts_with("skipped: needs ~") && rows[0].est_mem_gib > 128.0, "{why}");
    assert!(rows[0].fwd_ms.is_none());
}

#[test]
fn bf16_on_ndarray_is_refused_up_front() {
    let opts = OpsOptions { precision: Precision::Bf16, ..options(Level::Op) };
    let shapes = [Shape { batch: 1, seq_len: 8, heads: 1, head_dim: 8 }];
    let err = ops::run::<B>(&opts, &shapes, &Default::default(), |_| {}).err().unwrap().to_string();
    assert!(err.contains("ndarray") && err.contains("cannot compute in bf16"), "{err}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[test]
fn a_training_step_is_timed_with_its_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo();
    let sets = [
        "model.d_model=64".to_string(),
        "data.seq_len=32".into(),
        "train.batch_size=2".into(),
        "optim.grad_accum=2".into(),
        format!("data.cache_dir={:?}", dir.path().display().to_string()),
        format!("data.tokenizer={:?}", root.join("data/tokenizer.json").display().to_string()),
        format!("data.train={:?}", root.join("data/corpus/valid.jsonl").display().to_string()),
    ];
    let recipe = Recipe::load(&root.join("recipes/based-tiny.toml"), &sets).unwrap();
    let opts = TrainBenchOptions { steps: 2, warmup: 1, precision: Precision::F32 };
    let mut memory = MemoryProbe::process_peak_rss();
    let result = train_steps::<B>(&recipe, &opts, &mut memory, &Default::default()).unwrap();
    assert_eq!(result.tokens_per_step, 2 * 32 * 2);
    assert!(result.step_ms > 0.0 && result.tokens_per_sec > 0.0);
    // Training counts about 3× the forward FLOPs; 6·N leaves out attention, so the two differ.
    assert!(result.counted_flops_per_sec > 0.0 && result.model_flops_per_sec > 0.0);
    assert!(memory.peak_bytes().unwrap() > 1 << 20, "{}", memory.describe());
}
