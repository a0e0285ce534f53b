//! `ember eval mqar`: recall accuracy of a trained model on MQAR test segments, and the suite
//! runner that trains every recipe of a directory and tabulates accuracy against state size.
use crate::generate::load_model;
use crate::recipe::Recipe;
use crate::runs::{complete_run, parallel_map, RunAction};
use crate::trainer::evaluate_segments;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_data::mqar::{MqarConfig, MqarSegmentConfig, Split};
use ember_models::Lm;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Accuracy on one test segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentResult {
    pub seq_len: usize,
    pub pairs: usize,
    pub examples: usize,
    /// Mean over examples of the fraction of its queries answered correctly (argmax).
    pub accuracy: f64,
    /// Cross-entropy over the query positions.
    pub loss: f64,
}

/// Evaluates `model` on every segment of the test set that `mqar` defines (for a recipe with
/// `data.seq_len = seq_len` and seed `seed`: the same examples its training validated on).
pub fn evaluate_mqar<B: Backend>(
    model: &Lm<B>,
    mqar: &MqarConfig,
    seq_len: usize,
    seed: u64,
    batch_size: usize,
    device: &B::Device,
) -> Vec<SegmentResult> {
    let test = mqar.dataset(Split::Test, seq_len, seed);
    let evals = evaluate_segments(model, &test, batch_size, device, |_, _| {});
    test.segments
        .iter()
        .zip(evals)
        .map(|(segment, eval)| SegmentResult {
            seq_len: segment.spec.seq_len,
            pairs: segment.spec.pairs,
            examples: segment.examples,
            accuracy: eval.accuracy,
            loss: eval.loss,
        })
        .collect()
}

/// Which test set `ember eval mqar --checkpoint` uses.
#[derive(Clone, Debug, Default)]
pub struct TestOverride {
    /// Replace the recipe's test segments by one per value (with `seq_len` and `examples`).
    pub pairs: Vec<usize>,
    pub seq_len: Option<usize>,
    pub examples: Option<usize>,
}

/// A checkpoint's MQAR results: the recipe's test set, or the one `over` describes.
pub fn evaluate_checkpoint<B: Backend>(
    dir: &Path,
    over: &TestOverride,
    batch_size: usize,
    device: &B::Device,
) -> Result<(Recipe, Vec<SegmentResult>)> {
    let (model, recipe, ckpt) = load_model::<B>(dir, device)?;
    let Some(mut mqar) = recipe.data.mqar.clone() else {
        bail!("{} was not trained on MQAR (its recipe has no [data.mqar]), so there is no task vocabulary to test it on", ckpt.display());
    };
    if !over.pairs.is_empty() {
        let seq_len = over.seq_len.unwrap_or(recipe.data.seq_len);
        let examples = over.examples.unwrap_or(1000);
        mqar.test = over.pairs.iter().map(|&pairs| MqarSegmentConfig { pairs, examples, seq_len: Some(seq_len) }).collect();
    } else if over.seq_len.is_some() || over.examples.is_some() {
        bail!("--seq-len and --examples describe the segments of --pairs; give --pairs too");
    }
    if mqar.test.is_empty() {
        bail!("{}: the recipe has no data.mqar.test segments; name some with --pairs", ckpt.display());
    }
    mqar.validate(recipe.data.seq_len).map_err(|(key, message)| anyhow::anyhow!("test set: {key}: {message}"))?;
    let results = evaluate_mqar(&model, &mqar, recipe.data.seq_len, recipe.train.seed, batch_size, device);
    Ok((recipe, results))
}

/// The accuracy table of one or more models' results, one row per segment.
pub fn results_table(results: &[SegmentResult]) -> String {
    let mut t = format!("{:>8}  {:>6}  {:>8}  {:>9}  {:>8}\n", "seq_len", "pairs", "examples", "accuracy", "loss");
    for r in results {
        let _ = writeln!(t, "{:>8}  {:>6}  {:>8}  {:>9.4}  {:>8.4}", r.seq_len, r.pairs, r.examples, r.accuracy, r.loss);
    }
    t
}

/// One trained suite model and its results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteRow {
    /// The run's name: the recipe file name without `.toml`, then `-dW` and `-lrX` when the
    /// suite sweeps widths or learning rates.
    pub recipe: String,
    /// The recipe file name without `.toml`: rows of one file at one width compete for `best`.
    pub file: String,
    /// Mixer kinds of the model's layers, in order (e.g. `base_conv+gla`).
    pub layers: String,
    pub d_model: usize,
    /// Peak learning rate (`optim.lr`).
    pub lr: f64,
    /// The best run of its recipe file and width: the highest mean accuracy over the test
    /// segments (the first of equals).
    pub best: bool,
    pub params: usize,
    /// Generation state of the whole model per sequence after `seq_len` tokens, in floats (for
    /// softmax attention this is the KV cache, which grows with the sequence).
    pub state_floats: usize,
    pub seq_len: usize,
    pub steps: usize,
    pub stopped_early: bool,
    /// Training time recorded in the checkpoint (all sessions of the run).
    pub train_secs: f64,
    pub results: Vec<SegmentResult>,
}

