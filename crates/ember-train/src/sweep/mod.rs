//! Scaling-law sweeps: a sweep recipe (`recipes/sweeps/*.toml`) names base recipes (one per
//! architecture) and axes — model sizes, token or compute budgets, learning rates — and a
//! design; ember expands it into ordinary training runs, runs them (here, several at once, or as
//! a Slurm array), collects their losses into one table and fits scaling laws to it.
//!
//! ```toml
//! [sweep]
//! name = "tiny-chinchilla"
//! design = "isoflop"                  # or "grid"
//! archs = { attention = "../attn-tiny.toml", based = { recipe = "../based-tiny.toml", set = ["..."] } }
//! shapes = [{ d_model = 64, n_layers = 2 }, { d_model = 96, n_layers = 3 }]   # or params = [...]
//! flops = [1e12, 3e12, 1e13]          # isoflop: tokens = C / 6N; grid: tokens = [...]
//! ```
pub mod collect;
pub mod emit;

use crate::bench::{train_steps, MemoryProbe, TrainBenchOptions};
use crate::recipe::Recipe;
use crate::runs::{complete_run, parallel_map, RunAction};
use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How the axes combine into runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    /// Every combination of shape × token budget (`tokens`) × learning rate.
    Grid,
    /// For each compute budget `C` (`flops`), every shape trained on `C / 6N` tokens: a curve of
    /// loss against size per budget, whose minimum is the compute-optimal size (Chinchilla's
    /// approach 2).
    Isoflop,
}

/// What `N` counts in `C = 6·N·D` and in the fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamCount {
    /// Parameters without the embedding table (Kaplan et al.; cleaner laws for small models,
    /// whose embedding table is most of their parameters).
    NonEmbedding,
    /// Every parameter (Hoffmann et al.).
    Total,
}

/// A model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub d_model: usize,
    pub n_layers: usize,
}

/// `[sweep]` of a sweep recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Names the sweep and its default output directory `checkpoints/sweeps/<name>`.
    pub name: String,
    pub design: Design,
    /// Architecture label → base recipe (relative to the sweep file), alone or with overrides
    /// of its own: `{ recipe = "../based-tiny.toml", set = ["model.schedule.pattern=..."] }`.
    pub archs: BTreeMap<String, Arch>,
    /// Model shapes, explicitly.
    #[serde(default)]
    pub shapes: Vec<Shape>,
    /// Or target parameter counts (see `count`), turned into shapes with `d_model ≈ aspect ·
    /// n_layers` (within a factor 2), `d_model` a multiple of `d_multiple`.
    #[serde(default)]
    pub params: Vec<f64>,
    /// `d_model / n_layers` of the shapes made from `params`. Default 32.
    #[serde(default = "default_aspect")]
    pub aspect: f64,
    /// `d_model` of shapes made from `params` is a multiple of this (so heads divide it). Default 32.
    #[serde(default = "default_d_multiple")]
    pub d_multiple: usize,
    /// Grid design: training tokens per run.
    #[serde(default)]
    pub tokens: Vec<f64>,
    /// Isoflop design: compute budgets `C` in FLOPs.
    #[serde(default)]
    pub flops: Vec<f64>,
    /// Learning rates; default the base recipe's.
    #[serde(default)]
    pub lrs: Vec<f64>,
    /// What `N` counts. Default `"non_embedding"`.
    #[serde(default = "default_count")]
    pub count: ParamCount,
    /// `--set` overrides applied to every run (e.g. evaluation settings).
    #[serde(default)]
    pub set: Vec<String>,
    /// Output directory; default `checkpoints/sweeps/<name>`.
    #[serde(default)]
    pub out_dir: Option<PathBuf>,
}

/// One architecture of a sweep: a base recipe, with overrides applied before the sweep's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Arch {
    Recipe(PathBuf),
    WithOverrides {
        recipe: PathBuf,
        #[serde(default)]
        set: Vec<String>,
    },
}

impl Arch {
    fn parts(&self) -> (&Path, &[String]) {
        match self {
            Arch::Recipe(path) => (path, &[]),
            Arch::WithOverrides { recipe, set } => (recipe, set),
        }
    }
}

fn default_aspect() -> f64 {
    32.0
}
fn default_d_multiple() -> usize {
    32
}
fn default_count() -> ParamCount {
    ParamCount::NonEmbedding
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    sweep: SweepConfig,
}

/// A loaded sweep recipe.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub config: SweepConfig,
    /// The sweep file.
    pub path: PathBuf,
    pub out_dir: PathBuf,
}

