//! `ember linearize`: turn a pretrained softmax Transformer (a Hugging Face Llama / Qwen2 /
//! Mistral directory) into a sub-quadratic student, LoLCATs-style (LAYERS.md §9):
//!
//! 1. **Student.** The chosen attention layers become student mixers (`lolcats`, the Lizard-style
//!    `lolcats` with `decay`/`sinks`, `gla` or `based_linear`) that take over whatever teacher
//!    weights fit them ([`adopt`]); everything else is the teacher's.
//! 2. **Stage 1, attention transfer.** Only the new parameters train: each student mixer's
//!    output is pulled towards its teacher layer's output on the teacher's own hidden states
//!    (MSE, summed over the replaced layers). The layers are independent given the teacher's
//!    activations, so this is block-wise training by construction.
//! 3. **Stage 2, low-rank linearizing.** LoRA adapters on the student mixers' projections (or
//!    any parameters `stage2.trainable` names) train on next-token loss, optionally with a KL
//!    term to the teacher's logits. This is an ordinary `ember train` run of the student recipe
//!    written to `<out_dir>/student.toml`, so its checkpoints work with `export`, `generate`
//!    and `eval` like any other.
//!
//! Both stages checkpoint and resume; a finished stage is skipped when the command is re-run.
//! `<out_dir>/report.json` and `report.md` compare teacher and student on the same held-out text.
use crate::checkpoint::{self, TrainerState};
use crate::metrics::Metrics;
use crate::optim::{set_trainable, AdamW};
use crate::recipe::{parse_document, DataConfig, LogConfig, OptimConfig, Recipe, RecipeError, RecipeSource, TrainConfig};
use crate::trainer::{self, batch_tensor, evaluate, open_run_data, Distill, Start, TrainOptions};
use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use ember_data::Batch;
use ember_layers::attention::{Attention, AttentionConfig};
use ember_layers::lora::LoraConfig;
use ember_layers::seeded::with_seed;
use ember_layers::{Mixer, MixerConfig};
use ember_models::{hf, Lm, LmConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A linearization recipe (`recipes/linearize/*.toml`); docs/RECIPES.md lists every key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearizeRecipe {
    pub teacher: TeacherConfig,
    pub student: StudentConfig,
    /// As in a training recipe: tokenizer (the teacher's), train and valid text, `seq_len`.
    pub data: DataConfig,
    pub stage1: Stage1Config,
    pub stage2: Stage2Config,
    pub run: RunConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(skip)]
    pub source: RecipeSource,
}

/// `[teacher]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// A Hugging Face model directory (`config.json`, safetensors, `tokenizer.json`).
    pub path: PathBuf,
}

/// `[student]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// 0-based layers to linearize; absent means every layer.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// The student mixer (`[student.mixer]`, a mixer table): `lolcats`, `gla` or
    /// `based_linear`. Heads, widths and RoPE come from the teacher.
    pub mixer: MixerConfig,
}

/// `[stage1]`: attention transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage1Config {
    pub steps: usize,
    pub batch_size: usize,
    /// Multiplies the summed per-layer MSE. Default `1.0`.
    #[serde(default = "one")]
    pub mse_weight: f64,
    pub optim: OptimConfig,
}

/// `[stage2]`: low-rank linearizing (fine-tuning with the teacher's attention gone).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Config {
    /// `0` skips the stage.
    pub steps: usize,
    pub batch_size: usize,
    /// LoRA adapters on the student mixers' projections (`lolcats` students).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Parameters whose path contains any of these train; the rest stay frozen.
    /// Default `["lora"]`.
    #[serde(default = "default_trainable")]
    pub trainable: Vec<String>,
    /// Weight of next-token cross-entropy when distilling (`kl_weight > 0`). Default `1.0`.
    #[serde(default = "one")]
    pub ce_weight: f64,
    /// Weight of `τ² · KL(teacher ‖ student)` on the logits; `0` (default) needs no teacher pass.
    #[serde(default)]
    pub kl_weight: f64,
    /// Distillation temperature τ. Default `1.0`.
    #[serde(default = "one")]
    pub temperature: f64,
    pub optim: OptimConfig,
}

