//! `ember eval niah`: needle-in-a-haystack retrieval accuracy of a trained model on a grid of
//! lengths × depths (or on its recipe's `[data.niah]` test segments), as a Markdown grid.
//!
//! A checkpoint trained on any synthetic task can be tested (its recipe has `[data.niah]` or
//! `[data.mqar]`, or even text): the NIAH vocabulary is `[data.niah].vocab_size`, else the
//! model's, and must fit in the model's vocabulary (`ember_data::niah` defines the task).
use crate::generate::load_model;
use crate::recipe::Recipe;
use crate::trainer::evaluate_segments;
use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use ember_data::niah::{NiahConfig, NiahDataset, NiahSegmentConfig};
use ember_data::synthetic::Split;
use ember_models::Lm;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Depths of a grid when only lengths are given.
pub const DEFAULT_DEPTHS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Examples per grid cell when not given.
pub const DEFAULT_EXAMPLES: usize = 200;

/// Accuracy on one test segment: one cell of the grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NiahResult {
    pub seq_len: usize,
    /// Fixed depth of the needles, or `None` for uniformly random depths.
    pub depth: Option<f64>,
    pub needles: usize,
    pub examples: usize,
    /// Mean over examples of the share of its queries answered correctly (argmax over the
    /// vocabulary); with one needle, the share of examples whose value is retrieved.
    pub accuracy: f64,
    /// Cross-entropy over the query positions.
    pub loss: f64,
}

/// Evaluates `model` on every segment of the NIAH test set `test` (for a recipe, its
/// `NiahConfig::dataset(Split::Test, ...)`: the examples its training validated on). With
/// `progress`, a line per segment goes to stderr as it finishes.
pub fn evaluate_niah<B: Backend>(model: &Lm<B>, test: &NiahDataset, batch_size: usize, progress: bool, device: &B::Device) -> Vec<NiahResult> {
    let result = |s: usize, accuracy: f64, loss: f64| {
        let segment = &test.segments[s];
        NiahResult { seq_len: segment.spec.seq_len, depth: segment.spec.depth, needles: segment.spec.needles, examples: segment.examples, accuracy, loss }
    };
    let evals = evaluate_segments(model, test, batch_size, device, |s, eval| {
        if progress {
            let r = result(s, eval.accuracy, eval.loss);
            eprintln!("  L {:>6}  depth {:>6}  needles {}  accuracy {:.4}  ({} examples)", r.seq_len, depth_label(r.depth), r.needles, r.accuracy, r.examples);
        }
    });
    evals.into_iter().enumerate().map(|(s, eval)| result(s, eval.accuracy, eval.loss)).collect()
}

/// What `ember eval niah --checkpoint` tests.
#[derive(Clone, Debug, Default)]
pub struct NiahOptions {
    /// Grid lengths; empty with `depths` empty: the recipe's test segments. Empty with `depths`
    /// given: `data.seq_len`.
    pub lengths: Vec<usize>,
    /// Grid depths in `[0, 1]`; empty with `lengths` given: [`DEFAULT_DEPTHS`].
    pub depths: Vec<f64>,
    /// Needles per example (grid cells default to 1; replaces the recipe segments' own).
    pub needles: Option<usize>,
    /// Examples per grid cell (default [`DEFAULT_EXAMPLES`]; replaces the recipe segments' own).
    pub examples: Option<usize>,
    /// The task vocabulary (default `[data.niah].vocab_size`, else `model.vocab_size`).
    pub vocab_size: Option<usize>,
    /// A line per cell on stderr as it finishes.
    pub progress: bool,
}

/// What a checkpoint was tested on, and how it did.
#[derive(Clone, Debug)]
pub struct NiahReport {
    pub recipe: Recipe,
    /// The NIAH vocabulary used.
    pub vocab_size: usize,
    pub results: Vec<NiahResult>,
}

