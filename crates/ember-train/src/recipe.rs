//! Recipes: one TOML file that says everything about a training run.
//!
//! A recipe has five sections, `[model]` (an [`LmConfig`]), `[data]`, `[optim]`, `[train]` and
//! `[log]`; docs/RECIPES.md lists every key. Loading goes
//!
//! 1. read the file (`Recipe::resolve_path` finds bare names in `./recipes/`),
//! 2. parse it as TOML (syntax errors carry line and column),
//! 3. apply `--set KEY=VALUE` overrides to the parsed table,
//! 4. deserialize into the typed structs (unknown keys, wrong types and missing keys are errors
//!    naming the dotted key and its line, or the `--set` that produced it),
//! 5. validate values and cross-key constraints ([`Recipe::validate`]),
//! 6. resolve the data paths and check they exist ([`Recipe::check_files`]).
//!
//! [`Recipe::from_str`] does steps 2–5 and never touches the file system, so it can check any
//! recipe text; [`Recipe::load`] does all six. Nothing here writes a file or creates a directory.
mod doc;
mod error;

pub use error::{ErrorKind, Origin, RecipeError};

use doc::{dotted, parse_dotted, suggest, Locator, Seg};
use ember_layers::mixer::KINDS;
pub use ember_ops::precision::Precision;
use ember_data::mqar::MqarConfig;
use ember_data::niah::NiahConfig;
use ember_layers::MixerConfig;
use ember_models::LmConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The directory, relative to the current directory, where bare recipe names are looked up.
pub const RECIPE_DIR: &str = "recipes";

/// Backend names `train.device` accepts (optionally followed by `:INDEX`), as the CLI's
/// `--device` understands them; which ones work depends on the features the binary was built
/// with. `auto` picks the best one compiled in and present when the run starts.
pub const DEVICES: &[&str] = &["auto", "cpu", "ndarray", "flex", "wgpu", "cuda", "tch-cpu", "tch-cuda"];

/// Devices whose kernels compute in f32/f64 only (Burn's ndarray backend).
const F32_ONLY_DEVICES: &[&str] = &["cpu", "ndarray"];

/// A whole training run: model, data, optimizer, loop and logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// `[model]`: the language model (an [`LmConfig`]; its mixers live in `[model.mixers.NAME]`).
    pub model: LmConfig,
    /// `[data]`: tokenizer and corpus.
    pub data: DataConfig,
    /// `[optim]`: AdamW and the learning-rate schedule.
    pub optim: OptimConfig,
    /// `[train]`: the training loop.
    pub train: TrainConfig,
    /// `[log]`: metric sinks and samples; every key has a default, so the section may be omitted.
    #[serde(default)]
    pub log: LogConfig,
    /// Where the recipe came from; not a TOML key.
    #[serde(skip)]
    pub source: RecipeSource,
}

/// Where a recipe came from, for saving next to checkpoints and for locating later errors.
#[derive(Clone, Debug, Default)]
pub struct RecipeSource {
    /// The recipe file, as given (or the `origin` passed to [`Recipe::from_str`]).
    pub path: PathBuf,
    /// The final recipe as TOML: the original text verbatim when there are no overrides,
    /// otherwise the overridden table re-serialized (comments are lost) under a header comment
    /// that lists the overrides. Loading this text again gives the same recipe.
    pub text: String,
    /// The `--set` arguments, in order.
    pub overrides: Vec<String>,
    locator: Locator,
}

impl RecipeSource {
    /// An error about `key` (dotted), located at the line or `--set` that set it.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> RecipeError {
        self.locator.error(&parse_dotted(key), ErrorKind::Invalid { key: key.to_string(), message: message.into() })
    }

    /// Resolves the path `key` holds: as written, then beside the recipe, then one directory
    /// up (the first that exists). The error names the key, `what` was expected and every
    /// place tried.
    pub fn resolve_path(&self, key: &str, what: &'static str, path: &Path) -> Result<PathBuf, RecipeError> {
        let mut tried = vec![path.to_path_buf()];
        if path.is_relative() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tried.push(dir.join(path));
                if let Some(up) = dir.parent() {
                    tried.push(up.join(path));
                }
            }
        }
        let mut unique: Vec<PathBuf> = Vec::new();
        for p in tried {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        match unique.iter().find(|p| p.exists()) {
            Some(found) => Ok(found.clone()),
            None => Err(self.locator.error(&parse_dotted(key), ErrorKind::FileNotFound { key: key.to_string(), what, path: path.to_path_buf(), tried: unique })),
        }
    }
}