/// Options of `ember eval mqar --suite`.
#[derive(Clone, Debug, Default)]
pub struct SuiteOptions {
    /// Overrides applied to every recipe (e.g. a device, or a shorter run).
    pub overrides: Vec<String>,
    /// Train each recipe at each of these `model.d_model` values (run `NAME-dW` in
    /// `OUT_DIR-dW`); empty means each recipe's own width, as written.
    pub widths: Vec<usize>,
    /// Train each recipe (at each width) at each of these `optim.lr` values (run `NAME-lrX` in
    /// `OUT_DIR-lrX`); empty means each recipe's own rate.
    pub lrs: Vec<f64>,
    /// Evaluation batch size.
    pub batch_size: usize,
    /// Runs trained at once (threads).
    pub jobs: usize,
    pub quiet: bool,
}

/// Trains each recipe of `recipes` whose run is not finished (resuming an interrupted one,
/// skipping a finished one), `opts.jobs` at a time, then evaluates each newest checkpoint on its
/// test set. Rows come in the order of the recipes (and widths).
pub fn run_suite<B: AutodiffBackend>(recipes: &[PathBuf], opts: &SuiteOptions, device: &B::Device) -> Result<Vec<SuiteRow>>
where
    B::Device: Sync,
{
    let load = |path: &Path, extra: Vec<String>| {
        let overrides: Vec<String> = opts.overrides.iter().cloned().chain(extra).collect();
        Recipe::load(path, &overrides).map_err(|e| anyhow::anyhow!("{e}"))
    };
    // A repeated value would train two runs into one directory at once.
    if let Some(w) = repeated(&opts.widths) {
        bail!("--widths lists {w} twice");
    }
    if let Some(lr) = repeated(&opts.lrs) {
        bail!("--lrs lists {lr:e} twice");
    }
    let mut runs = Vec::new();
    for path in recipes {
        let stem = recipe_name(path);
        let base = load(path, Vec::new())?;
        if base.data.mqar.is_none() {
            bail!("{} has no [data.mqar] section; an MQAR suite holds MQAR recipes only", path.display());
        }
        let widths: Vec<Option<usize>> = if opts.widths.is_empty() { vec![None] } else { opts.widths.iter().copied().map(Some).collect() };
        let lrs: Vec<Option<f64>> = if opts.lrs.is_empty() { vec![None] } else { opts.lrs.iter().copied().map(Some).collect() };
        for &width in &widths {
            for &lr in &lrs {
                if width.is_none() && lr.is_none() {
                    runs.push((stem.clone(), stem.clone(), base.clone()));
                    continue;
                }
                let mut suffix = String::new();
                let mut sets = Vec::new();
                if let Some(w) = width {
                    suffix += &format!("-d{w}");
                    sets.push(format!("model.d_model={w}"));
                }
                if let Some(lr) = lr {
                    // `{:e}` is the shortest exact form: distinct rates never share a run directory.
                    suffix += &format!("-lr{lr:e}");
                    sets.push(format!("optim.lr={lr:e}"));
                }
                let name = format!("{stem}{suffix}");
                sets.push(format!("train.name={name:?}"));
                sets.push(format!("train.out_dir={:?}", format!("{}{suffix}", base.train.out_dir.display())));
                runs.push((stem.clone(), name, load(path, sets)?));
            }
        }
    }
    // Several runs at once share the terminal: progress bars only when one runs at a time.
    let quiet_training = opts.quiet || opts.jobs > 1;
    let mut rows = parallel_map(runs, opts.jobs, |(file, name, recipe)| {
        if !opts.quiet {
            println!("{name}: {} parameters, {} steps, run directory {}", recipe.model.num_params(), recipe.steps(), recipe.train.out_dir.display());
        }
        let started = Instant::now();
        let run = complete_run::<B>(&recipe, quiet_training, device)?;
        let (_, results) = evaluate_checkpoint::<B::InnerBackend>(&run.checkpoint, &TestOverride::default(), opts.batch_size, device)?;
        let seq_len = recipe.data.seq_len;
        let summaries = recipe.model.layer_summaries(seq_len);
        let row = SuiteRow {
            recipe: name,
            file,
            lr: recipe.optim.lr,
            best: false,
            layers: summaries.iter().map(|l| l.kind).collect::<Vec<_>>().join("+"),
            d_model: recipe.model.d_model,
            params: recipe.model.num_params(),
            state_floats: summaries.iter().map(|l| l.state_floats).sum(),
            seq_len,
            steps: run.state.step,
            stopped_early: run.state.step < recipe.steps(),
            train_secs: run.state.elapsed_secs,
            results,
        };
        if !opts.quiet {
            let done = match run.action {
                RunAction::AlreadyFinished => "already trained".to_string(),
                _ => format!("trained in {:.0} s", started.elapsed().as_secs_f64()),
            };
            println!("{}: {done}\n{}", row.recipe, results_table(&row.results));
        }
        Ok(row)
    })?;
    mark_best(&mut rows);
    Ok(rows)
}