/// `[run]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: String,
    /// Default `checkpoints/<name>`.
    #[serde(default)]
    pub out_dir: PathBuf,
    #[serde(default = "fifty")]
    pub eval_interval: usize,
    #[serde(default = "eight")]
    pub eval_batches: usize,
    #[serde(default = "fifty")]
    pub checkpoint_interval: usize,
    #[serde(default = "two")]
    pub keep_last: usize,
    /// Sequence lengths at which to measure generation (tokens/s and state size) of teacher
    /// and student after training. Default: none.
    #[serde(default)]
    pub generation_lengths: Vec<usize>,
}

fn one() -> f64 {
    1.0
}
fn fifty() -> usize {
    50
}
fn eight() -> usize {
    8
}
fn two() -> usize {
    2
}
fn default_device() -> String {
    "auto".into()
}
fn default_trainable() -> Vec<String> {
    vec!["lora".into()]
}

/// Sequences per validation batch of the teacher/student comparison.
pub const EVAL_BATCH: usize = 8;

/// The mixer name the student's layers get in its recipe.
pub const STUDENT: &str = "student";

impl LinearizeRecipe {
    /// Reads, overrides, validates and resolves the paths of a linearization recipe.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let path = Recipe::resolve_path(path)?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            RecipeError::new(&path, crate::recipe::Origin::File, crate::recipe::ErrorKind::Read { message: e.to_string() })
        })?;
        let mut recipe = Self::from_str(&text, &path, overrides)?;
        let s = &recipe.source;
        recipe.teacher.path = s.resolve_path("teacher.path", "directory", &recipe.teacher.path)?;
        Ok(recipe)
    }

    pub fn from_str(text: &str, origin: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let (mut recipe, source): (LinearizeRecipe, _) = parse_document(text, origin, overrides)?;
        recipe.source = source;
        if recipe.run.out_dir.as_os_str().is_empty() {
            recipe.run.out_dir = Path::new("checkpoints").join(&recipe.run.name);
        }
        let fail = |key: &str, msg: &str| Err(recipe.source.error_at(key, msg));
        match &recipe.student.mixer {
            MixerConfig::Lolcats(_) | MixerConfig::Gla(_) | MixerConfig::BasedLinear(_) => {}
            other => return fail("student.mixer.kind", &format!("a student is \"lolcats\", \"gla\" or \"based_linear\", not {:?}", other.kind())),
        }
        for (key, size) in [("stage1.batch_size", recipe.stage1.batch_size), ("stage2.batch_size", recipe.stage2.batch_size)] {
            if size == 0 {
                return fail(key, "must be positive");
            }
        }
        if let Some(lora) = &recipe.stage2.lora {
            if let Err(e) = lora.validate() {
                return fail("stage2.lora", &e);
            }
            if !matches!(recipe.student.mixer, MixerConfig::Lolcats(_)) {
                return fail("stage2.lora", "LoRA adapters exist on lolcats students; for gla and based_linear students set stage2.trainable (e.g. [\"mixer\"]) instead");
            }
        }
        if !(recipe.stage2.temperature > 0.0) {
            return fail("stage2.temperature", "must be positive");
        }
        if recipe.run.eval_interval == 0 || recipe.run.checkpoint_interval == 0 {
            return fail("run.eval_interval", "eval_interval and checkpoint_interval must be positive");
        }
        Ok(recipe)
    }

    /// The student's model: the teacher's with the chosen layers' mixers replaced, each
    /// student mixer completed with the teacher's heads, widths and RoPE.
    pub fn student_model(&self, teacher: &LmConfig, with_lora: bool) -> Result<LmConfig> {
        let attention = teacher_attention(teacher)?;
        let mut mixer = complete(&self.student.mixer, &attention, teacher.d_model, teacher.norm_eps).map_err(|e| anyhow::anyhow!("{}", self.source.error_at("student.mixer", e)))?;
        if let (MixerConfig::Lolcats(c), true) = (&mut mixer, with_lora) {
            c.lora = self.stage2.lora.clone();
        }
        let layers = self.layers(teacher.n_layers)?;
        let mut student = teacher.clone();
        student.mixers.insert(STUDENT.into(), mixer);
        if layers.len() == teacher.n_layers {
            student.mixers.retain(|name, _| name == STUDENT);
            student.schedule.default = STUDENT.into();
            student.schedule.at.clear();
        } else {
            student.schedule.at.insert(STUDENT.into(), layers);
        }
        student.validate().map_err(|(key, msg)| anyhow::anyhow!("the student model is invalid at {key}: {msg}"))?;
        Ok(student)
    }

    /// The replaced layers, checked against the teacher's depth.
    pub fn layers(&self, n_layers: usize) -> Result<Vec<usize>> {
        let layers = self.student.layers.clone().unwrap_or_else(|| (0..n_layers).collect());
        if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
            bail!("{}", self.source.error_at("student.layers", format!("layer {bad} is out of range: the teacher has {n_layers} layers")));
        }
        if layers.is_empty() {
            bail!("{}", self.source.error_at("student.layers", "names no layer"));
        }
        Ok(layers)
    }

    /// The ordinary training recipe of stage 2 (and of the finished student): written to
    /// `<out_dir>/student.toml` and saved in every stage-2 checkpoint.
    pub fn student_recipe(&self, teacher: &LmConfig) -> Result<Recipe> {
        let recipe = Recipe {
            model: self.student_model(teacher, true)?,
            data: self.data.clone(),
            optim: self.stage2.optim.clone(),
            train: TrainConfig {
                name: format!("{}-student", self.run.name),
                batch_size: self.stage2.batch_size,
                steps: Some(self.stage2.steps.max(1)),
                tokens: None,
                eval_interval: self.run.eval_interval,
                eval_batches: self.run.eval_batches,
                stop_accuracy: None,
                checkpoint_interval: self.run.checkpoint_interval,
                keep_last: self.run.keep_last,
                seed: self.run.seed,
                device: self.run.device.clone(),
                dtype: "f32".into(),
                kernels: Default::default(),
                out_dir: self.run.out_dir.join("stage2"),
            },
            log: LogConfig { samples: 0, ..self.log.clone() },
            source: Default::default(),
        };
        let text = format!(
            "# The student of linearization run {:?} (from {}): ember linearize wrote this.\n{}",
            self.run.name,
            self.source.path.display(),
            toml::to_string(&recipe).context("serialising the student recipe")?
        );
        let mut student = Recipe::from_str(&text, &self.run.out_dir.join("student.toml"), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Data paths resolve against the linearization recipe, where they were written.
        let own = std::mem::replace(&mut student.source, self.source.clone());
        student.check_files().map_err(|e| anyhow::anyhow!("{e}"))?;
        student.source = own;
        Ok(student)
    }
}