/// Steps 2–4 of loading for any recipe-like document (a [`Recipe`], a linearization recipe):
/// parse `text` as TOML, apply `--set` overrides, deserialize into `T` with errors naming the
/// key and its line. Returns the value and its [`RecipeSource`].
pub fn parse_document<T: DeserializeOwned>(text: &str, origin: &Path, overrides: &[String]) -> Result<(T, RecipeSource), RecipeError> {
    let mut table: Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e.span().map_or((1, 1), |s| doc::line_col(text, s.start));
        let message = e.message().trim().to_string();
        RecipeError::new(origin, Origin::Line { line, column: Some(column) }, ErrorKind::Syntax { message })
    })?;
    let mut locator = Locator::new(origin, text);
    locator.apply_overrides(&mut table, overrides)?;
    let value: T = deserialize(&table, &locator)?;
    let text = if overrides.is_empty() {
        text.to_string()
    } else {
        let mut header = format!("# {} with overrides:\n", origin.display());
        for o in overrides {
            let _ = writeln!(header, "#   --set {o}");
        }
        header + &toml::to_string(&table).expect("a parsed TOML table serializes")
    };
    Ok((value, RecipeSource { path: origin.to_path_buf(), text, overrides: overrides.to_vec(), locator }))
}

impl PartialEq for RecipeSource {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.text == other.text && self.overrides == other.overrides
    }
}

/// `[data]`: a tokenized corpus (`tokenizer` + `train`), or a synthetic task (`[data.mqar]` or
/// `[data.niah]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Hugging Face `tokenizer.json`. Required unless `[data.mqar]` or `[data.niah]` is given.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Training data: a `.txt`, `.jsonl`, `.json` or `.parquet` file, a directory of them, or a
    /// prepared shard directory (one with `manifest.json`). Required unless `[data.mqar]` or `[data.niah]` is given.
    #[serde(default)]
    pub train: Option<PathBuf>,
    /// Validation data, same forms as `train`. Without it there is no evaluation.
    #[serde(default)]
    pub valid: Option<PathBuf>,
    /// Tokens per training sequence. Required.
    pub seq_len: usize,
    /// JSON field holding the text in `.jsonl` / `.json` / `.parquet` sources. Default `"text"`.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Where tokenized shards of raw sources are cached, relative to the current directory.
    /// Default `"data/cache"`.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// `[data.mqar]`: train and validate on multi-query associative recall instead of text.
    #[serde(default)]
    pub mqar: Option<MqarConfig>,
    /// `[data.niah]`: train and validate on needle-in-a-haystack retrieval instead of text.
    #[serde(default)]
    pub niah: Option<NiahConfig>,
}

impl DataConfig {
    /// The `[data.*]` section of the synthetic task the recipe trains on, if any.
    pub fn synthetic_section(&self) -> Option<&'static str> {
        match (&self.mqar, &self.niah) {
            (Some(_), _) => Some("data.mqar"),
            (None, Some(_)) => Some("data.niah"),
            (None, None) => None,
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Stay at `lr`.
    Constant,
    /// Half-cosine from `lr` down to `min_lr` at the last step.
    Cosine,
    /// Warmup-stable-decay: `lr` until the last `decay_fraction` of the steps, then linear to
    /// `min_lr` at the last step.
    Wsd,
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
            LrSchedule::Wsd => "wsd",
        })
    }
}

/// `[optim]`: AdamW with decoupled weight decay, global-norm gradient clipping, and a schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (reached at the end of warm-up). Required.
    pub lr: f64,
    /// AdamW `(β₁, β₂)`. Default `[0.9, 0.95]`.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW `ε`. Default `1e-8`.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the current learning rate). Default `0.1`.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Parameters whose path contains any of these substrings get no weight decay.
    /// Default `["norm", "bias", "embed"]`.
    #[serde(default = "default_no_decay")]
    pub no_decay: Vec<String>,
    /// Linear warm-up steps: step `s < warmup_steps` uses `lr · (s + 1) / warmup_steps`. Default `0`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Schedule after warm-up: `"constant"`, `"cosine"` or `"wsd"`. Default `"cosine"`.
    #[serde(default = "default_schedule")]
    pub schedule: LrSchedule,
    /// Learning rate at the last step (cosine and WSD). Default `0.0`.
    #[serde(default)]
    pub min_lr: f64,
    /// WSD only: the fraction of all steps, at the end, over which the rate decays. Default `0.2`.
    #[serde(default = "default_decay_fraction")]
    pub decay_fraction: f64,
    /// Clip gradients to this global L2 norm (over all parameters together); `0` turns clipping
    /// off. Default `1.0`.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Micro-batches accumulated per optimizer step. Default `1`.
    #[serde(default = "default_one")]
    pub grad_accum: usize,
    /// The schedule after warm-up moves only every this many steps and holds in between: set it
    /// to the steps of an epoch for a per-epoch schedule (Zoology steps its cosine once an
    /// epoch: epoch `e` of `E` runs at `min_lr + (lr - min_lr)(1 + cos(π e / E)) / 2`).
    /// Default `1`: every step.
    #[serde(default = "default_one")]
    pub schedule_every: usize,
}

