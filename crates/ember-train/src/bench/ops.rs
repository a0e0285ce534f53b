//! `ember bench ops`: forward and forward+backward time of each mixer's training form (or of
//! the core ops alone) over a grid of `(B, T, H, D)` shapes, in the layout and at the shapes
//! flash-linear-attention benchmarks its kernels at.
//!
//! Every timed call is `loss = sum(output in f32)`, then `loss.backward()` for the
//! forward+backward column; the device is synced before each clock read. A shape whose
//! estimated peak memory exceeds the limit is skipped, not attempted; after a point fails on a
//! CubeCL device (wgpu, cuda), the points after it are reported as not run.
use super::{gib, median_ms, time_reps};
use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, Tensor};
use ember_layers::mixer::{MixerConfig, KINDS};
use ember_layers::seeded::{build_seeded, with_seed};
use ember_ops::kernels::{self, Kernels};
use ember_ops::precision::{cast_params, supported, to_dtype, to_f32, Precision};
use ember_ops::taylor::FeatureMap;
use burn::tensor::activation::log_sigmoid;
use ember_ops::{gated_linear_attention as gla, linear_attention, softmax_attention, taylor, Form};
use serde::Serialize;
use serde_json::{json, Value};

/// What is timed: whole mixers (projections included) or the sequence ops alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Each mixer kind of the registry, built at `heads = H`, `d_model = H·D`, on `x: [B, T, H·D]`.
    Mixer,
    /// The ops on `q, k, v: [B, T, H, D]`: what fla's kernels compute.
    Op,
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mixer" => Ok(Level::Mixer),
            "op" => Ok(Level::Op),
            other => Err(format!("unknown level {other:?} (known: mixer, op)")),
        }
    }
}

/// The ops of `--level op`, each with the forms it is timed in.
pub const OPS: &[(&str, &[Form])] = &[
    ("softmax_attention", &[Form::Parallel]),
    ("linear_attention", &[Form::Parallel, Form::Chunked]),
    ("based_taylor", &[Form::Parallel, Form::Chunked]),
    // GLA's op: a data-dependent decay per key channel.
    ("gla", &[Form::Parallel, Form::Chunked]),
    // A data-dependent decay per head (Lightning-2's algorithm; TransNormer's constant decay is
    // the same computation).
    ("decay_per_head", &[Form::Parallel, Form::Chunked]),
];

/// Query/key feature dimension of the BASED Taylor op (as BASED uses), and chunk length of the
/// chunked forms (ember's default, and fla's).
pub const TAYLOR_DIM: usize = 16;
pub const CHUNK: usize = 64;

/// One grid point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B={} T={} H={} D={}", self.batch, self.seq_len, self.heads, self.head_dim)
    }
}

/// A grid: every combination of the lists; with `tokens`, the batch of each point is
/// `tokens / seq_len` instead (fla's convention: a fixed number of tokens per call).
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub batch: Vec<usize>,
    pub seq_len: Vec<usize>,
    pub heads: Vec<usize>,
    pub head_dim: Vec<usize>,
    pub tokens: Option<usize>,
}

impl Grid {
    pub const PRESETS: &'static [&'static str] = &["cpu", "fla"];

    /// `fla`: bf16 peers' grid, 65,536 tokens per call at T = 1K…32K, H = 16, D = 64.
    /// `cpu`: small shapes that finish in minutes on two cores.
    pub fn preset(name: &str) -> Result<Grid, String> {
        match name {
            "fla" => Ok(Grid {
                batch: vec![],
                seq_len: vec![1024, 2048, 4096, 8192, 16384, 32768],
                heads: vec![16],
                head_dim: vec![64],
                tokens: Some(65536),
            }),
            "cpu" => Ok(Grid { batch: vec![2], seq_len: vec![256, 512, 1024], heads: vec![4], head_dim: vec![64], tokens: None }),
            other => Err(format!("unknown grid {other:?} (known: {})", Self::PRESETS.join(", "))),
        }
    }

    pub fn shapes(&self) -> Result<Vec<Shape>, String> {
        let batches = |t: usize| match self.tokens {
            Some(n) if n < t || n % t != 0 => Err(format!("--tokens {n} is not a multiple of seq_len {t}")),
            Some(n) => Ok(vec![n / t]),
            None => Ok(self.batch.clone()),
        };
        let mut shapes = Vec::new();
        for &seq_len in &self.seq_len {
            for batch in batches(seq_len)? {
                for &heads in &self.heads {
                    for &head_dim in &self.head_dim {
                        shapes.push(Shape { batch, seq_len, heads, head_dim });
                    }
                }
            }
        }
        if shapes.iter().any(|s| s.batch == 0 || s.seq_len == 0 || s.heads == 0 || s.head_dim == 0) || shapes.is_empty() {
            return Err("every grid size must be a positive number, and the grid not empty".into());
        }
        Ok(shapes)
    }
}