/// One run of a sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// `<arch>-d<d_model>-l<n_layers>-<budget>[-lr<lr>]`.
    pub name: String,
    pub arch: String,
    pub shape: Shape,
    /// `N`, as the sweep counts it.
    pub n_params: usize,
    pub total_params: usize,
    /// Training tokens `D` (the steps the run takes times tokens per step).
    pub tokens: f64,
    /// `6·N·D`.
    pub flops: f64,
    /// The isoFLOP budget this run belongs to (isoflop design).
    pub budget: Option<f64>,
    pub lr: f64,
    /// The run's recipe: the base recipe with the sweep's overrides.
    pub recipe: Recipe,
}

impl Sweep {
    /// Reads and checks a sweep recipe; every base recipe must load.
    pub fn load(path: &Path) -> Result<Sweep> {
        let path = Recipe::resolve_path(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: SweepFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1)).unwrap_or(1);
            anyhow::anyhow!("{}:{line}: {}", path.display(), e.message().trim())
        })?;
        let config = file.sweep;
        let fail = |key: &str, message: String| Err(anyhow::anyhow!("{}: key sweep.{key}: {message}", path.display()));
        if config.archs.is_empty() {
            return fail("archs", "needs at least one architecture = base recipe".into());
        }
        match (config.shapes.is_empty(), config.params.is_empty()) {
            (true, true) => return fail("shapes", "give model shapes or target params".into()),
            (false, false) => return fail("params", "give either shapes or params, not both".into()),
            _ => {}
        }
        match config.design {
            Design::Grid if config.tokens.is_empty() => return fail("tokens", "the grid design needs token budgets".into()),
            Design::Isoflop if config.flops.is_empty() => return fail("flops", "the isoflop design needs compute budgets".into()),
            Design::Grid if !config.flops.is_empty() => return fail("flops", "the grid design takes tokens, not flops".into()),
            Design::Isoflop if !config.tokens.is_empty() => return fail("tokens", "the isoflop design takes flops, not tokens".into()),
            _ => {}
        }
        for (key, values) in [("params", &config.params), ("tokens", &config.tokens), ("flops", &config.flops), ("lrs", &config.lrs)] {
            if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return fail(key, "every value must be a positive number".into());
            }
        }
        if !(config.aspect > 0.0) || config.d_multiple == 0 {
            return fail("aspect", "aspect and d_multiple must be positive".into());
        }
        let out_dir = config.out_dir.clone().unwrap_or_else(|| Path::new("checkpoints/sweeps").join(&config.name));
        Ok(Sweep { config, path, out_dir })
    }

    /// The base recipe of `arch`, resolved next to the sweep file, with `overrides`.
    fn base(&self, arch: &str, overrides: &[String]) -> Result<Recipe> {
        let (rel, own) = self.config.archs[arch].parts();
        let path = match (rel.is_relative(), self.path.parent()) {
            (true, Some(dir)) if dir.join(rel).is_file() => dir.join(rel),
            _ => rel.to_path_buf(),
        };
        let all: Vec<String> = own.iter().chain(overrides).cloned().collect();
        Recipe::load(&path, &all).map_err(|e| anyhow::anyhow!("sweep {}, arch {arch}: {e}", self.path.display()))
    }

    /// Every run of the sweep, in order: arch, then budget, then size, then learning rate.
    pub fn expand(&self) -> Result<Vec<PlannedRun>> {
        let c = &self.config;
        let mut runs = Vec::new();
        for arch in c.archs.keys() {
            let base = self.base(arch, &c.set)?;
            let shapes = match c.shapes.is_empty() {
                false => c.shapes.clone(),
                true => shapes_for_params(&base, &c.params, c.aspect, c.d_multiple, c.count)?,
            };
            let lrs = if c.lrs.is_empty() { vec![base.optim.lr] } else { c.lrs.clone() };
            let budgets = match c.design {
                Design::Grid => c.tokens.clone(),
                Design::Isoflop => c.flops.clone(),
            };
            for &budget in &budgets {
                for &shape in &shapes {
                    for &lr in &lrs {
                        runs.push(self.plan_run(arch, shape, budget, lr, lrs.len() > 1)?);
                    }
                }
            }
        }
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("sweep {}: two runs are both named {} (repeated shapes or budgets?)", self.path.display(), w[0]);
        }
        Ok(runs)
    }

    fn plan_run(&self, arch: &str, shape: Shape, budget: f64, lr: f64, name_lr: bool) -> Result<PlannedRun> {
        let c = &self.config;
        let mut overrides = c.set.clone();
        overrides.extend([format!("model.d_model={}", shape.d_model), format!("model.n_layers={}", shape.n_layers)]);
        let sized = self.base(arch, &overrides)?;
        let n_params = count(&sized, c.count);
        let tokens = match c.design {
            Design::Grid => budget,
            Design::Isoflop => budget / (6.0 * n_params as f64),
        };
        let per_step = sized.tokens_per_step() as f64;
        let steps = (tokens / per_step).round().max(1.0) as usize;
        let budget_label = match c.design {
            Design::Grid => format!("t{}", short(budget)),
            Design::Isoflop => format!("c{}", short(budget)),
        };
        let mut name = format!("{arch}-d{}-l{}-{budget_label}", shape.d_model, shape.n_layers);
        if name_lr {
            name.push_str(&format!("-lr{lr:e}"));
        }
        let out_dir = self.out_dir.join("runs").join(&name);
        // Evaluate and checkpoint at the end at least; keep any shorter intervals of the base.
        let base_eval = sized.train.eval_interval;
        overrides.extend([
            format!("train.name={name:?}"),
            format!("train.out_dir={:?}", out_dir.display().to_string()),
            format!("train.steps={steps}"),
            format!("optim.lr={lr:e}"),
            format!("optim.warmup_steps={}", sized.optim.warmup_steps.min(steps.saturating_sub(1) / 2)),
            format!("train.eval_interval={}", base_eval.min(steps).max(1)),
            format!("train.checkpoint_interval={}", sized.train.checkpoint_interval.min(steps)),
            "log.samples=0".into(),
        ]);
        let recipe = self.base(arch, &overrides)?;
        let tokens = (steps * per_step as usize) as f64;
        Ok(PlannedRun {
            name,
            arch: arch.to_string(),
            shape,
            n_params,
            total_params: recipe.model.num_params(),
            tokens,
            flops: 6.0 * n_params as f64 * tokens,
            budget: (c.design == Design::Isoflop).then_some(budget),
            lr,
            recipe,
        })
    }

    /// Where each run's final recipe is written (for `--emit` scripts and by-hand reruns).
    pub fn recipe_path(&self, run: &PlannedRun) -> PathBuf {
        self.out_dir.join("recipes").join(format!("{}.toml", run.name))
    }

    /// Writes every run's recipe under `<out_dir>/recipes/`.
    pub fn write_recipes(&self, runs: &[PlannedRun]) -> Result<()> {
        for run in runs {
            let path = self.recipe_path(run);
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
            std::fs::write(&path, &run.recipe.source.text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// `N` of a recipe's model.
pub fn count(recipe: &Recipe, how: ParamCount) -> usize {
    match how {
        ParamCount::NonEmbedding => recipe.model.non_embedding_params(),
        ParamCount::Total => recipe.model.num_params(),
    }
}

/// Shapes whose parameter counts come closest (in log) to each target, among depths `1..=64`
/// and widths that are multiples of `d_multiple` with `d_model / n_layers` within a factor 2
/// of `aspect`; between near-equal counts, the shape closer to `aspect` wins. The base
/// recipe's mixers must be valid at those widths.
pub fn shapes_for_params(base: &Recipe, targets: &[f64], aspect: f64, d_multiple: usize, how: ParamCount) -> Result<Vec<Shape>> {
    let mut candidates = Vec::new();
    for n_layers in 1..=64usize {
        let (lo, hi) = (aspect * n_layers as f64 / 2.0, aspect * n_layers as f64 * 2.0);
        let mut d = d_multiple;
        while d as f64 <= hi {
            if d as f64 >= lo {
                let mut sized = base.clone();
                sized.model.d_model = d;
                sized.model.n_layers = n_layers;
                if sized.model.validate().is_ok() {
                    candidates.push((Shape { d_model: d, n_layers }, count(&sized, how) as f64));
                }
            }
            d += d_multiple;
        }
    }
    if candidates.is_empty() {
        bail!("no shape with d_model ≈ {aspect} · n_layers (multiples of {d_multiple}) is valid for the base recipe's mixers");
    }
    let score = |shape: &Shape, n: f64, target: f64| {
        let off_aspect = ((shape.d_model as f64 / shape.n_layers as f64) / aspect).ln().abs();
        (n.ln() - target.ln()).abs() + 0.1 * off_aspect
    };
    let mut shapes = Vec::new();
    for &target in targets {
        let (shape, _) = candidates
            .iter()
            .min_by(|a, b| score(&a.0, a.1, target).total_cmp(&score(&b.0, b.1, target)))
            .expect("candidates is not empty");
        if shapes.contains(shape) {
            bail!("target {target:e} parameters gives the same shape as another target ({shape:?}); spread the targets further apart");
        }
        shapes.push(*shape);
    }
    Ok(shapes)
}

/// `3e12`-style short form for run names.
fn short(x: f64) -> String {
    let exp = x.log10().floor() as i32;
    let mantissa = x / 10f64.powi(exp);
    let m = format!("{mantissa:.2}");
    let m = m.trim_end_matches('0').trim_end_matches('.');
    format!("{m}e{exp}")
}

/// The plan as printed by `ember sweep --plan`: one line per run and the totals.
pub fn plan_table(sweep: &Sweep, runs: &[PlannedRun], seconds: Option<&[f64]>) -> String {
    let mut t = String::new();
    let count = match sweep.config.count {
        ParamCount::NonEmbedding => "N (non-embedding)",
        ParamCount::Total => "N (total)",
    };
    let _ = writeln!(t, "sweep {} ({:?} design): {} runs into {}", sweep.config.name, sweep.config.design, runs.len(), sweep.out_dir.display());
    let _ = writeln!(t, "{:<34} {:>8} {:>7} {:>18} {:>12} {:>10} {:>8} {:>10}", "run", "d_model", "layers", count, "tokens", "FLOPs", "steps", "est. time");
    let mut total_s = 0.0;
    for (i, r) in runs.iter().enumerate() {
        let secs = seconds.map(|s| s[i]);
        total_s += secs.unwrap_or(0.0);
        let est = secs.map_or("-".into(), human_secs);
        let _ = writeln!(
            t,
            "{:<34} {:>8} {:>7} {:>18} {:>12.3e} {:>10.2e} {:>8} {:>10}",
            r.name,
            r.shape.d_model,
            r.shape.n_layers,
            r.n_params,
            r.tokens,
            r.flops,
            r.recipe.steps(),
            est
        );
    }
    let flops: f64 = runs.iter().map(|r| r.flops).sum();
    let tokens: f64 = runs.iter().map(|r| r.tokens).sum();
    let _ = writeln!(t, "total: {tokens:.3e} tokens, {flops:.3e} FLOPs (6ND)");
    if seconds.is_some() {
        let _ = writeln!(t, "estimated time: {} one run at a time", human_secs(total_s));
    }
    t
}

fn human_secs(s: f64) -> String {
    match s {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Brings every run to completion, `jobs` at a time: new runs train, interrupted ones resume
/// from their newest checkpoint, finished ones are left alone. Returns what happened to each.
pub fn run_all<B: AutodiffBackend>(runs: &[PlannedRun], jobs: usize, quiet: bool, device: &B::Device) -> Result<Vec<RunAction>>
where
    B::Device: Sync,
{
    // Progress bars only when one run trains at a time.
    let bars = !quiet && jobs <= 1;
    parallel_map(runs.iter().collect(), jobs, |run| {
        let started = Instant::now();
        let done = complete_run::<B>(&run.recipe, !bars, device)?;
        if !quiet {
            let what = match done.action {
                RunAction::AlreadyFinished => "already finished".to_string(),
                RunAction::Resumed => format!("resumed and finished in {:.0} s", started.elapsed().as_secs_f64()),
                RunAction::Trained => format!("trained in {:.0} s", started.elapsed().as_secs_f64()),
            };
            let loss = done.state.last_val_loss.map_or("-".into(), |l| format!("{l:.4}"));
            println!("{}: {what}; validation loss {loss}", run.name);
        }
        Ok(done.action)
    })
}

/// Seconds each run should take on `device`: two timed optimizer steps (after one untimed) of
/// every distinct (arch, shape), times the run's steps.
pub fn estimate_seconds<B: AutodiffBackend>(runs: &[PlannedRun], device: &B::Device) -> Result<Vec<f64>> {
    let mut per_step: BTreeMap<(String, usize, usize), f64> = BTreeMap::new();
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let key = (run.arch.clone(), run.shape.d_model, run.shape.n_layers);
        let secs = match per_step.get(&key) {
            Some(&s) => s,
            None => {
                let opts = TrainBenchOptions { steps: 2, warmup: 1, precision: run.recipe.train.precision() };
                let bench = train_steps::<B>(&run.recipe, &opts, &mut MemoryProbe::unavailable("not measured"), device)?;
                let s = bench.step_ms / 1e3;
                per_step.insert(key, s);
                s
            }
        };
        out.push(secs * run.recipe.steps() as f64);
    }
    Ok(out)
}

/// Fits scaling laws to a results table (`results.csv` of `ember sweep collect`, or any CSV /
/// JSONL with `n_params, tokens, loss` and optionally `arch`, `flops`, `budget`) and writes the
/// plots, `report.md` and `fits.json` into `out`. Returns the files written.
pub fn fit(results: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let runs = ember_scaling::load_runs(results)?;
    if runs.is_empty() {
        bail!("{} has no finished runs to fit", results.display());
    }
    let analyses = ember_scaling::analyse(&runs, &ember_scaling::AnalysisConfig::default());
    ember_scaling::write_report(out, &analyses)
}