/// `[train]`: the training loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: letters, digits, `-`, `_`, `.`; names the default output directory. Required.
    pub name: String,
    /// Sequences per micro-batch. Required.
    pub batch_size: usize,
    /// Optimizer steps. Exactly one of `steps` and `tokens` must be set.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Training tokens; the number of steps is
    /// `ceil(tokens / (batch_size · seq_len · grad_accum))`. Exactly one of `steps` and `tokens`.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Evaluate on `data.valid` every this many steps (and after the last). Default `100`.
    #[serde(default = "default_eval_interval")]
    pub eval_interval: usize,
    /// Validation batches per evaluation. Default `10`.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Stop the run (checkpointing there) once validation accuracy reaches this, as Zoology does
    /// for MQAR at 0.99. Default: never.
    #[serde(default)]
    pub stop_accuracy: Option<f64>,
    /// Save a checkpoint every this many steps (and after the last). Default `1000`.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: usize,
    /// Checkpoints kept on disk; older ones are deleted. Default `3`.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Seed of parameter initialisation and data order. Default `0`.
    #[serde(default)]
    pub seed: u64,
    /// Backend device: one of [`DEVICES`]. Default `"auto"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Compute dtype: `"f32"`, or `"bf16"` (mixed precision: bf16 matmuls and activations,
    /// f32 master weights, optimizer state, reductions, norms and states). Default `"f32"`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Whether the chunked mixers run on ember's CubeCL kernels (wgpu and cuda only): `"auto"`
    /// where they were measured faster than the composed Burn ops (`ember_ops::kernels::Variant`),
    /// `"on"` for every chunked linear-attention form (an error on a device without kernels),
    /// `"off"` never. Default `"auto"`.
    #[serde(default)]
    pub kernels: ember_ops::kernels::Kernels,
    /// Output directory for checkpoints and logs, relative to the current directory.
    /// Default `checkpoints/<name>`.
    #[serde(default)]
    pub out_dir: PathBuf,
}

/// `[log]`: metrics and text samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log training metrics every this many steps. Default `10`.
    pub every: usize,
    /// Write TensorBoard event files under `<out_dir>/tensorboard`. Default `true`.
    pub tensorboard: bool,
    /// Write one JSON object per log step to `<out_dir>/metrics.jsonl`. Default `true`.
    pub jsonl: bool,
    /// Show a progress bar on the terminal. Default `true`.
    pub progress: bool,
    /// Text samples generated and printed after training; `0` for none. Default `2`.
    pub samples: usize,
    /// New tokens per sample. Default `64`.
    pub sample_tokens: usize,
    /// Prompt the samples start from. Default `"The"`.
    pub prompt: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            every: 10,
            tensorboard: true,
            jsonl: true,
            progress: true,
            samples: 2,
            sample_tokens: 64,
            prompt: "The".into(),
        }
    }
}

impl TrainConfig {
    /// The compute dtype (`train.dtype`; a validated recipe always parses).
    pub fn precision(&self) -> Precision {
        self.dtype.parse().unwrap_or_default()
    }
}

fn default_text_field() -> String {
    "text".into()
}
fn default_cache_dir() -> PathBuf {
    "data/cache".into()
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_no_decay() -> Vec<String> {
    vec!["norm".into(), "bias".into(), "embed".into()]
}
fn default_schedule() -> LrSchedule {
    LrSchedule::Cosine
}
fn default_decay_fraction() -> f64 {
    0.2
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_one() -> usize {
    1
}
fn default_eval_interval() -> usize {
    100
}
fn default_eval_batches() -> usize {
    10
}
fn default_checkpoint_interval() -> usize {
    1000
}
fn default_keep_last() -> usize {
    3
}
fn default_device() -> String {
    "auto".into()
}
fn default_dtype() -> String {
    "f32".into()
}

impl OptimConfig {
    /// Learning rate of optimizer step `step` (0-based) in a run of `total_steps` steps.
    ///
    /// * Warm-up (`step < warmup_steps`): `lr · (step + 1) / warmup_steps`, so the first step
    ///   already moves (`lr / warmup_steps`) and step `warmup_steps − 1` uses the full `lr`.
    /// * Then, with `n = total_steps − warmup_steps` post-warm-up steps:
    ///   * `constant`: `lr`;
    ///   * `cosine`: `min_lr + (lr − min_lr)·(1 + cos(π·p))/2` with `p = (step − warmup) / (n − 1)`,
    ///     so the first post-warm-up step uses `lr` and the last step (`total_steps − 1`) exactly
    ///     `min_lr`;
    ///   * `wsd`: `lr` until the last `d = min(ceil(decay_fraction · total_steps), n)` steps, then
    ///     linear from `lr` to `min_lr` over those `d` steps, the last step using exactly `min_lr`.
    /// * Steps at or past `total_steps` keep the final value. A decay phase of a single step
    ///   uses `min_lr`.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        let warmup = self.warmup_steps;
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let n = total_steps.saturating_sub(warmup);
        let every = self.schedule_every.max(1);
        let t = (step - warmup) / every * every;
        // Held every `every` steps, the schedule has `⌈n / every⌉` periods and period `i` sits at
        // `i / periods`: PyTorch's CosineAnnealingLR(T_max = epochs) stepped once an epoch.
        let position = |t: usize, n: usize| if every > 1 { ((t / every) as f64 / n.div_ceil(every).max(1) as f64).min(1.0) } else { progress(t, n) };
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let p = position(t, n);
                self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            LrSchedule::Wsd => {
                let d = ((self.decay_fraction * total_steps as f64).ceil() as usize).min(n);
                if d == 0 || t < n - d {
                    self.lr
                } else {
                    let p = position(t - (n - d), d);
                    self.lr + (self.min_lr - self.lr) * p
                }
            }
        }
    }
}