/// How to run the benchmark.
#[derive(Clone, Debug)]
pub struct OpsOptions {
    pub level: Level,
    /// Mixer kinds (`--level mixer`) or op names (`--level op`); `None` for all.
    pub kinds: Option<Vec<String>>,
    /// Force this training form (mixers whose config has a form; ops that have it).
    pub form: Option<Form>,
    /// Mixer config keys to set (`--mixer-set`), in the configs that have them.
    pub mixer_sets: Vec<(String, Value)>,
    pub precision: Precision,
    pub warmup: usize,
    pub reps: usize,
    /// Points estimated to need more than this are skipped.
    pub max_mem_bytes: f64,
    /// Whether chunked forms run on the CubeCL kernels (their rows then say form "kernels", or
    /// "kernels-tc" where they ran on tensor cores).
    pub kernels: Kernels,
    /// Time each chunked form twice where the backend has kernels: composed, then on them.
    pub compare: bool,
}

/// One line of the result (also a JSONL object).
#[derive(Clone, Debug, Serialize)]
pub struct OpsRow {
    pub level: Level,
    /// Mixer kind or op name.
    pub name: String,
    /// Training form; "-" for a mixer with a single form (attention: parallel; base_conv).
    pub form: String,
    #[serde(flatten)]
    pub shape: Shape,
    pub dtype: String,
    pub backend: String,
    /// Estimated peak memory of the point (rough, f32 intermediates).
    pub est_mem_gib: f64,
    /// Medians over the timed repetitions.
    pub fwd_ms: Option<f64>,
    pub fwd_bwd_ms: Option<f64>,
    /// `B·T / fwd+bwd time`.
    pub tokens_per_sec: Option<f64>,
    /// Why the point was not timed (over the memory limit, or it failed).
    pub skipped: Option<String>,
}

impl OpsRow {
    pub const HEADER: &'static str =
        "level  name               form          B      T    H    D  dtype   fwd ms  fwd+bwd ms  tokens/s (fwd+bwd)";

    /// The row as a line under [`OpsRow::HEADER`].
    pub fn line(&self) -> String {
        let Shape { batch, seq_len, heads, head_dim } = self.shape;
        let level = match self.level {
            Level::Mixer => "mixer",
            Level::Op => "op",
        };
        let head = format!(
            "{level:<6} {:<18} {:<9} {batch:>5} {seq_len:>6} {heads:>4} {head_dim:>4}  {:<5}",
            self.name, self.form, self.dtype
        );
        match (&self.skipped, self.fwd_ms, self.fwd_bwd_ms, self.tokens_per_sec) {
            (Some(why), ..) => format!("{head}  {why}"),
            (None, Some(f), Some(fb), Some(tps)) => format!("{head} {f:>8.2} {fb:>11.2} {tps:>19.0}"),
            _ => format!("{head}  (no result)"),
        }
    }
}