/// The attention config every layer of an HF teacher shares.
fn teacher_attention(teacher: &LmConfig) -> Result<AttentionConfig> {
    match teacher.mixers.values().next() {
        Some(MixerConfig::Attention(a)) if teacher.mixers.len() == 1 => Ok(a.clone()),
        _ => bail!("the teacher must be an attention-only model (one attention mixer)"),
    }
}

/// `spec` with the teacher's shapes filled in, so the student can take over its weights.
fn complete(spec: &MixerConfig, a: &AttentionConfig, d_model: usize, norm_eps: f64) -> Result<MixerConfig, String> {
    let dh = a.head_dim(d_model);
    let width = (a.heads * dh) as f64 / d_model as f64;
    Ok(match spec {
        MixerConfig::Lolcats(c) => {
            let mut c = c.clone();
            c.attention = AttentionConfig { window: None, ..a.clone() };
            c.lora = None;
            MixerConfig::Lolcats(c)
        }
        MixerConfig::Gla(c) => {
            if a.qkv_bias || a.out_bias {
                return Err("a gla student cannot take over biased q/k/v/o projections (gla has no biases)".into());
            }
            let mut c = c.clone();
            c.heads = a.heads;
            c.expand_k = width;
            c.expand_v = width;
            // The head norm shares the model's epsilon, as in fla's GLA (so `--format fla` can
            // write the student).
            c.norm_eps = norm_eps;
            MixerConfig::Gla(c)
        }
        MixerConfig::BasedLinear(c) => {
            if a.heads * dh != d_model || a.qkv_bias || a.out_bias {
                return Err("a based_linear student takes over v and o only from teachers with heads·head_dim = d_model and no biases".into());
            }
            let mut c = c.clone();
            c.heads = a.heads;
            MixerConfig::BasedLinear(c)
        }
        other => return Err(format!("{:?} cannot be a student", other.kind())),
    })
}