/// Position of step `t` in a phase of `n` steps: 0 at the first, 1 at the last (and after).
fn progress(t: usize, n: usize) -> f64 {
    if n <= 1 {
        1.0
    } else {
        (t as f64 / (n - 1) as f64).min(1.0)
    }
}

impl Recipe {
    /// Reads, parses, overrides, validates and checks the data files of a recipe.
    ///
    /// `path` goes through [`Recipe::resolve_path`] first, so `based-tiny.toml` finds
    /// `recipes/based-tiny.toml`. `overrides` are `--set` arguments like `optim.lr=3e-4`.
    /// Equivalent to `from_str` on the file's text followed by [`Recipe::check_files`].
    /// Writes nothing.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe, RecipeError> {
        let path = Self::resolve_path(path)?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            RecipeError::new(&path, Origin::File, ErrorKind::Read { message: e.to_string() })
        })?;
        let mut recipe = Self::from_str(&text, &path, overrides)?;
        recipe.check_files()?;
        Ok(recipe)
    }

    /// Parses recipe `text` as if read from `origin` (used in error messages and to resolve
    /// data paths later), applies `overrides` and validates. Does not touch the file system:
    /// data paths are left as written; call [`Recipe::check_files`] to resolve them.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, origin: &Path, overrides: &[String]) -> Result<Recipe, RecipeError> {
        let (mut recipe, source): (Recipe, _) = parse_document(text, origin, overrides)?;
        if recipe.train.out_dir.as_os_str().is_empty() {
            recipe.train.out_dir = Path::new("checkpoints").join(&recipe.train.name);
        }
        recipe.source = source;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Finds the recipe file for a `--recipe` argument: the path itself if it exists, else (for a
    /// bare file name) `recipes/<name>`; a name without extension also tries `.toml`. The error
    /// lists every place it looked.
    pub fn resolve_path(recipe_arg: &Path) -> Result<PathBuf, RecipeError> {
        let mut tried = vec![recipe_arg.to_path_buf()];
        if recipe_arg.extension().is_none() {
            tried.push(recipe_arg.with_extension("toml"));
        }
        let bare = recipe_arg.is_relative() && recipe_arg.components().count() == 1;
        if bare {
            let in_dir: Vec<PathBuf> = tried.iter().map(|p| Path::new(RECIPE_DIR).join(p)).collect();
            tried.extend(in_dir);
        }
        for candidate in &tried {
            if candidate.is_file() {
                return Ok(candidate.clone());
            }
        }
        if recipe_arg.is_dir() {
            return Err(RecipeError::new(
                recipe_arg,
                Origin::File,
                ErrorKind::Read { message: "is a directory, not a recipe file".into() },
            ));
        }
        Err(RecipeError::new(recipe_arg, Origin::File, ErrorKind::NotFound { tried }))
    }

    /// Optimizer steps of the run: `train.steps`, or `train.tokens` divided by the tokens per
    /// step, rounded up.
    pub fn steps(&self) -> usize {
        match (self.train.steps, self.train.tokens) {
            (Some(steps), _) => steps,
            (None, Some(tokens)) => tokens.div_ceil(self.tokens_per_step().max(1) as u64) as usize,
            (None, None) => 0,
        }
    }

    /// Tokens consumed by one optimizer step: `batch_size · seq_len · grad_accum`.
    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.data.seq_len * self.optim.grad_accum
    }

    /// An error about `key` (dotted, e.g. `"model.vocab_size"`), located at the line that set it
    /// or the `--set` that did: for checks made after loading (e.g. against the tokenizer).
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> RecipeError {
        self.source.error_at(key, message)
    }

    /// Checks values and constraints that the types alone cannot (already called by
    /// `from_str`; call it again after changing fields by hand). Touches no files.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let fail = |key: &str, message: String| Err(self.error_at(key, message));
        self.model.validate().or_else(|(key, message)| fail(&key, message))?;

        let d = &self.data;
        if d.seq_len == 0 {
            return fail("data.seq_len", "must be at least 1".into());
        }
        if d.text_field.is_empty() {
            return fail("data.text_field", "must not be empty".into());
        }
        if let Some(section) = d.synthetic_section() {
            if d.mqar.is_some() && d.niah.is_some() {
                return fail("data.niah", "a recipe trains on one synthetic task: remove [data.mqar] or [data.niah]".into());
            }
            for (key, set) in [("data.tokenizer", d.tokenizer.is_some()), ("data.train", d.train.is_some()), ("data.valid", d.valid.is_some())] {
                if set {
                    return fail(key, format!("a recipe with [{section}] generates its own tokens and test set: remove this key"));
                }
            }
        }
        let model_vocab = self.model.vocab_size;
        if let Some(mqar) = &d.mqar {
            mqar.validate(d.seq_len).or_else(|(key, message)| fail(&format!("data.mqar.{key}"), message))?;
            if model_vocab < mqar.vocab_size {
                return fail("model.vocab_size", format!("must be at least data.mqar.vocab_size = {} (the task's token ids)", mqar.vocab_size));
            }
        }
        if let Some(niah) = &d.niah {
            niah.validate(d.seq_len, model_vocab).or_else(|(key, message)| {
                // The vocabulary defaults to the model's: a mistake there is model.vocab_size's.
                let key = match key.as_str() {
                    "vocab_size" if niah.vocab_size.is_none() => "model.vocab_size".to_string(),
                    _ => format!("data.niah.{key}"),
                };
                fail(&key, message)
            })?;
            if model_vocab < niah.vocab(model_vocab) {
                return fail("model.vocab_size", format!("must be at least data.niah.vocab_size = {} (the task's token ids)", niah.vocab(model_vocab)));
            }
        }
        if d.synthetic_section().is_none() {
            for (key, set) in [("data.tokenizer", d.tokenizer.is_some()), ("data.train", d.train.is_some())] {
                if !set {
                    let hint = " (or a [data.mqar] or [data.niah] section, to train on a synthetic task)".to_string();
                    return Err(self.source.locator.error(&parse_dotted(key), ErrorKind::MissingKey { key: key.into(), hint }));
                }
            }
        }

        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return fail("optim.lr", format!("must be a positive number, got {}", o.lr));
        }
        for (i, beta) in o.betas.iter().enumerate() {
            if !(0.0..1.0).contains(beta) {
                return fail(&format!("optim.betas[{i}]"), format!("must be in [0, 1), got {beta}"));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return fail("optim.eps", format!("must be positive, got {}", o.eps));
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return fail("optim.weight_decay", format!("must be ≥ 0, got {}", o.weight_decay));
        }
        if !(o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return fail("optim.min_lr", format!("must be in [0, optim.lr = {}], got {}", o.lr, o.min_lr));
        }
        if !(0.0..=1.0).contains(&o.decay_fraction) {
            return fail("optim.decay_fraction", format!("must be in [0, 1], got {}", o.decay_fraction));
        }
        if !(o.grad_clip >= 0.0 && o.grad_clip.is_finite()) {
            return fail("optim.grad_clip", format!("must be ≥ 0 (0 turns clipping off), got {}", o.grad_clip));
        }
        if o.grad_accum == 0 {
            return fail("optim.grad_accum", "must be at least 1".into());
        }
        if o.schedule_every == 0 {
            return fail("optim.schedule_every", "must be at least 1 (1 moves the schedule every step)".into());
        }

        let t = &self.train;
        if t.name.is_empty() || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return fail("train.name", format!("{:?} must be non-empty and use only letters, digits, '-', '_' and '.'", t.name));
        }
        if t.batch_size == 0 {
            return fail("train.batch_size", "must be at least 1".into());
        }
        match (t.steps, t.tokens) {
            (Some(_), Some(_)) => {
                return fail("train.tokens", "set either train.steps or train.tokens, not both".into());
            }
            (None, None) => {
                let path = parse_dotted("train.steps");
                let hint = " (or train.tokens)".to_string();
                return Err(self.source.locator.error(&path, ErrorKind::MissingKey { key: "train.steps".into(), hint }));
            }
            (Some(0), None) => return fail("train.steps", "must be at least 1".into()),
            (None, Some(0)) => return fail("train.tokens", "must be at least 1".into()),
            _ => {}
        }
        let steps = self.steps();
        if o.warmup_steps >= steps {
            return fail(
                "optim.warmup_steps",
                format!("must be smaller than the number of training steps ({steps})"),
            );
        }
        for (key, v) in [
            ("train.eval_interval", t.eval_interval),
            ("train.eval_batches", t.eval_batches),
            ("train.checkpoint_interval", t.checkpoint_interval),
            ("train.keep_last", t.keep_last),
            ("log.every", self.log.every),
        ] {
            if v == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        if let Some(goal) = t.stop_accuracy {
            if !(goal > 0.0 && goal <= 1.0) {
                return fail("train.stop_accuracy", format!("must be in (0, 1], got {goal}"));
            }
        }
        let device = t.device.split(':').next().unwrap_or_default();
        let index_ok = t.device.split_once(':').is_none_or(|(_, i)| i.parse::<usize>().is_ok());
        if !DEVICES.contains(&device) || !index_ok {
            return fail(
                "train.device",
                format!("unknown device {:?} (known: {}; a GPU index may follow, e.g. \"cuda:1\")", t.device, DEVICES.join(", ")),
            );
        }
        match t.dtype.parse::<Precision>() {
            Err(message) => return fail("train.dtype", message),
            Ok(Precision::Bf16) if F32_ONLY_DEVICES.contains(&device) => {
                let message = format!(
                    "bf16 needs a backend that computes in bf16, and device {device:?} (Burn's ndarray) computes \
                     in f32/f64 only: use \"flex\" or \"tch-cpu\" on a CPU, a GPU device, or dtype \"f32\""
                );
                return fail("train.dtype", message);
            }
            Ok(_) => {}
        }
        if t.out_dir.as_os_str().is_empty() {
            return fail("train.out_dir", "must not be empty".into());
        }
        if self.log.samples > 0 && self.log.sample_tokens == 0 {
            return fail("log.sample_tokens", "must be at least 1 when log.samples > 0".into());
        }
        Ok(())
    }

    /// Resolves `data.tokenizer`, `data.train` and `data.valid` (those given) and checks that
    /// they exist.
    ///
    /// A relative path is tried, in order, relative to the current directory, to the recipe
    /// file's directory, and to that directory's parent (so a recipe in `recipes/` may say
    /// `data/tokenizer.json`). The first hit replaces the path as written (joined onto the
    /// directory it was found under; that is still relative when the recipe path was).
    /// The tokenizer must be a file; data sources may be files or directories.
    /// Reads only file metadata; writes nothing.
    pub fn check_files(&mut self) -> Result<(), RecipeError> {
        let resolve = |key: &str, what: &'static str, path: &Path, want_file: bool| {
            let found = self.source.resolve_path(key, what, path)?;
            if want_file && !found.is_file() {
                return Err(self.error_at(key, format!("{} is a directory, expected a file", found.display())));
            }
            Ok(found)
        };
        let tokenizer = self.data.tokenizer.as_ref().map(|p| resolve("data.tokenizer", "file", p, true)).transpose()?;
        let train = self.data.train.as_ref().map(|p| resolve("data.train", "path", p, false)).transpose()?;
        let valid = self.data.valid.as_ref().map(|p| resolve("data.valid", "path", p, false)).transpose()?;
        self.data.tokenizer = tokenizer;
        self.data.train = train;
        self.data.valid = valid;
        Ok(())
    }

    /// The text of `ember recipe check`: sizes, FLOPs, tokens and a per-layer table.
    pub fn check_report(&self) -> String {
        let m = &self.model;
        let seq = self.data.seq_len;
        let layers = m.layer_summaries(seq);
        let total = m.num_params();
        let non_embed = m.non_embedding_params();
        let fwd = m.flops_per_token(seq);
        let steps = self.steps();
        let tps = self.tokens_per_step();
        let total_tokens = steps as f64 * tps as f64;
        let state: usize = layers.iter().map(|l| l.state_floats).sum();

        let mut r = String::new();
        let _ = writeln!(r, "recipe      {}", self.source.path.display());
        for o in &self.source.overrides {
            let _ = writeln!(r, "  --set     {o}");
        }
        let _ = writeln!(r, "name        {}", self.train.name);
        let _ = writeln!(
            r,
            "model       {} layers, d_model {}, vocab {} (padded {}), {} embeddings",
            m.n_layers,
            m.d_model,
            m.vocab_size,
            m.padded_vocab(),
            if m.tie_embeddings { "tied" } else { "untied" }
        );
        let _ = writeln!(r, "parameters  {} total ({total})", si(total as f64));
        let _ = writeln!(
            r,
            "            {} non-embedding ({non_embed}), {} embedding table",
            si(non_embed as f64),
            si((m.padded_vocab() * m.d_model) as f64)
        );
        let _ = writeln!(r, "FLOPs/token forward {} at seq_len {seq} (output head included)", si(fwd));
        let _ = writeln!(
            r,
            "            training ≈ 3 × forward = {}; 6N approximation (N = non-embedding) = {}",
            si(3.0 * fwd),
            si(6.0 * non_embed as f64)
        );
        let _ = writeln!(
            r,
            "tokens      {} per step ({} × {seq} × grad_accum {}), {steps} steps, {} in total",
            si(tps as f64),
            self.train.batch_size,
            self.optim.grad_accum,
            si(total_tokens)
        );
        let _ = writeln!(r, "compute     ≈ {:.2e} training FLOPs (3 × forward × tokens)", 3.0 * fwd * total_tokens);
        let _ = writeln!(
            r,
            "optimizer   AdamW lr {:e}, {} to {:e} after {} warm-up steps, weight decay {}, clip {}",
            self.optim.lr, self.optim.schedule, self.optim.min_lr, self.optim.warmup_steps, self.optim.weight_decay, self.optim.grad_clip
        );
        let _ = writeln!(r);
        let name_w = layers.iter().map(|l| l.mixer.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(
            r,
            "{:>5}  {:<name_w$}  {:<12}  {:>12}  {:>12}  {:>14}  {:>10}",
            "layer", "mixer", "kind", "params", "FLOPs/token", "state floats", "state f32"
        );
        for l in &layers {
            let _ = writeln!(
                r,
                "{:>5}  {:<name_w$}  {:<12}  {:>12}  {:>12}  {:>14}  {:>10}",
                l.layer,
                l.mixer,
                l.kind,
                l.params,
                si(l.flops_per_token),
                l.state_floats,
                bytes(4 * l.state_floats)
            );
        }
        let _ = writeln!(
            r,
            "{:>5}  {:<name_w$}  {:<12}  {:>12}  {:>12}  {:>14}  {:>10}",
            "total",
            "",
            "",
            layers.iter().map(|l| l.params).sum::<usize>(),
            si(layers.iter().map(|l| l.flops_per_token).sum()),
            state,
            bytes(4 * state)
        );
        let _ = writeln!(
            r,
            "\nparams and FLOPs/token are per block (mixer + MLP + 2 norms); the embedding, final norm\n\
             and output head come on top. State is the generation state per sequence after seq_len tokens."
        );
        let _ = writeln!(
            r,
            "generation state per sequence after {seq} tokens: {state} floats = {} at f32",
            bytes(4 * state)
        );
        r
    }
}