/// A timed case: what [`OpsRow::name`] and [`OpsRow::form`] say, and how it is built.
#[derive(Clone, Debug)]
enum Case {
    Mixer(String),
    Op(&'static str, Form),
}

/// The cases `opts` selects, checked against the known kinds and ops.
fn cases(opts: &OpsOptions) -> Result<Vec<Case>> {
    let known: Vec<&str> = match opts.level {
        Level::Mixer => KINDS.to_vec(),
        Level::Op => OPS.iter().map(|(name, _)| *name).collect(),
    };
    let wanted: Vec<String> = opts.kinds.clone().unwrap_or_else(|| known.iter().map(|s| s.to_string()).collect());
    if let Some(bad) = wanted.iter().find(|k| !known.contains(&k.as_str())) {
        bail!("unknown {} {bad:?} (known: {})", if opts.level == Level::Mixer { "mixer kind" } else { "op" }, known.join(", "));
    }
    let mut cases = Vec::new();
    for name in &wanted {
        match opts.level {
            Level::Mixer => cases.push(Case::Mixer(name.clone())),
            Level::Op => {
                let (op, forms) = OPS.iter().find(|(op, _)| op == name).expect("checked above");
                let forms = forms.iter().filter(|f| opts.form.is_none_or(|want| want == **f));
                cases.extend(forms.map(|&f| Case::Op(op, f)));
            }
        }
    }
    if cases.is_empty() {
        bail!("no op has the form {}", opts.form.map_or("?".into(), |f| f.to_string()));
    }
    Ok(cases)
}

/// A mixer kind's config at `shape` (heads `H`, head width `D`, `d_model = H·D`) with its
/// default training form or `form`, and the form's name ("-" when the config has none).
///
/// Works for any registered kind: its default config is written out, and the keys `heads`,
/// `head_dim` and `form`, then `sets`, are set where it has them (each of `sets` applied is
/// added to the label).
pub fn mixer_config(kind: &str, shape: &Shape, form: Option<Form>, sets: &[(String, Value)]) -> Result<(MixerConfig, String)> {
    let default: MixerConfig = serde_json::from_value(json!({ "kind": kind }))?;
    let mut value = serde_json::to_value(default)?;
    let table = value.as_object_mut().context("a mixer config is a table")?;
    let mut set = |key: &str, v: Value| {
        if let Some(slot) = table.get_mut(key) {
            *slot = v;
        }
    };
    set("heads", json!(shape.heads));
    // MoH: half the heads shared, each token picking one of the routed half.
    set("shared_heads", json!(shape.heads / 2));
    set("top_k", json!(1));
    set("head_dim", json!(shape.head_dim));
    if let Some(form) = form {
        set("form", serde_json::to_value(form)?);
    }
    // LoLCATs keeps its projections' shape in a nested attention table.
    if let Some(Value::Object(attention)) = table.get_mut("attention") {
        attention.insert("heads".into(), json!(shape.heads));
        attention.insert("head_dim".into(), json!(shape.head_dim));
    }
    let mut label = table.get("form").and_then(Value::as_str).unwrap_or("-").to_string();
    for (key, v) in sets {
        if let Some(slot) = table.get_mut(key) {
            *slot = v.clone();
            label = format!("{label} {key}={v}");
        }
    }
    let config: MixerConfig = serde_json::from_value(value)?;
    config.validate(shape.heads * shape.head_dim).map_err(|e| anyhow::anyhow!("{kind} at {shape}: {e}"))?;
    Ok((config, label))
}

/// Rough peak memory of one forward+backward of `name`/`form` at `shape`, in bytes: the
/// activations autodiff keeps plus their gradients, counted in f32 (the ops lift scores,
/// states and normalisers to f32 under bf16). Linear terms scale with `H·D` per token;
/// quadratic ones with `H·L` per token, `L = T` for a parallel form and the chunk length for
/// a chunked one; the Taylor feature maps with `H·(F + d'²)` (`F` features and the outer
/// product they are selected from). An unknown mixer is assumed quadratic. The coefficients
/// count the copies autodiff keeps; checked against the peak RSS of single points on ndarray
/// (B, T, H, D = 2, 2048, 4, 64: softmax 1101 MiB, linear 709, Taylor 1017 parallel, 216 chunked).
pub fn estimate_bytes(level: Level, name: &str, form: &str, shape: &Shape) -> f64 {
    let Shape { batch, seq_len: t, heads, head_dim: d } = *shape;
    let (h, d, t) = (heads as f64, d as f64, t as f64);
    let span = if form == "chunked" { (CHUNK as f64).min(t) } else { t };
    let features = FeatureMap::Compact.dim(TAYLOR_DIM) as f64 + (TAYLOR_DIM * TAYLOR_DIM) as f64;
    // (linear, quadratic, feature) coefficients, and the floats of chunk states per head and token.
    let (lin, quad, feat, states) = match name {
        "softmax_attention" | "attention" => (12.0, 9.0, 0.0, 0.0),
        "linear_attention" | "decay_per_head" | "transnormer" => {
            (16.0, 6.0, 0.0, if form == "chunked" { 4.0 * d * d / span } else { 0.0 })
        }
        // The per-channel decay makes the chunk's scores `C × C × D` per head.
        "gla" => (20.0, 6.0 * d, 0.0, if form == "chunked" { 4.0 * d * d / span } else { 0.0 }),
        "based_taylor" | "based_linear" => {
            let state = if form == "chunked" { 5.0 * features * d / span } else { 0.0 };
            (16.0, 7.0, 6.0, state)
        }
        "base_conv" => (56.0, 0.0, 0.0, 0.0),
        _ => (40.0, 9.0, 0.0, 0.0),
    };
    // A mixer adds its input and output projections (and their gradients) to its op.
    let projections = if level == Level::Mixer && name != "base_conv" { 16.0 } else { 0.0 };
    // A mixer's scores carry its mask and bias too: softmax attention's mixer peaked at about 11
    // floats per head and score on ndarray (B, T, H, D = 1, 1024 and 2048, 4, 64: 272, 808 MiB).
    let quad = if level == Level::Mixer && quad > 0.0 && form != "chunked" { quad + 2.0 } else { quad };
    let per_token = h * ((lin + projections) * d + quad * span + feat * features + states);
    let mask = if quad > 0.0 && form != "chunked" { t * t } else { 0.0 }; // one byte per entry
    batch as f64 * t * per_token * 4.0 + mask
}

/// Times every case of `opts` at every shape, calling `on_row` as each row is done.
pub fn run<B: AutodiffBackend>(
    opts: &OpsOptions,
    shapes: &[Shape],
    device: &B::Device,
    mut on_row: impl FnMut(&OpsRow),
) -> Result<Vec<OpsRow>> {
    if !supported::<B>(opts.precision, device) {
        bail!(
            "{} on device {device:?} cannot compute in {}; use --dtype f32, or a backend that has it (flex, tch, cuda)",
            B::name(device),
            opts.precision
        );
    }
    if opts.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if opts.kernels == Kernels::On && !kernels::available::<B>() {
        bail!("--kernels on, but {} has no CubeCL kernels in this build (they run on wgpu and cuda)", B::name(device));
    }
    let cases = cases(opts)?;
    // With --compare, a chunked form runs composed and then again on the kernels.
    let policies = match opts.compare && kernels::available::<B>() {
        true => vec![Kernels::Off, Kernels::On],
        false => vec![opts.kernels],
    };
    // After a point fails inside a CubeCL device (an allocation over the device's limit, a failed
    // launch), its memory manager can be left inconsistent, and later points on it then report
    // times for work that never ran (seen on lavapipe after a 512 MiB allocation failed). Those
    // points are reported as not run instead.
    let failures_poison_the_device = kernels::available::<B>();
    let mut failed_at: Option<String> = None;
    let mut rows = Vec::new();
    for shape in shapes {
        for case in &cases {
            for &policy in &policies {
                let (row, device_failed) =
                    kernels::with_policy(policy, || run_point::<B>(case, shape, opts, device, failed_at.as_deref()));
                if device_failed && failures_poison_the_device && failed_at.is_none() {
                    failed_at = Some(format!("{} ({}) at B={}, T={}", row.name, row.form, shape.batch, shape.seq_len));
                }
                let chunked = row.form.starts_with("chunked");
                on_row(&row);
                rows.push(row);
                if !chunked {
                    break;
                }
            }
        }
    }
    Ok(rows)
}

/// One row: `case` at `shape`, timed unless it is estimated to need too much memory or the
/// device failed at an earlier point (`failed_at`); a case that cannot be built or fails (e.g. a
/// GPU out of memory after all) is reported, not fatal. Also whether it failed on the device.
fn run_point<B: AutodiffBackend>(
    case: &Case,
    shape: &Shape,
    opts: &OpsOptions,
    device: &B::Device,
    failed_at: Option<&str>,
) -> (OpsRow, bool) {
    let (name, config) = match case {
        Case::Mixer(kind) => (kind.clone(), Some(mixer_config(kind, shape, opts.form, &opts.mixer_sets))),
        Case::Op(op, _) => (op.to_string(), None),
    };
    let form = match (case, &config) {
        (Case::Op(_, form), _) => form.to_string(),
        (_, Some(Ok((_, form)))) => form.clone(),
        _ => opts.form.map_or("-".into(), |f| f.to_string()),
    };
    let est = estimate_bytes(opts.level, &name, &form, shape);
    let mut row = OpsRow {
        level: opts.level,
        name,
        form,
        shape: *shape,
        dtype: opts.precision.to_string(),
        backend: B::name(device),
        est_mem_gib: gib(est),
        fwd_ms: None,
        fwd_bwd_ms: None,
        tokens_per_sec: None,
        skipped: None,
    };
    if let Some(at) = failed_at {
        row.skipped = Some(format!("not run: the device failed at {at}; time this point in a new run"));
        return (row, false);
    }
    if est > opts.max_mem_bytes {
        let (need, limit) = (gib(est), gib(opts.max_mem_bytes));
        row.skipped = Some(format!("skipped: needs ~{need:.1} GiB (limit {limit:.1} GiB, --max-mem-gb)"));
        return (row, false);
    }
    let config = match config {
        Some(Err(e)) => {
            row.skipped = Some(format!("failed: {e:#}"));
            return (row, false);
        }
        Some(Ok((config, _))) => Some(config),
        None => None,
    };
    let (kernel_calls, tensor_core_calls) = (kernels::calls(), kernels::tensor_core_calls());
    let timed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Each point's weights and inputs are a function of the seed alone (not of the points
        // before it, nor of other threads drawing from the backend's generator).
        let loss = match (case, config) {
            (Case::Op(op, form), _) => with_seed::<B, _>(0, device, || op_loss::<B>(op, *form, shape, opts.precision, device)),
            (_, Some(config)) => mixer_loss::<B>(&config, shape, opts.precision, device),
            (Case::Mixer(_), None) => unreachable!("a mixer case has a config"),
        };
        time_case::<B>(&*loss, opts, device)
    }));
    let mut device_failed = false;
    match timed {
        Ok(Ok((fwd, fwd_bwd))) => {
            row.fwd_ms = Some(fwd);
            row.fwd_bwd_ms = Some(fwd_bwd);
            row.tokens_per_sec = Some((shape.batch * shape.seq_len) as f64 / (fwd_bwd / 1e3));
        }
        Ok(Err(e)) => (row.skipped, device_failed) = (Some(format!("failed: {e:#}")), true),
        Err(panic) => (row.skipped, device_failed) = (Some(format!("failed: {}", panic_message(&panic))), true),
    }
    // A chunked form that ran on the CubeCL kernels is labelled as such, and on tensor cores too.
    match row.form.strip_prefix("chunked") {
        Some(rest) if kernels::tensor_core_calls() > tensor_core_calls => row.form = format!("kernels-tc{rest}"),
        Some(rest) if kernels::calls() > kernel_calls => row.form = format!("kernels{rest}"),
        _ => {}
    }
    (row, device_failed)
}