/// The submodules of a student mixer that hold teacher weights (frozen in stage 1).
fn adopted(kind: &str) -> &'static [&'static str] {
    match kind {
        "lolcats" => &["qkv", "out"],
        "gla" => &["q", "k", "v", "out"],
        "based_linear" => &["v", "out"],
        _ => &[],
    }
}

/// `[d, Hkv·dh]` columns → `[d, H·dh]`, query head `h` reading kv head `h / groups`.
fn repeat_columns<B: Backend>(w: Tensor<B, 2>, kv_heads: usize, groups: usize) -> Tensor<B, 2> {
    let [d, width] = w.dims();
    let dh = width / kv_heads;
    w.reshape([d, kv_heads, 1, dh]).expand([d, kv_heads, groups, dh]).reshape([d, kv_heads * groups * dh])
}

/// A bias-free projection holding a copy of (columns of) a teacher weight: a new leaf, so it
/// can train in stage 2 without reaching back into the teacher's tensors.
fn take_weight<B: Backend>(w: Tensor<B, 2>) -> Linear<B> {
    Linear { weight: Param::from_tensor(w.detach()), bias: None }
}

/// The student mixer with the teacher's projections in place of its fresh ones.
fn adopt<B: Backend>(student: Mixer<B>, teacher: &Attention<B>) -> Mixer<B> {
    let (h, hkv, dh) = (teacher.heads, teacher.kv_heads, teacher.head_dim);
    let w = teacher.qkv.weight.val();
    let q = w.clone().narrow(1, 0, h * dh);
    let k = repeat_columns(w.clone().narrow(1, h * dh, hkv * dh), hkv, h / hkv);
    let v = repeat_columns(w.narrow(1, (h + hkv) * dh, hkv * dh), hkv, h / hkv);
    match student {
        Mixer::Lolcats(mut m) => {
            m.qkv = teacher.qkv.clone();
            m.out = teacher.out.clone();
            Mixer::Lolcats(m)
        }
        Mixer::Gla(mut m) => {
            m.q = take_weight(q);
            m.k = take_weight(k);
            m.v = take_weight(v);
            m.out = teacher.out.clone();
            Mixer::Gla(m)
        }
        Mixer::BasedLinear(mut m) => {
            m.v = take_weight(v);
            m.out = teacher.out.clone();
            Mixer::BasedLinear(m)
        }
        other => other,
    }
}

/// The stage-1 student: the teacher everywhere, with fresh student mixers (seeded, layer `l`
/// from `seed + l`) that have taken over the teacher's projections in the replaced layers.
/// Only the new mixers are allocated: the rest shares the teacher's tensors.
fn graft<B: Backend>(teacher: &Lm<B>, student_config: &LmConfig, layers: &[usize], seed: u64, device: &B::Device) -> Lm<B> {
    let mut student = teacher.clone();
    let spec = &student_config.mixers[STUDENT];
    for &l in layers {
        if let Mixer::Attention(att) = &teacher.blocks[l].mixer {
            let fresh = student_config.init_mixer_seeded::<B>(spec, l, seed.wrapping_add(l as u64), device);
            student.blocks[l].mixer = adopt(fresh, att);
        }
    }
    student
}