/// Deserializes `table` into `T`, turning serde's error into one that names the key and its line.
fn deserialize<T: DeserializeOwned>(table: &Table, locator: &Locator) -> Result<T, RecipeError> {
    let err = match serde_path_to_error::deserialize::<_, T>(Value::Table(table.clone())) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut path: Vec<Seg> = err
        .path()
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            _ => None,
        })
        .collect();
    let message = err.into_inner().message().trim().to_string();
    // Mixer tables are an internally tagged enum: serde buffers them and loses the path below
    // `model.mixers.NAME`, so find the offending key ourselves; the tag `kind` itself gets our
    // own messages too.
    let mixer_name = match path.as_slice() {
        [Seg::Key(a), Seg::Key(b), Seg::Key(name)] if a == "model" && b == "mixers" => Some(name.clone()),
        [Seg::Key(a), Seg::Key(b), Seg::Key(name), Seg::Key(k)] if a == "model" && b == "mixers" && k == "kind" => {
            Some(name.clone())
        }
        _ => None,
    };
    if let Some(name) = mixer_name {
        path.truncate(3);
        if let Some(Value::Table(mixer)) = lookup(table, &path) {
            return Err(mixer_error(mixer, &name, &message, locator));
        }
    }
    Err(classify(&mut path, &message, table, locator))
}