/// A closure computing `sum(output)` of one training-form call on fixed inputs.
type Loss<B> = Box<dyn Fn() -> Tensor<B, 1>>;

/// An op applied to `q, k, v`.
type Op<B> = Box<dyn Fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>>;

/// Median forward and forward+backward milliseconds of `loss`.
fn time_case<B: AutodiffBackend>(loss: &dyn Fn() -> Tensor<B, 1>, opts: &OpsOptions, device: &B::Device) -> Result<(f64, f64)> {
    let fwd = time_reps::<B>(device, opts.warmup, opts.reps, || drop(loss()))?;
    let fwd_bwd = time_reps::<B>(device, opts.warmup, opts.reps, || drop(loss().backward()))?;
    Ok((median_ms(&fwd), median_ms(&fwd_bwd)))
}

/// A random leaf `[dims]` in `precision` that requires a gradient.
fn input<B: AutodiffBackend, const D: usize>(dims: [usize; D], precision: Precision, device: &B::Device) -> Tensor<B, D> {
    let x = Tensor::<B, D>::random(dims, Distribution::Normal(0.0, 1.0), device);
    to_dtype(x, DType::from(precision.float_dtype())).require_grad()
}

fn mixer_loss<B: AutodiffBackend>(config: &MixerConfig, shape: &Shape, precision: Precision, device: &B::Device) -> Loss<B> {
    let d_model = shape.heads * shape.head_dim;
    let mixer = build_seeded(0, device, || config.init::<B>(ember_layers::LayerContext::single(d_model), ember_layers::init::INIT_STD, device));
    let x = with_seed::<B, _>(1, device, || input::<B, 3>([shape.batch, shape.seq_len, d_model], precision, device));
    // The parameters are cast on every call, as a training step does (a no-op in f32).
    Box::new(move || to_f32(cast_params(mixer.clone(), precision).forward(x.clone())).sum())
}

