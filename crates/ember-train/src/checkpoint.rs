//! Checkpoints: everything needed to continue a run exactly, written atomically.
//!
//! `RUN/checkpoints/step-000100/` holds `model.safetensors` (weights, by module path),
//! `optimizer.safetensors` (AdamW moments `m.PATH` / `v.PATH`), `trainer.json` (step, tokens,
//! loader position, update count), `recipe.toml` (the recipe as run, overrides applied) and
//! `tokenizer.json` (text runs; synthetic tasks such as MQAR have none), so a checkpoint
//! directory alone is enough to resume or generate.
//! The run's only randomness after initialisation is the loader's shuffle, a pure function of
//! (seed, epoch): its saved position is the whole RNG state (the step itself draws nothing —
//! there is no dropout), which is why a resumed run repeats the uninterrupted one bit for bit.
//! A checkpoint is written to `step-N.tmp`, every file fsynced, then renamed into place: a crash
//! at any moment leaves the previous checkpoints intact and no half-written one that looks whole.
use crate::optim::{AdamW, Moments};
use crate::recipe::OptimConfig;
use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_store::{ModuleSnapshot, SafetensorsStore};
use ember_data::LoaderState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_FILE: &str = "trainer.json";
pub const RECIPE_FILE: &str = "recipe.toml";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The loop's own state (`trainer.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Position of the training loader.
    pub loader: LoaderState,
    /// Seconds spent training so far (for tokens/s across resumes).
    pub elapsed_secs: f64,
    /// Last validation loss, if any.
    pub last_val_loss: Option<f64>,
    /// Last validation accuracy, if any.
    #[serde(default)]
    pub last_val_accuracy: Option<f64>,
    /// The run is over: it took its last step, or stopped at `train.stop_accuracy`.
    #[serde(default)]
    pub finished: bool,
}

/// Writes a checkpoint for `state.step` under `run_dir/checkpoints/` and prunes to `keep_last`.
pub fn save<B: Backend, M: Module<B>, O: Backend>(
    run_dir: &Path,
    model: &M,
    optimizer: &AdamW<O>,
    state: &TrainerState,
    recipe_text: &str,
    tokenizer: Option<&Path>,
    keep_last: usize,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!("{name}.tmp"));
    let dest = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;

    let mut store = SafetensorsStore::from_file(tmp.join(MODEL_FILE)).metadata("format", "ember");
    model.save_into(&mut store).map_err(|e| anyhow::anyhow!("cannot write model weights: {e:?}"))?;
    save_optimizer(&tmp.join(OPTIMIZER_FILE), optimizer)?;
    std::fs::write(tmp.join(TRAINER_FILE), serde_json::to_vec_pretty(state)?)?;
    std::fs::write(tmp.join(RECIPE_FILE), recipe_text)?;
    let mut files = vec![MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE, RECIPE_FILE];
    if let Some(tokenizer) = tokenizer {
        std::fs::copy(tokenizer, tmp.join(TOKENIZER_FILE))
            .with_context(|| format!("cannot copy tokenizer {}", tokenizer.display()))?;
        files.push(TOKENIZER_FILE);
    }
    for f in files {
        File::open(tmp.join(f))?.sync_all()?;
    }
    if dest.exists() {
        // Same step written again (e.g. a resumed run re-saving): replace it atomically enough —
        // the old one is moved aside first, so one complete copy always exists.
        let old = root.join(format!("{name}.old"));
        std::fs::rename(&dest, &old)?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot move checkpoint into {}", dest.display()))?;
    }
    File::open(&root)?.sync_all()?;
    prune(&root, keep_last)?;
    Ok(dest)
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(found) };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) {
            if path.join(TRAINER_FILE).is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn prune(root: &Path, keep_last: usize) -> Result<()> {
    let all = list(root)?;
    let excess = all.len().saturating_sub(keep_last.max(1));
    for (_, path) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove old checkpoint {}", path.display()))?;
    }
    Ok(())
}