/// The rows of an earlier part of a suite, from the `results.jsonl` that part wrote: a long
/// suite run in parts on machines that do not keep the run directories still gets one table.
pub fn read_suite_rows(path: &Path) -> Result<Vec<SuiteRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read suite results {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{} line {}: not a suite result row (results.jsonl of `ember eval mqar --suite`)", path.display(), i + 1))
        })
        .collect()
}

/// The `earlier` rows then `rows`, one per run name (a later row replaces an earlier one: a run
/// trained now replaces an included row, a later included file an earlier one), ordered by recipe
/// file, width and learning rate, with the best learning rate of each recipe and width marked
/// again over all of them.
pub fn merge_rows(rows: Vec<SuiteRow>, earlier: Vec<SuiteRow>) -> Vec<SuiteRow> {
    let mut all: Vec<SuiteRow> = Vec::new();
    for row in earlier.into_iter().chain(rows) {
        all.retain(|r| r.recipe != row.recipe);
        all.push(row);
    }
    all.sort_by(|a, b| (&a.file, a.d_model).cmp(&(&b.file, b.d_model)).then(a.lr.total_cmp(&b.lr)));
    mark_best(&mut all);
    all
}

/// Mean accuracy over a row's test segments: what picks the best learning rate.
pub fn mean_accuracy(row: &SuiteRow) -> f64 {
    row.results.iter().map(|s| s.accuracy).sum::<f64>() / row.results.len().max(1) as f64
}

/// Sets `best` on the row with the highest mean accuracy of each recipe file and width (the
/// first of equals), and clears it on the others.
pub fn mark_best(rows: &mut [SuiteRow]) {
    let means: Vec<f64> = rows.iter().map(mean_accuracy).collect();
    let best: Vec<bool> = (0..rows.len())
        .map(|i| {
            let rivals: Vec<usize> = (0..rows.len()).filter(|&j| rows[j].file == rows[i].file && rows[j].d_model == rows[i].d_model).collect();
            let top = rivals.iter().map(|&j| means[j]).fold(f64::NEG_INFINITY, f64::max);
            rivals.into_iter().find(|&j| means[j] == top) == Some(i)
        })
        .collect();
    for (row, best) in rows.iter_mut().zip(best) {
        row.best = best;
    }
}

/// The recipes of a suite directory (`*.toml`, sorted by name).
pub fn suite_recipes(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read suite directory {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} holds no .toml recipes", dir.display());
    }
    Ok(paths)
}

/// The first value of `values` that an earlier one equals.
fn repeated<T: PartialEq>(values: &[T]) -> Option<&T> {
    values.iter().enumerate().find(|(i, v)| values[..*i].contains(v)).map(|(_, v)| v)
}