fn op_loss<B: AutodiffBackend>(op: &str, form: Form, shape: &Shape, precision: Precision, device: &B::Device) -> Loss<B> {
    let Shape { batch, seq_len, heads, head_dim } = *shape;
    let qk_dim = if op == "based_taylor" { TAYLOR_DIM } else { head_dim };
    let q = input::<B, 4>([batch, seq_len, heads, qk_dim], precision, device);
    let k = input::<B, 4>([batch, seq_len, heads, qk_dim], precision, device);
    let v = input::<B, 4>([batch, seq_len, heads, head_dim], precision, device);
    let scale = 1.0 / (qk_dim as f64).sqrt();
    let (map, eps) = (FeatureMap::Compact, 1e-6);
    let output: Op<B> = match (op, form) {
        ("softmax_attention", _) => Box::new(move |q, k, v| softmax_attention::parallel(q, k, v, scale, None, 0)),
        ("linear_attention", Form::Chunked) => {
            Box::new(move |q, k, v| linear_attention::chunked(q, k, v, None, scale, CHUNK).output)
        }
        ("linear_attention", _) => Box::new(move |q, k, v| linear_attention::parallel(q, k, v, None, scale).output),
        ("based_taylor", Form::Chunked) => Box::new(move |q, k, v| taylor::chunked(q, k, v, None, map, eps, CHUNK).output),
        ("based_taylor", _) => Box::new(move |q, k, v| taylor::parallel(q, k, v, None, map, eps).output),
        // Log decays as GLA makes them (logsigmoid / 16): gates near 1, as in training.
        ("gla", form) => {
            let g = log_sigmoid(input::<B, 4>([batch, seq_len, heads, head_dim], precision, device)) / 16.0;
            Box::new(move |q, k, v| match form {
                Form::Chunked => gla::chunked(q, k, v, g.clone(), None, scale, CHUNK).output,
                _ => gla::parallel(q, k, v, g.clone(), None, scale).output,
            })
        }
        ("decay_per_head", form) => {
            let g = log_sigmoid(input::<B, 3>([batch, seq_len, heads], precision, device)) / 16.0;
            Box::new(move |q, k, v| match form {
                Form::Chunked => gla::chunked_per_head(q, k, v, g.clone(), None, scale, CHUNK).output,
                _ => gla::parallel_per_head(q, k, v, g.clone(), None, scale).output,
            })
        }
        (other, _) => unreachable!("unknown op {other}"),
    };
    Box::new(move || to_f32(output(q.clone(), k.clone(), v.clone())).sum())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
    text.unwrap_or_else(|| "panicked".into()).lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_follow_fla_tokens_per_call() {
        let fla = Grid::preset("fla").unwrap().shapes().unwrap();
        let points: Vec<(usize, usize)> = fla.iter().map(|s| (s.batch, s.seq_len)).collect();
        assert_eq!(points, [(64, 1024), (32, 2048), (16, 4096), (8, 8192), (4, 16384), (2, 32768)]);
        assert!(fla.iter().all(|s| s.heads == 16 && s.head_dim == 64));
        let bad = Grid { tokens: Some(1000), ..Grid::preset("fla").unwrap() };
        assert!(bad.shapes().is_err());
    }

    #[test]
    fn every_mixer_kind_builds_at_a_shape_and_a_t_by_t_score_matrix_at_32k_is_skipped() {
        let shape = Shape { batch: 2, seq_len: 32768, heads: 16, head_dim: 64 };
        for kind in KINDS {
            let (config, form) = mixer_config(kind, &shape, None, &[]).unwrap();
            assert_eq!(config.kind(), *kind);
            assert!(!form.is_empty());
        }
        let (_, form) = mixer_config("based_linear", &shape, Some(Form::Parallel), &[]).unwrap();
        assert_eq!(form, "parallel");
        // 2·16·32768² scores alone are 128 GiB in f32.
        assert!(estimate_bytes(Level::Op, "softmax_attention", "parallel", &shape) > 128.0 * (1u64 << 30) as f64);
        // Chunked linear attention at the same shape fits an H100 comfortably.
        assert!(estimate_bytes(Level::Op, "linear_attention", "chunked", &shape) < 16.0 * (1u64 << 30) as f64);
    }
}