/// What a stage-1 checkpoint holds: the replaced layers' mixers only (the rest is the teacher's,
/// unchanged), so a large teacher is not written again at every checkpoint.
#[derive(burn::module::Module, Debug)]
struct StudentMixers<B: Backend> {
    layers: Vec<Mixer<B>>,
}

impl<B: Backend> StudentMixers<B> {
    /// The mixers of `layers` (a module clone shares the tensors).
    fn of(student: &Lm<B>, layers: &[usize]) -> Self {
        Self { layers: layers.iter().map(|&l| student.blocks[l].mixer.clone()).collect() }
    }

    fn put_into(self, mut student: Lm<B>, layers: &[usize]) -> Lm<B> {
        for (mixer, &l) in self.layers.into_iter().zip(layers) {
            student.blocks[l].mixer = mixer;
        }
        student
    }
}

/// Whether `path` is a stage-1 trainable parameter: inside a replaced layer's mixer and not
/// one of the projections it took over (`blocks.3.mixer.Lolcats.feature_q` yes,
/// `blocks.3.mixer.Lolcats.qkv.weight` no).
fn transfer_trainable(path: &str, layers: &[usize], kind: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["blocks", l, "mixer", _variant, field, ..] => {
            l.parse::<usize>().is_ok_and(|l| layers.contains(&l)) && !adopted(kind).contains(field)
        }
        _ => false,
    }
}

/// How to run, beyond the recipe.
#[derive(Clone, Debug, Default)]
pub struct LinearizeOptions {
    pub quiet: bool,
    /// Stop stage 1 after this many steps (checkpointed), as an interruption would (tests).
    pub stop_after: Option<usize>,
}

/// Held-out loss of one model, and the stage it was measured after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measured {
    pub model: String,
    pub tokens_trained: u64,
    pub valid_loss: f64,
    pub valid_perplexity: f64,
}

/// Generation cost at one sequence length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationCost {
    pub model: String,
    pub length: usize,
    /// Floats of generation state (KV cache, or the student's window + linear state) per sequence.
    pub state_floats: usize,
    pub tokens_per_sec: f64,
}

/// What `ember linearize` measured (`<out_dir>/report.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearizeReport {
    pub teacher: String,
    pub student_kind: String,
    pub layers: Vec<usize>,
    pub valid_tokens: usize,
    pub rows: Vec<Measured>,
    /// Per replaced layer after stage 1: `‖student − teacher‖² / ‖teacher‖²` of the mixer output
    /// on the validation text (teacher activations as inputs).
    pub layer_errors: Vec<(usize, f64)>,
    pub generation: Vec<GenerationCost>,
    /// Stage 1 stopped early (`stop_after`): nothing after it ran.
    pub interrupted: bool,
}

impl LinearizeReport {
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!("# Linearization of {} into {} (layers {:?})\n\n", self.teacher, self.student_kind, self.layers);
        let _ = writeln!(s, "Validation: {} tokens of held-out text, the same for every row.\n", self.valid_tokens);
        let _ = writeln!(s, "| model | tokens trained | valid loss | perplexity |\n|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(s, "| {} | {} | {:.4} | {:.2} |", r.model, r.tokens_trained, r.valid_loss, r.valid_perplexity);
        }
        let _ = writeln!(s, "\nPer-layer mixer-output error after stage 1 (‖student − teacher‖² / ‖teacher‖²):\n");
        let _ = writeln!(s, "| layer | relative error |\n|---|---|");
        for (l, e) in &self.layer_errors {
            let _ = writeln!(s, "| {l} | {e:.4} |");
        }
        if !self.generation.is_empty() {
            let _ = writeln!(s, "\nGeneration, one sequence, token by token:\n");
            let _ = writeln!(s, "| model | length | state floats | tokens/s |\n|---|---|---|---|");
            for g in &self.generation {
                let _ = writeln!(s, "| {} | {} | {} | {:.1} |", g.model, g.length, g.state_floats, g.tokens_per_sec);
            }
        }
        s
    }
}