/// A suite recipe's name: its file name without `.toml`.
fn recipe_name(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

/// The recipes among `recipes` whose file names (without `.toml`) are listed in `only`, in the
/// suite's order; all of them when `only` is empty. A name that matches no recipe is an error,
/// so a typo never silently drops a mixer from a suite run in parts.
pub fn select_recipes(recipes: Vec<PathBuf>, only: &[String]) -> Result<Vec<PathBuf>> {
    if only.is_empty() {
        return Ok(recipes);
    }
    if let Some(missing) = only.iter().find(|name| !recipes.iter().any(|p| recipe_name(p) == **name)) {
        let known: Vec<String> = recipes.iter().map(|p| recipe_name(p)).collect();
        bail!("--only names {missing:?}, which is not a recipe of the suite (it has: {})", known.join(", "));
    }
    Ok(recipes.into_iter().filter(|p| only.contains(&recipe_name(p))).collect())
}

/// The suite's results as a Markdown table: one row per model, one accuracy column per test
/// segment `(seq_len, pairs)` found in any row.
pub fn suite_markdown(rows: &[SuiteRow]) -> String {
    let mut columns: Vec<(usize, usize)> = rows.iter().flat_map(|r| r.results.iter().map(|s| (s.seq_len, s.pairs))).collect();
    columns.sort();
    columns.dedup();
    let mut t = String::from("| recipe | layers | d_model | lr | params | state (floats) |");
    for (l, k) in &columns {
        let _ = write!(t, " T={l}, {k} pairs |");
    }
    t.push_str(" steps | train time |\n|---|---|---:|---:|---:|---:|");
    t.push_str(&"---:|".repeat(columns.len()));
    t.push_str("---:|---:|\n");
    for r in rows {
        // The best learning rate of a recipe and width is in bold (only marked when there was a choice).
        let rivals = rows.iter().filter(|o| o.file == r.file && o.d_model == r.d_model).count();
        let name = if r.best && rivals > 1 { format!("**{}**", r.recipe) } else { r.recipe.clone() };
        let _ = write!(t, "| {name} | {} | {} | {:e} | {} | {} |", r.layers, r.d_model, r.lr, r.params, r.state_floats);
        for c in &columns {
            match r.results.iter().find(|s| (s.seq_len, s.pairs) == *c) {
                Some(s) => {
                    let _ = write!(t, " {:.3} |", s.accuracy);
                }
                None => t.push_str(" |"),
            }
        }
        let early = if r.stopped_early { " (stopped at target)" } else { "" };
        let _ = writeln!(t, " {}{early} | {:.0} s |", r.steps, r.train_secs);
    }
    t
}

/// The suite's figure, Zoology's style: for each test length, accuracy (mean over that length's
/// segments) against the model's state size, one line per recipe file through its widths, from
/// the best learning rate of each. Writes `accuracy_vs_state_T{len}.{png,svg}` into `out`.
pub fn plot_suite(rows: &[SuiteRow], out: &Path) -> Result<Vec<PathBuf>> {
    let mut lengths: Vec<usize> = rows.iter().flat_map(|r| r.results.iter().map(|s| s.seq_len)).collect();
    lengths.sort();
    lengths.dedup();
    let mut files: Vec<String> = rows.iter().map(|r| r.file.clone()).collect();
    files.dedup();
    let mut written = Vec::new();
    for len in lengths {
        let lines: Vec<ember_scaling::Line> = files
            .iter()
            .map(|file| {
                let points = rows
                    .iter()
                    .filter(|r| &r.file == file && r.best)
                    .filter_map(|r| {
                        let at: Vec<f64> = r.results.iter().filter(|s| s.seq_len == len).map(|s| s.accuracy).collect();
                        (!at.is_empty()).then(|| (r.state_floats as f64, at.iter().sum::<f64>() / at.len() as f64))
                    })
                    .collect();
                ember_scaling::Line { label: file.clone(), points }
            })
            .filter(|l| !l.points.is_empty())
            .collect();
        let title = format!("MQAR, T = {len}: accuracy against state size (best learning rate)");
        let axes = ("generation state per sequence (floats)", "accuracy");
        let files = ember_scaling::plot_lines(out, &format!("accuracy_vs_state_T{len}"), title, axes, (0.0, 1.02), &lines)?;
        written.extend([files.png, files.svg]);
    }
    Ok(written)
}

/// Writes `results.md`, `results.csv` (one line per model and segment), `results.jsonl` (one
/// object per model) and the figures of [`plot_suite`] into `out`; returns the paths.
pub fn write_suite(rows: &[SuiteRow], out: &Path, command: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let md = out.join("results.md");
    let body = format!("MQAR accuracy (made by `{command}`)\n\n{}", suite_markdown(rows));
    std::fs::write(&md, body).with_context(|| format!("cannot write {}", md.display()))?;
    let csv = out.join("results.csv");
    let mut text = String::from("recipe,file,layers,d_model,lr,best,params,state_floats,steps,seq_len,pairs,examples,accuracy,loss\n");
    for r in rows {
        for s in &r.results {
            let _ = writeln!(
                text,
                "{},{},{},{},{:e},{},{},{},{},{},{},{},{:.6},{:.6}",
                r.recipe, r.file, r.layers, r.d_model, r.lr, r.best, r.params, r.state_floats, r.steps, s.seq_len, s.pairs, s.examples, s.accuracy, s.loss
            );
        }
    }
    std::fs::write(&csv, text).with_context(|| format!("cannot write {}", csv.display()))?;
    let jsonl = out.join("results.jsonl");
    let lines: Vec<String> = rows.iter().map(|r| serde_json::to_string(r).expect("rows serialize")).collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").with_context(|| format!("cannot write {}", jsonl.display()))?;
    let mut written = vec![md, csv, jsonl];
    written.extend(plot_suite(rows, out)?);
    Ok(written)
}