/// A checkpoint's NIAH results: on the grid `opts` describes, or on its recipe's
/// `[data.niah].test` segments.
pub fn evaluate_checkpoint<B: Backend>(dir: &Path, opts: &NiahOptions, batch_size: usize, device: &B::Device) -> Result<NiahReport> {
    let (model, recipe, ckpt) = load_model::<B>(dir, device)?;
    let model_vocab = recipe.model.vocab_size;
    let mut niah = recipe.data.niah.clone().unwrap_or(NiahConfig { vocab_size: None, seed: None, train: Vec::new(), test: Vec::new() });
    if opts.vocab_size.is_some() {
        niah.vocab_size = opts.vocab_size;
    }
    let vocab_size = niah.vocab(model_vocab);
    if vocab_size > model_vocab {
        bail!("the NIAH vocabulary ({vocab_size} tokens) does not fit the model of {} (model.vocab_size = {model_vocab}); give a smaller --vocab-size", ckpt.display());
    }
    let grid = !opts.lengths.is_empty() || !opts.depths.is_empty();
    if grid {
        let lengths = if opts.lengths.is_empty() { vec![recipe.data.seq_len] } else { opts.lengths.clone() };
        let depths = if opts.depths.is_empty() { DEFAULT_DEPTHS.to_vec() } else { opts.depths.clone() };
        let cell = |seq_len: usize, depth: f64| NiahSegmentConfig {
            examples: opts.examples.unwrap_or(DEFAULT_EXAMPLES),
            needles: opts.needles.unwrap_or(1),
            seq_len: Some(seq_len),
            depth: Some(depth),
        };
        niah.test = depths.iter().flat_map(|&d| lengths.iter().map(move |&l| cell(l, d))).collect();
    } else {
        if niah.test.is_empty() {
            let why = match recipe.data.niah {
                Some(_) => "its recipe has no data.niah.test segments",
                None => "its recipe has no [data.niah] section",
            };
            bail!("{}: {why}; give --lengths and/or --depths for a grid", ckpt.display());
        }
        for s in &mut niah.test {
            s.examples = opts.examples.unwrap_or(s.examples);
            s.needles = opts.needles.unwrap_or(s.needles);
        }
    }
    niah.validate_test(recipe.data.seq_len, model_vocab).map_err(|(key, message)| {
        let at = key.strip_prefix("test[").and_then(|k| k.split(']').next()).and_then(|i| i.parse::<usize>().ok());
        let cell = at.and_then(|i| niah.test.get(i)).map(|s| {
            let depth = depth_label(s.depth);
            format!(" (seq_len {}, depth {depth}, {} needles)", s.seq_len.unwrap_or(recipe.data.seq_len), s.needles)
        });
        let field = key.rsplit('.').next().unwrap_or(&key);
        match (grid, field) {
            (_, "vocab_size") => anyhow::anyhow!("NIAH vocabulary {vocab_size}: {message}"),
            (true, _) => anyhow::anyhow!("grid cell{}: {field} {message}", cell.unwrap_or_default()),
            (false, _) => anyhow::anyhow!("test set: data.niah.{key}{}: {message}", cell.unwrap_or_default()),
        }
    })?;
    let test = niah.dataset(Split::Test, recipe.data.seq_len, model_vocab, recipe.train.seed);
    let results = evaluate_niah(&model, &test, batch_size, opts.progress, device);
    Ok(NiahReport { recipe, vocab_size, results })
}

/// A depth as the grid shows it: `0.25`, or `random`.
pub fn depth_label(depth: Option<f64>) -> String {
    match depth {
        Some(d) => format!("{d:.2}"),
        None => "random".into(),
    }
}

/// The results as a Markdown grid of accuracy: one row per depth (random depths last; rows are
/// per needle count too when results have other counts than 1), one column per length.
pub fn grid_table(results: &[NiahResult]) -> String {
    let mut lengths: Vec<usize> = results.iter().map(|r| r.seq_len).collect();
    lengths.sort();
    lengths.dedup();
    // Rows: (needles, depth), random depth after the fixed ones.
    let row_key = |r: &NiahResult| (r.needles, r.depth.is_none(), r.depth.unwrap_or(0.0));
    let mut rows: Vec<(usize, bool, f64)> = results.iter().map(row_key).collect();
    rows.sort_by(|a, b| a.partial_cmp(b).expect("depths are numbers"));
    rows.dedup();
    let needles_column = rows.iter().any(|r| r.0 != 1);
    let mut t = String::from(if needles_column { "| needles | depth \\ length |" } else { "| depth \\ length |" });
    for l in &lengths {
        let _ = write!(t, " {l} |");
    }
    t.push_str(if needles_column { "\n|---:|---:|" } else { "\n|---:|" });
    t.push_str(&"---:|".repeat(lengths.len()));
    t.push('\n');
    for &(needles, random, depth) in &rows {
        if needles_column {
            let _ = write!(t, "| {needles} ");
        }
        let _ = write!(t, "| {} |", depth_label((!random).then_some(depth)));
        for &l in &lengths {
            match results.iter().find(|r| r.seq_len == l && row_key(r) == (needles, random, depth)) {
                Some(r) => {
                    let _ = write!(t, " {:.3} |", r.accuracy);
                }
                None => t.push_str(" - |"),
            }
        }
        t.push('\n');
    }
    t
}
