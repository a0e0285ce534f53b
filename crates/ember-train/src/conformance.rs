//! `ember conformance`: runs every form of every op that has a reference fixture and compares
//! outputs, final states and gradients (through Burn's autodiff) with the fixture's.
//!
//! Fixture format: `../shared/fixtures/README.md` — safetensors files holding inputs, outputs,
//! upstream gradients `dX` for each output `X`, and `grad_Y` for each input `Y`.
use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_models::hf;
use ember_ops::precision::{cast_params, to_dtype, to_f32, Precision};
use ember_ops::kernels::{self, Kernels};
use ember_ops::{gated_linear_attention, linear_attention, softmax_attention, taylor, Form};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Relative RMS error a correct float32 implementation meets (fixtures README).
pub const TOLERANCE: f64 = 1e-4;

/// Relative RMS error of bf16 compute against the float32 references (fixtures README).
pub const BF16_TOLERANCE: f64 = 2e-2;

/// The tolerance for a compute precision.
pub fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => TOLERANCE,
        Precision::Bf16 => BF16_TOLERANCE,
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Row {
    pub fixture: String,
    pub form: String,
    /// Worst relative RMS error over the outputs (and final state).
    pub output_err: f64,
    /// Worst relative RMS error over the input gradients (NaN where there are none: teachers).
    pub grad_err: f64,
    pub pass: bool,
}

/// All rows, plus the files that were skipped and why.
#[derive(Debug, Default)]
pub struct Report {
    pub precision: Precision,
    pub rows: Vec<Row>,
    pub skipped: Vec<(String, String)>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<28} {:<24} {:>12} {:>12}  {}\n",
            "fixture", "form", "output err", "grad err", "pass"
        );
        for r in &self.rows {
            let grad = if r.grad_err.is_nan() { "-".to_string() } else { format!("{:.3e}", r.grad_err) };
            s += &format!(
                "{:<28} {:<24} {:>12.3e} {:>12}  {}\n",
                r.fixture, r.form, r.output_err, grad, if r.pass { "ok" } else { "FAIL" }
            );
        }
        for (name, why) in &self.skipped {
            s += &format!("skipped {name}: {why}\n");
        }
        let failed = self.rows.iter().filter(|r| !r.pass).count();
        s += &format!(
            "{} passed, {} failed ({} fixtures skipped; {} compute, tolerance {:.0e} relative RMS)\n",
            self.rows.len() - failed,
            failed,
            self.skipped.len(),
            self.precision,
            tolerance(self.precision)
        );
        s
    }
}

/// A fixture file: named f32 tensors and the parsed `meta` JSON.
struct Fixture {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    meta: serde_json::Value,
    path: PathBuf,
}

impl Fixture {
    fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, metadata) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let meta = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("meta"))
            .map(|m| serde_json::from_str(m))
            .transpose()
            .with_context(|| format!("{}: __metadata__.meta is not JSON", path.display()))?
            .unwrap_or(serde_json::Value::Null);
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: corrupt safetensors", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                bail!("{}: tensor {name} is {:?}, expected F32", path.display(), view.dtype());
            }
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Self { tensors, meta, path: path.to_path_buf() })
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor<B: AutodiffBackend, const D: usize>(&self, name: &str, device: &B::Device) -> Result<Tensor<B, D>> {
        let (shape, data) = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: missing tensor {name}", self.path.display()))?;
        // Per-head decays come as `[B, T, H]` or `[H]`; they are lifted to rank 4 so that they
        // broadcast against `[B, T, H, K]` like every other input.
        let shape = match (shape.len(), D, shape.as_slice()) {
            (r, d, _) if r == d => shape.clone(),
            (3, 4, &[b, t, h]) => vec![b, t, h, 1],
            (1, 4, &[h]) => vec![1, 1, h, 1],
            (r, _, _) => bail!("{}: tensor {name} has rank {r}, expected {D}", self.path.display()),
        };
        Ok(Tensor::from_data(TensorData::new(data.clone(), shape), device))
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.meta.get(key).and_then(|v| v.as_f64())
    }
}