/// Turns a serde message at `path` into a located error.
fn classify(path: &mut Vec<Seg>, message: &str, table: &Table, locator: &Locator) -> RecipeError {
    let ticks = backticked(message);
    if let (true, Some(field)) = (message.starts_with("unknown field "), ticks.first()) {
        let in_table = lookup_table(table, path).is_some_and(|t| t.contains_key(field.as_str()));
        if in_table && path.last() != Some(&Seg::Key(field.clone())) {
            path.push(Seg::Key(field.clone()));
        }
        let expected = ticks[1..].to_vec();
        let kind = ErrorKind::UnknownKey { key: dotted(path), suggestion: suggest(field, &expected), expected };
        return locator.error(path, kind);
    }
    if let (true, Some(field)) = (message.starts_with("missing field "), ticks.first()) {
        path.push(Seg::Key(field.clone()));
        let hint = if path.len() == 1 { format!(" (the recipe needs a [{field}] section)") } else { String::new() };
        return locator.error(path, ErrorKind::MissingKey { key: dotted(path), hint });
    }
    let mut message = message.to_string();
    if let (true, Some(variant)) = (message.starts_with("unknown variant "), ticks.first()) {
        if let Some(s) = suggest(variant, &ticks[1..]) {
            message.push_str(&format!(" (did you mean {s:?}?)"));
        }
    }
    locator.error(path, ErrorKind::Invalid { key: dotted(path), message })
}