/// Mean over `batches` of each replaced layer's relative mixer-output error.
fn layer_errors<B: Backend>(teacher: &Lm<B>, student: &Lm<B>, layers: &[usize], batches: &[Batch], device: &B::Device) -> Vec<(usize, f64)> {
    let mut sums = vec![0.0; layers.len()];
    for batch in batches {
        let io = teacher.mixer_io(batch_tensor::<B>(&batch.inputs, batch, device));
        for (i, &l) in layers.iter().enumerate() {
            let (x, y) = io[l].clone();
            let err = (student.blocks[l].mixer.forward(x) - y.clone()).powi_scalar(2).sum() / y.powi_scalar(2).sum();
            sums[i] += err.into_scalar().elem::<f64>();
        }
    }
    layers.iter().zip(sums).map(|(&l, s)| (l, s / batches.len().max(1) as f64)).collect()
}

fn measured<B: Backend>(name: &str, model: &Lm<B>, tokens: u64, batches: &[Batch], device: &B::Device) -> Measured {
    let loss = evaluate(model, batches, device).loss;
    Measured { model: name.into(), tokens_trained: tokens, valid_loss: loss, valid_perplexity: loss.exp() }
}

/// Generates `length` tokens one at a time (token ids cycling through `0..vocab`) and reports
/// the state size at the end and the rate over the whole run.
fn generation_cost<B: Backend>(name: &str, model: &Lm<B>, length: usize, vocab: usize, device: &B::Device) -> GenerationCost {
    let started = Instant::now();
    let mut state = None;
    for i in 0..length {
        let token = Tensor::<B, 2, Int>::from_data(burn::tensor::TensorData::new(vec![(i % vocab) as i64], [1, 1]), device);
        let (logits, s) = model.step(token, state);
        let _ = logits.into_data(); // wait for the device
        state = Some(s);
    }
    let state_floats = state.map_or(0, |s| s.numel());
    GenerationCost { model: name.into(), length, state_floats, tokens_per_sec: length as f64 / started.elapsed().as_secs_f64().max(1e-9) }
}