fn rel_rms<B: AutodiffBackend, const D: usize>(got: Tensor<B::InnerBackend, D>, want: Tensor<B::InnerBackend, D>) -> f64 {
    let got = got.into_data().convert::<f64>().to_vec::<f64>().unwrap();
    let want = want.into_data().convert::<f64>().to_vec::<f64>().unwrap();
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(&want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// What a form returns: outputs paired with the fixture names of their reference and upstream
/// gradient (`o`/`do`, `ht`/`dht`).
type Outputs<B> = Vec<(&'static str, Tensor<B, 4>)>;

/// The fixture's inputs, by name, as tensors that require gradients.
type Vars<B> = BTreeMap<&'static str, Tensor<B, 4>>;

/// How a fixture is run: where, and in which compute dtype.
struct Ctx<'a, B: AutodiffBackend> {
    device: &'a B::Device,
    precision: Precision,
}

/// Runs one form: builds f32 inputs that require gradients, hands the op copies cast to the
/// compute dtype, computes `Σ <X, dX>` in f32, backpropagates, and compares outputs and
/// `grad_Y` with the fixture.
fn check<B: AutodiffBackend>(
    fx: &Fixture,
    name: &str,
    form: &str,
    inputs: &[&'static str],
    ctx: &Ctx<B>,
    run: impl Fn(&Vars<B>) -> Outputs<B>,
) -> Result<Row> {
    let device = ctx.device;
    let mut vars = BTreeMap::new();
    for &input in inputs {
        vars.insert(input, fx.tensor::<B, 4>(input, device)?.require_grad());
    }
    let dtype = ctx.precision.float_dtype().into();
    let cast: Vars<B> = vars.iter().map(|(&k, v)| (k, to_dtype(v.clone(), dtype))).collect();
    let outputs = run(&cast);
    let mut output_err: f64 = 0.0;
    let mut objective: Option<Tensor<B, 1>> = None;
    for (out, value) in outputs {
        let value = to_f32(value);
        output_err = output_err.max(rel_rms::<B, 4>(value.clone().inner(), fx.tensor::<B, 4>(out, device)?.inner()));
        let upstream = format!("d{out}");
        if fx.has(&upstream) {
            let term = (value * fx.tensor::<B, 4>(&upstream, device)?).sum();
            objective = Some(match objective {
                None => term,
                Some(acc) => acc + term,
            });
        }
    }
    let mut grad_err: f64 = 0.0;
    if let Some(objective) = objective {
        let grads = objective.backward();
        for (input, var) in &vars {
            let reference = format!("grad_{input}");
            if !fx.has(&reference) {
                continue;
            }
            let want = fx.tensor::<B, 4>(&reference, device)?.inner();
            grad_err = grad_err.max(match var.grad(&grads) {
                Some(got) => rel_rms::<B, 4>(got, want),
                None => f64::INFINITY,
            });
        }
    }
    let tol = tolerance(ctx.precision);
    let pass = output_err <= tol && grad_err <= tol;
    Ok(Row { fixture: name.to_string(), form: form.to_string(), output_err, grad_err, pass })
}

/// Chunk sizes exercised by chunked forms on a sequence of `t` tokens: sizes that divide `t`
/// (1 and `t` itself: no padding) and sizes that in general do not (16 and 64: a padded last
/// chunk, or one chunk longer than the sequence).
fn chunk_sizes(t: usize) -> Vec<usize> {
    let mut sizes = vec![1, 16, 64, t];
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// `run` under the kernel setting `kernels`.
fn forced<B: AutodiffBackend>(kernels: Kernels, run: impl Fn(&Vars<B>) -> Outputs<B>) -> impl Fn(&Vars<B>) -> Outputs<B> {
    move |v| kernels::with_policy(kernels, || run(v))
}

fn run_fixture<B: AutodiffBackend>(name: &str, fx: &Fixture, ctx: &Ctx<B>) -> Result<Option<Vec<Row>>> {
    let op = fx.meta.get("op").and_then(|v| v.as_str()).unwrap_or(name).to_string();
    let scale = fx.meta_f64("scale");
    let t = fx.tensors.get("q").context("fixture has no q")?.0[1];
    let chunks = chunk_sizes(t);
    // Where the backend has CubeCL kernels the chunked forms run twice: composed ("chunked") and
    // on the kernels ("kernels", at the chunk sizes they take).
    let kernel_chunks: Vec<usize> = match kernels::available::<B>() {
        true => chunks.iter().copied().filter(|&c| c <= kernels::MAX_CHUNK).collect(),
        false => Vec::new(),
    };
    let chunked_runs = [("chunked", Kernels::Off, &chunks), ("kernels", Kernels::On, &kernel_chunks)];
    let mut rows = Vec::new();
    match op.as_str() {
        "linear_attn" => {
            let scale = scale.context("linear_attn fixture has no scale")?;
            let inputs = if fx.has("h0") { vec!["q", "k", "v", "h0"] } else { vec!["q", "k", "v"] };
            let outs = |r: linear_attention::LinearAttnOutput<B>| vec![("o", r.output), ("ht", r.state)];
            let h0 = |v: &Vars<B>| v.get("h0").cloned();
            rows.push(check(fx, name, "parallel", &inputs, ctx, |v: &Vars<B>| {
                outs(linear_attention::parallel(v["q"].clone(), v["k"].clone(), v["v"].clone(), h0(v), scale))
            })?);
            for (label, policy, sizes) in chunked_runs {
                for &chunk in sizes {
                    rows.push(check(fx, name, &format!("{label}(C={chunk})"), &inputs, ctx, forced(policy, |v: &Vars<B>| {
                        outs(linear_attention::chunked(v["q"].clone(), v["k"].clone(), v["v"].clone(), h0(v), scale, chunk))
                    }))?);
                }
            }
            rows.push(check(fx, name, "recurrent", &inputs, ctx, |v: &Vars<B>| {
                outs(linear_attention::recurrent(v["q"].clone(), v["k"].clone(), v["v"].clone(), h0(v), scale))
            })?);
        }
        "gla" | "scalar_decay_linear_attn" | "lightning_constant_decay" => {
            let scale = scale.context("decay fixture has no scale")?;
            let decay = if fx.has("g") { "g" } else { "log_decay" };
            let mut inputs = vec!["q", "k", "v", decay];
            if fx.has("h0") {
                inputs.push("h0");
            }
            let outs = |r: linear_attention::LinearAttnOutput<B>| vec![("o", r.output), ("ht", r.state)];
            // `g` per channel, per head (lifted to [B, T, H, 1]) or constant ([1, 1, H, 1]).
            let args = |v: &Vars<B>| {
                let (q, k, vv) = (v["q"].clone(), v["k"].clone(), v["v"].clone());
                let g = v[decay].clone().expand(q.dims());
                (q, k, vv, g, v.get("h0").cloned())
            };
            rows.push(check(fx, name, "parallel", &inputs, ctx, |v: &Vars<B>| {
                let (q, k, vv, g, h0) = args(v);
                outs(gated_linear_attention::parallel(q, k, vv, g, h0, scale))
            })?);
            for (label, policy, sizes) in chunked_runs {
                for &chunk in sizes {
                    rows.push(check(fx, name, &format!("{label}(C={chunk})"), &inputs, ctx, forced(policy, |v: &Vars<B>| {
                        let (q, k, vv, g, h0) = args(v);
                        outs(gated_linear_attention::chunked(q, k, vv, g, h0, scale, chunk))
                    }))?);
                }
            }
            rows.push(check(fx, name, "recurrent", &inputs, ctx, |v: &Vars<B>| {
                let (q, k, vv, g, h0) = args(v);
                outs(gated_linear_attention::recurrent(q, k, vv, g, h0, scale))
            })?);
            // A per-head decay (`[B, T, H]` or `[H]` in the file) also runs the Lightning-2 path,
            // which takes it as `[B, T, H]`.
            let per_head = fx.tensors.get(decay).is_some_and(|(shape, _)| shape.len() < 4);
            if per_head {
                let args = |v: &Vars<B>| {
                    let (q, k, vv) = (v["q"].clone(), v["k"].clone(), v["v"].clone());
                    let [b, t, h, _] = q.dims();
                    let g = v[decay].clone().expand([b, t, h, 1]).squeeze_dim::<3>(3);
                    (q, k, vv, g, v.get("h0").cloned())
                };
                rows.push(check(fx, name, "per-head parallel", &inputs, ctx, |v: &Vars<B>| {
                    let (q, k, vv, g, h0) = args(v);
                    outs(gated_linear_attention::parallel_per_head(q, k, vv, g, h0, scale))
                })?);
                for (label, policy, sizes) in chunked_runs {
                    for &chunk in sizes {
                        let form = format!("per-head {label}(C={chunk})");
                        rows.push(check(fx, name, &form, &inputs, ctx, forced(policy, |v: &Vars<B>| {
                            let (q, k, vv, g, h0) = args(v);
                            outs(gated_linear_attention::chunked_per_head(q, k, vv, g, h0, scale, chunk))
                        }))?);
                    }
                }
            }
        }
        "based_taylor" => {
            let inputs = ["q", "k", "v"];
            let eps = 1e-6;
            for map in [taylor::FeatureMap::Compact, taylor::FeatureMap::Full] {
                let tag = format!("{map:?}").to_lowercase();
                let runs = [
                    (Form::Parallel, Kernels::Off, &[0][..]),
                    (Form::Chunked, Kernels::Off, &chunks[..]),
                    (Form::Chunked, Kernels::On, &kernel_chunks[..]),
                    (Form::Recurrent, Kernels::Off, &[0][..]),
                ];
                for (form, policy, sizes) in runs {
                    for &chunk in sizes {
                        let label = match (form, policy) {
                            (Form::Chunked, Kernels::On) => format!("kernels(C={chunk}) {tag}"),
                            (Form::Chunked, _) => format!("chunked(C={chunk}) {tag}"),
                            _ => format!("{form} {tag}"),
                        };
                        rows.push(check(fx, name, &label, &inputs, ctx, forced(policy, |v: &Vars<B>| {
                            let (q, k, vv) = (v["q"].clone(), v["k"].clone(), v["v"].clone());
                            let out = match form {
                                Form::Parallel => taylor::parallel(q, k, vv, None, map, eps),
                                Form::Chunked => taylor::chunked(q, k, vv, None, map, eps, chunk),
                                Form::Recurrent => taylor::recurrent(q, k, vv, None, map, eps),
                            };
                            vec![("o", out.output)]
                        }))?);
                    }
                }
            }
        }
        "softmax_attn_gqa" | "sliding_window_attn_gqa" => {
            let inputs = ["q", "k", "v"];
            let d = fx.tensors.get("q").context("missing q")?.0[3] as f64;
            let scale = scale.unwrap_or(1.0 / d.sqrt());
            // Fixture window W means `t - s < W`, i.e. w_left = W - 1; 0 means no window.
            let window = fx.meta_f64("window").filter(|&w| w > 0.0).map(|w| w as usize - 1);
            rows.push(check(fx, name, "parallel", &inputs, ctx, |v: &Vars<B>| {
                vec![("o", softmax_attention::parallel(v["q"].clone(), v["k"].clone(), v["v"].clone(), scale, window, 0))]
            })?);
            rows.push(check(fx, name, "recurrent (kv cache)", &inputs, ctx, |v: &Vars<B>| {
                vec![("o", softmax_attention::recurrent(v["q"].clone(), v["k"].clone(), v["v"].clone(), scale, window))]
            })?);
        }
        _ => return Ok(None),
    }
    Ok(Some(rows))
}

/// Runs every fixture in `dir` that ember knows, computing in `precision`; unknown files are
/// skipped with a note.
pub fn run<B: AutodiffBackend>(dir: &Path, precision: Precision, device: &B::Device) -> Result<Report> {
    if !ember_ops::precision::supported::<B>(precision, device) {
        bail!("this backend (device {device:?}) cannot compute in {precision} (ndarray and wgpu's WGSL shaders have no bf16; flex, tch and cuda do)");
    }
    let ctx = Ctx::<B> { device, precision };
    let entries = std::fs::read_dir(dir).with_context(|| format!("fixture directory {} cannot be read", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut report = Report { precision, ..Default::default() };
    for path in paths {
        let file = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if path.is_dir() {
            match path.join("expected_logits.safetensors").is_file() {
                true => report.rows.push(teacher_row::<B>(&file, &path, &ctx)?),
                false => report.skipped.push((file, "a directory without expected_logits.safetensors".into())),
            }
            continue;
        }
        let Some(name) = file.strip_suffix(".safetensors") else {
            if file != "README.md" {
                report.skipped.push((file, "not a .safetensors file".into()));
            }
            continue;
        };
        let fx = Fixture::load(&path)?;
        match run_fixture::<B>(name, &fx, &ctx)? {
            Some(rows) => report.rows.extend(rows),
            None => {
                let op = fx.meta.get("op").and_then(|v| v.as_str()).unwrap_or("?");
                report.skipped.push((file, format!("no implementation of op {op:?} in this build yet")));
            }
        }
    }
    Ok(report)
}

/// A Hugging Face teacher directory (`hf_*`): load it through the HF loader, run its
/// `input_ids` and compare the logits with `expected_logits` (no gradients: `grad_err` is NaN).
fn teacher_row<B: AutodiffBackend>(name: &str, dir: &Path, ctx: &Ctx<B>) -> Result<Row> {
    let teacher = hf::load::<B::InnerBackend>(dir, ctx.device).with_context(|| format!("loading teacher {}", dir.display()))?;
    let path = dir.join("expected_logits.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: corrupt safetensors", path.display()))?;
    let view = |n: &str| st.tensor(n).with_context(|| format!("{}: missing tensor {n}", path.display()));
    let ids = view("input_ids")?;
    let ids_data: Vec<i64> = match ids.dtype() {
        safetensors::Dtype::I64 => ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        other => bail!("{}: input_ids is {other:?}, expected I64", path.display()),
    };
    let logits = view("logits")?;
    if logits.dtype() != safetensors::Dtype::F32 {
        bail!("{}: logits is {:?}, expected F32", path.display(), logits.dtype());
    }
    let want: Vec<f32> = logits.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let tokens = Tensor::<B::InnerBackend, 2, Int>::from_data(TensorData::new(ids_data, ids.shape().to_vec()), ctx.device);
    let model = cast_params(teacher.model, ctx.precision);
    let got = to_f32(model.forward(tokens));
    let want = Tensor::<B::InnerBackend, 3>::from_data(TensorData::new(want, logits.shape().to_vec()), ctx.device);
    let output_err = rel_rms::<B, 3>(got, want);
    Ok(Row { fixture: name.into(), form: "HF teacher logits".into(), output_err, grad_err: f64::NAN, pass: output_err <= tolerance(ctx.precision) })
}

/// Where the tests find the fixtures: `$EMBER_FIXTURES`, else `../shared/fixtures` beside the
/// repository. `None` means absent (callers skip visibly, or fail under `CI=true`).
pub fn default_fixture_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("EMBER_FIXTURES") {
        return Some(PathBuf::from(dir));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("../shared/fixtures");
    dir.is_dir().then_some(dir)
}