/// Resolves `--resume`/`--checkpoint DIR`: a checkpoint directory itself, or a run directory
/// (its newest complete checkpoint), or an `ember export --format ember` directory (weights and
/// recipe, no trainer state: it can be loaded, not resumed).
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join(TRAINER_FILE).is_file() || (dir.join(MODEL_FILE).is_file() && dir.join(RECIPE_FILE).is_file()) {
        return Ok(dir.to_path_buf());
    }
    if !dir.exists() {
        bail!("checkpoint {} does not exist", dir.display());
    }
    match list(&dir.join("checkpoints"))?.pop() {
        Some((_, path)) => Ok(path),
        None => bail!(
            "{} is neither a checkpoint (no {TRAINER_FILE}) nor a run directory with complete checkpoints under checkpoints/",
            dir.display()
        ),
    }
}

pub fn load_state(ckpt: &Path) -> Result<TrainerState> {
    let path = ckpt.join(TRAINER_FILE);
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a valid trainer state", path.display()))
}

/// Loads weights into `model`; any missing, unexpected or mis-shaped tensor is an error naming it.
pub fn load_model<B: Backend, M: Module<B>>(ckpt: &Path, mut model: M) -> Result<M> {
    let path = ckpt.join(MODEL_FILE);
    if !path.is_file() {
        bail!("checkpoint {} has no {MODEL_FILE}", ckpt.display());
    }
    // Half-precision files (`ember export --dtype bf16`) are widened to the model's f32.
    let mut store = SafetensorsStore::from_file(&path).with_from_adapter(WidenToF32);
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot read model weights from {}: {e:?}", path.display()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        bail!(
            "{} does not match the recipe's model: missing {:?}, unexpected {:?}, errors {:?}",
            path.display(),
            result.missing.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            result.unused,
            result.errors
        );
    }
    Ok(model)
}

/// Loads bf16/f16 tensors as f32 (the ndarray backend cannot hold them). burn-store's
/// `HalfPrecisionAdapter` converts f16 only, and only in burn's own module types.
#[derive(Clone)]
struct WidenToF32;

impl burn_store::ModuleAdapter for WidenToF32 {
    fn adapt(&self, snapshot: &burn_store::TensorSnapshot) -> burn_store::TensorSnapshot {
        use burn::tensor::DType;
        if !matches!(snapshot.dtype, DType::BF16 | DType::F16) {
            return snapshot.clone();
        }
        let source = snapshot.clone();
        burn_store::TensorSnapshot::from_closure(
            std::rc::Rc::new(move || source.to_data().map(|d| d.convert::<f32>())),
            DType::F32,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn burn_store::ModuleAdapter> {
        Box::new(self.clone())
    }
}

fn save_optimizer<B: Backend>(path: &Path, opt: &AdamW<B>) -> Result<()> {
    let mut tensors: Vec<(String, TensorData)> = Vec::new();
    for (name, m) in &opt.moments {
        tensors.push((format!("m.{name}"), m.m.to_data().convert::<f32>()));
        tensors.push((format!("v.{name}"), m.v.to_data().convert::<f32>()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, d.shape.to_vec(), d.as_bytes())
                .expect("f32 data matches its shape");
            (n.clone(), view)
        })
        .collect();
    let meta = HashMap::from([("updates".to_string(), opt.updates.to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn load_optimizer<B: Backend>(ckpt: &Path, config: OptimConfig, device: &B::Device) -> Result<AdamW<B>> {
    let path = ckpt.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let updates = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("updates"))
        .and_then(|u| u.parse().ok())
        .with_context(|| format!("{} has no update count", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{} is corrupt", path.display()))?;
    let mut parts: BTreeMap<String, (Option<Tensor<B, 1>>, Option<Tensor<B, 1>>)> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), burn::tensor::DType::F32);
        let tensor = Tensor::<B, 1>::from_data(data, device);
        let (kind, param) = name.split_once('.').with_context(|| format!("{}: bad tensor name {name}", path.display()))?;
        let entry = parts.entry(param.to_string()).or_default();
        match kind {
            "m" => entry.0 = Some(tensor),
            "v" => entry.1 = Some(tensor),
            _ => bail!("{}: bad tensor name {name}", path.display()),
        }
    }
    let mut opt = AdamW::new(config);
    opt.updates = updates;
    for (name, (m, v)) in parts {
        match (m, v) {
            (Some(m), Some(v)) => {
                opt.moments.insert(name, Moments { m, v });
            }
            _ => bail!("{}: parameter {name} lacks one of its moments", path.display()),
        }
    }
    Ok(opt)
}