/// Locates an error inside `[model.mixers.NAME]`, whose path serde does not report.
fn mixer_error(mixer: &Table, name: &str, message: &str, locator: &Locator) -> RecipeError {
    let base = vec![Seg::Key("model".into()), Seg::Key("mixers".into()), Seg::Key(name.into())];
    let at = |key: &str| {
        let mut p = base.clone();
        p.push(Seg::Key(key.into()));
        p
    };
    let kinds: Vec<String> = KINDS.iter().map(|k| k.to_string()).collect();
    match mixer.get("kind") {
        None => {
            let path = at("kind");
            let hint = format!(" (every mixer table needs kind = one of: {})", KINDS.join(", "));
            return locator.error(&path, ErrorKind::MissingKey { key: dotted(&path), hint });
        }
        Some(Value::String(kind)) if !KINDS.contains(&kind.as_str()) => {
            let path = at("kind");
            let guess = suggest(kind, &kinds).map(|s| format!("did you mean {s:?}? ")).unwrap_or_default();
            let message = format!("unknown mixer kind {kind:?} ({guess}known: {})", KINDS.join(", "));
            return locator.error(&path, ErrorKind::Invalid { key: dotted(&path), message });
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            let path = at("kind");
            let message = format!("invalid type: {}, expected a string (one of: {})", doc::a_type(other), KINDS.join(", "));
            return locator.error(&path, ErrorKind::Invalid { key: dotted(&path), message });
        }
    }
    let mut path = base.clone();
    let ticks = backticked(message);
    if message.starts_with("unknown field ") && ticks.first().is_some_and(|f| mixer.contains_key(f.as_str())) {
        return classify(&mut path, message, &wrap(&base, mixer), locator);
    }
    // Another error (a wrong type or value): the culprit is the key whose removal changes it.
    for key in mixer.keys().filter(|k| *k != "kind") {
        let mut without = mixer.clone();
        without.remove(key);
        let changed = match Value::Table(without).try_into::<MixerConfig>() {
            Ok(_) => true,
            Err(e) => e.message().trim() != message,
        };
        if changed {
            path.push(Seg::Key(key.clone()));
            break;
        }
    }
    classify(&mut path, message, &Table::new(), locator)
}