/// Runs (or resumes) both stages of `recipe` and writes the report.
pub fn linearize<B: AutodiffBackend>(recipe: &LinearizeRecipe, opts: &LinearizeOptions, device: &B::Device) -> Result<LinearizeReport> {
    let say = |msg: String| if !opts.quiet { eprintln!("{msg}") };
    let teacher = hf::load::<B>(&recipe.teacher.path, device).with_context(|| format!("loading the teacher from {}", recipe.teacher.path.display()))?;
    let teacher_config = teacher.lm_config.clone();
    let layers = recipe.layers(teacher_config.n_layers)?;
    let kind = recipe.student.mixer.kind();
    let student_recipe = recipe.student_recipe(&teacher_config)?;
    let out = &recipe.run.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("student.toml"), &student_recipe.source.text)?;
    let teacher_eval = teacher.model.valid();

    // Stage 1 reads the student recipe's data with its own batch size; the comparison uses
    // `run.eval_batches` batches of EVAL_BATCH sequences whatever the stages' batch sizes.
    let mut stage1_data = student_recipe.clone();
    stage1_data.train.batch_size = recipe.stage1.batch_size;
    let mut loader = open_run_data(&stage1_data, false)?.loader;
    stage1_data.train.batch_size = EVAL_BATCH;
    let valid = open_run_data(&stage1_data, true)?.valid;
    if valid.is_empty() {
        bail!("{}", recipe.source.error_at("data.valid", "linearization compares teacher and student on held-out text: set data.valid"));
    }
    let valid_tokens = valid.iter().map(|b| b.batch_size * b.seq_len).sum();
    let mut report = LinearizeReport {
        teacher: recipe.teacher.path.display().to_string(),
        student_kind: kind.into(),
        layers: layers.clone(),
        valid_tokens,
        rows: vec![measured("teacher", &teacher_eval, 0, &valid, device)],
        layer_errors: Vec::new(),
        generation: Vec::new(),
        interrupted: false,
    };
    say(format!("teacher {}: valid loss {:.4} (ppl {:.2})", report.teacher, report.rows[0].valid_loss, report.rows[0].valid_perplexity));

    // ---- Stage 1: attention transfer.
    let stage1_config = recipe.student_model(&teacher_config, false)?;
    let stage1_dir = out.join("stage1");
    let mut student = graft(&teacher.model, &stage1_config, &layers, recipe.run.seed, device);
    let mut optimizer = AdamW::<B::InnerBackend>::new(recipe.stage1.optim.clone());
    let mut state = TrainerState { step: 0, tokens: 0, loader: loader.state(), elapsed_secs: 0.0, last_val_loss: None, last_val_accuracy: None, finished: false };
    if let Ok(ckpt) = checkpoint::resolve(&stage1_dir) {
        state = checkpoint::load_state(&ckpt)?;
        let saved = checkpoint::load_model(&ckpt, StudentMixers::of(&student, &layers))?;
        student = saved.put_into(student, &layers);
        optimizer = checkpoint::load_optimizer(&ckpt, recipe.stage1.optim.clone(), device)?;
        loader.restore(&state.loader).with_context(|| format!("resuming stage 1 from {}", ckpt.display()))?;
        say(format!("stage 1: resuming from {} (step {})", ckpt.display(), state.step));
    }
    student = set_trainable(student, |p| transfer_trainable(p, &layers, kind));
    let total = recipe.stage1.steps;
    let stop = opts.stop_after.map_or(total, |s| s.min(total));
    std::fs::create_dir_all(&stage1_dir).with_context(|| format!("cannot create {}", stage1_dir.display()))?;
    let mut metrics = Metrics::open(&stage1_dir, recipe.log.jsonl, recipe.log.tensorboard)?;
    let (started, elapsed_before) = (Instant::now(), state.elapsed_secs);
    let bar = trainer::progress_bar(total, state.step, opts.quiet || !recipe.log.progress);
    while state.step < stop && !state.finished {
        let lr = recipe.stage1.optim.lr_at(state.step, total);
        let mut accumulated = GradientsAccumulator::<Lm<B>>::new();
        let mut loss_sum = 0.0;
        let accum = recipe.stage1.optim.grad_accum;
        for _ in 0..accum {
            let batch = loader.next_batch();
            state.tokens += (batch.batch_size * batch.seq_len) as u64;
            // The teacher's activations (no autodiff): every replaced layer sees the teacher's
            // own input, so the layers train independently of each other.
            let io = teacher_eval.mixer_io(batch_tensor::<B::InnerBackend>(&batch.inputs, &batch, device));
            // Block-wise: each layer's loss is backpropagated on its own (the layers share no
            // trainable parameter), so only one layer's graph is alive at a time.
            for &l in &layers {
                let (x, y) = io[l].clone();
                let y_hat = student.blocks[l].mixer.forward(Tensor::from_inner(x));
                let loss = (y_hat - Tensor::from_inner(y)).powi_scalar(2).mean() * recipe.stage1.mse_weight;
                loss_sum += loss.clone().into_scalar().elem::<f64>();
                accumulated.accumulate(&student, GradientsParams::from_grads((loss / accum as f64).backward(), &student));
            }
        }
        let loss = loss_sum / accum as f64;
        if !loss.is_finite() {
            bail!("stage 1 diverged at step {}: loss is {loss} (last checkpoint is intact)", state.step);
        }
        let (updated, info) = optimizer.step(student, accumulated.grads(), lr);
        student = updated;
        state.step += 1;
        state.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
        bar.set_position(state.step as u64);
        bar.set_message(format!("stage 1  mse {loss:.4}  lr {lr:.2e}"));
        if state.step % recipe.log.every == 0 || state.step == total {
            metrics.log(state.step, &[("stage1/loss", loss), ("stage1/lr", lr), ("stage1/grad_norm", info.grad_norm), ("stage1/tokens", state.tokens as f64)])?;
        }
        if state.step % recipe.run.eval_interval == 0 || state.step == total {
            let errors = layer_errors(&teacher_eval, &student.valid(), &layers, &valid, device);
            let mean = errors.iter().map(|e| e.1).sum::<f64>() / errors.len() as f64;
            metrics.log(state.step, &[("stage1/valid_relative_error", mean)])?;
            if !opts.quiet {
                trainer::print_line(&bar, format!("stage 1 step {:>5}  loss {loss:.5}  valid relative error {mean:.4}", state.step));
            }
        }
        state.finished = state.step == total;
        if state.step % recipe.run.checkpoint_interval == 0 || state.step == stop || state.finished {
            state.loader = loader.state();
            checkpoint::save(&stage1_dir, &StudentMixers::of(&student, &layers), &optimizer, &state, &recipe.source.text, recipe.data.tokenizer.as_deref(), recipe.run.keep_last)?;
        }
    }
    bar.finish_and_clear();
    if !state.finished && total > 0 {
        report.interrupted = true;
        return Ok(report);
    }
    let stage1_tokens = state.tokens;
    let student_eval = student.valid();
    report.layer_errors = layer_errors(&teacher_eval, &student_eval, &layers, &valid, device);
    report.rows.push(measured("student after stage 1", &student_eval, stage1_tokens, &valid, device));
    say(format!("stage 1 done: student valid loss {:.4} (ppl {:.2})", report.rows[1].valid_loss, report.rows[1].valid_perplexity));

    // ---- Stage 2: LoRA (or the named parameters) on next-token loss, optionally distilled.
    let mut final_student = student_eval;
    if recipe.stage2.steps > 0 {
        let mut model = student;
        if let Some(lora) = &recipe.stage2.lora {
            let d_model = teacher_config.d_model;
            // The adapters draw eagerly (`Tensor::random`), so all of them come from the seed.
            with_seed::<B, _>(recipe.run.seed.wrapping_add(1), device, || {
                for &l in &layers {
                    if let Mixer::Lolcats(m) = &mut model.blocks[l].mixer {
                        let (q, kv) = (m.heads * m.head_dim, m.kv_heads * m.head_dim);
                        m.q_lora = lora.init("q", d_model, q, device);
                        m.k_lora = lora.init("k", d_model, kv, device);
                        m.v_lora = lora.init("v", d_model, kv, device);
                        m.out_lora = lora.init("o", q, d_model, device);
                    }
                }
            });
        }
        let stage2_dir = &student_recipe.train.out_dir;
        let resume = checkpoint::resolve(stage2_dir).ok();
        let distill = (recipe.stage2.kl_weight > 0.0).then(|| Distill {
            teacher: teacher_eval.clone(),
            ce_weight: recipe.stage2.ce_weight,
            kl_weight: recipe.stage2.kl_weight,
            temperature: recipe.stage2.temperature,
        });
        // The trained student is read back into this model's shape (sharing the teacher's
        // tensors until then) rather than into a freshly initialised copy.
        let shape = model.valid();
        let start = Start { model, trainable: Some(recipe.stage2.trainable.clone()), distill };
        say(format!("stage 2: {} steps of {} (trainable: {:?})", recipe.stage2.steps, student_recipe.train.name, recipe.stage2.trainable));
        let topts = TrainOptions { resume, stop_after: None, quiet: opts.quiet };
        trainer::train_from::<B>(&student_recipe, &topts, device, Some(start))?;
        let ckpt = checkpoint::resolve(stage2_dir)?;
        let trained: Lm<B::InnerBackend> = checkpoint::load_model(&ckpt, shape)?;
        let tokens = checkpoint::load_state(&ckpt)?.tokens;
        report.rows.push(measured("student after stage 2", &trained, stage1_tokens + tokens, &valid, device));
        say(format!("stage 2 done: student valid loss {:.4} (ppl {:.2})", report.rows[2].valid_loss, report.rows[2].valid_perplexity));
        final_student = trained;
    }

    for &length in &recipe.run.generation_lengths {
        let vocab = teacher_config.vocab_size;
        report.generation.push(generation_cost("teacher", &teacher_eval, length, vocab, device));
        report.generation.push(generation_cost("student", &final_student, length, vocab, device));
    }
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.md"), report.markdown())?;
    Ok(report)
}