/// A table holding `inner` at `path` (so `classify` can look keys up under it).
fn wrap(path: &[Seg], inner: &Table) -> Table {
    let mut value = Value::Table(inner.clone());
    for seg in path.iter().rev() {
        if let Seg::Key(k) = seg {
            let mut t = Table::new();
            t.insert(k.clone(), value);
            value = Value::Table(t);
        }
    }
    match value {
        Value::Table(t) => t,
        _ => unreachable!(),
    }
}

fn lookup<'a>(table: &'a Table, path: &[Seg]) -> Option<&'a Value> {
    let mut it = path.iter();
    let mut value = match it.next() {
        None => return None,
        Some(Seg::Key(k)) => table.get(k)?,
        Some(Seg::Index(_)) => return None,
    };
    for seg in it {
        value = match (seg, value) {
            (Seg::Key(k), Value::Table(t)) => t.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

fn lookup_table<'a>(table: &'a Table, path: &[Seg]) -> Option<&'a Table> {
    if path.is_empty() {
        return Some(table);
    }
    match lookup(table, path) {
        Some(Value::Table(t)) => Some(t),
        _ => None,
    }
}

/// The `` `quoted` `` words of a serde message, in order.
fn backticked(message: &str) -> Vec<String> {
    message.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// `361.8M`-style rendering.
fn si(x: f64) -> String {
    let units = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in units {
        if x.abs() >= scale {
            return format!("{:.2}{unit}", x / scale);
        }
    }
    format!("{x:.0}")
}

/// `1.25 MiB`-style rendering.
fn bytes(n: usize) -> String {
    let x = n as f64;
    let units = [(1024f64.powi(3), "GiB"), (1024f64.powi(2), "MiB"), (1024.0, "KiB")];
    for (scale, unit) in units {
        if x >= scale {
            return format!("{:.2} {unit}", x / scale);
        }
    }
    format!("{n} B")
}
