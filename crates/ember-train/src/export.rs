//! `ember export`: a checkpoint's model as files a PyTorch user can load.
//!
//! - `hf`: the Hugging Face layout of the Llama family (`config.json`, `model.safetensors`,
//!   `tokenizer.json`), for models of that shape (softmax attention, SwiGLU, RMSNorm). ember's
//!   HF loader (and `transformers`) read it back.
//! - `ember`: any model, in ember's own layout: `model.safetensors` keyed by module path
//!   (`blocks.{i}.mixer.{Kind}.{param}`; linear weights are `[in, out]`), `config.json`
//!   (`{"format": "ember", "model": <the recipe's [model] table>}`), `recipe.toml` and
//!   `tokenizer.json`. `ember generate --checkpoint DIR` (and every `--checkpoint`) reads it.
//! - `fla`: GLA models (GLA layers, optionally with softmax-attention layers) in the layout and
//!   config of flash-linear-attention's `GLAForCausalLM`.
//!
//! `merge_lora` folds LoRA adapters (linearization's stage 2) into the weights they adapt, so
//! the export has the plain student's shape.
use crate::checkpoint::{MODEL_FILE, RECIPE_FILE, TOKENIZER_FILE};
use crate::generate;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use ember_models::hf::export::{self as hf_export, ExportDtype};
use ember_layers::{Mixer, MixerConfig};
use ember_models::Lm;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hf,
    Ember,
    Fla,
}

/// Writes the model of `checkpoint` (a checkpoint, or a run directory's newest one) to `out` in
/// `format`; returns the files written. `out` must not already hold an export (nothing is
/// overwritten).
pub fn export<B: Backend>(checkpoint: &Path, out: &Path, format: Format, dtype: ExportDtype, device: &B::Device) -> Result<Vec<PathBuf>> {
    export_with::<B>(checkpoint, out, format, dtype, false, device)
}

/// [`export`], with LoRA adapters folded into their weights first when `merge_lora`.
pub fn export_with<B: Backend>(checkpoint: &Path, out: &Path, format: Format, dtype: ExportDtype, merge_lora: bool, device: &B::Device) -> Result<Vec<PathBuf>> {
    let (mut model, mut recipe, ckpt) = generate::load_model::<B>(checkpoint, device)?;
    let mut recipe_text = std::fs::read_to_string(ckpt.join(RECIPE_FILE)).with_context(|| format!("cannot read {}", ckpt.join(RECIPE_FILE).display()))?;
    if merge_lora {
        for block in &mut model.blocks {
            // A module clone shares its tensors: this copies no weights.
            block.mixer = match block.mixer.clone() {
                Mixer::Lolcats(m) => Mixer::Lolcats(m.merge_lora()),
                other => other,
            };
        }
        for mixer in recipe.model.mixers.values_mut() {
            if let MixerConfig::Lolcats(c) = mixer {
                c.lora = None;
            }
        }
        recipe_text = format!("# {} with its LoRA adapters merged (ember export --merge-lora)\n{}", ckpt.display(), toml::to_string(&recipe)?);
    }
    for existing in ["config.json", MODEL_FILE] {
        if out.join(existing).exists() {
            bail!("{} already holds {existing}; export into a new directory", out.display());
        }
    }
    let mut written = match format {
        Format::Hf => hf_export::export(&model, &recipe.model, out, dtype)
            .map_err(|e| anyhow::anyhow!("cannot export {} in the Hugging Face layout: {e}", ckpt.display()))?,
        Format::Ember => export_ember(&model, &recipe.model, &recipe_text, out, dtype)?,
        Format::Fla => ember_models::hf::fla::export(&model, &recipe.model, out, dtype)
            .map_err(|e| anyhow::anyhow!("cannot export {} in fla's GLA layout: {e}", ckpt.display()))?,
    };
    let tokenizer = ckpt.join(TOKENIZER_FILE);
    if tokenizer.is_file() {
        let to = out.join(TOKENIZER_FILE);
        std::fs::copy(&tokenizer, &to).with_context(|| format!("cannot write {}", to.display()))?;
        written.push(to);
    }
    Ok(written)
}

fn export_ember<B: Backend>(model: &Lm<B>, config: &ember_models::LmConfig, recipe_text: &str, out: &Path, dtype: ExportDtype) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tensors = BTreeMap::new();
    for snapshot in model.collect(None, None, false) {
        let data = snapshot.to_data().map_err(|e| anyhow::anyhow!("{}: {e:?}", snapshot.full_path()))?;
        let values = data.to_vec::<f32>().map_err(|e| anyhow::anyhow!("{}: {e:?}", snapshot.full_path()))?;
        tensors.insert(snapshot.full_path(), (values, data.shape.to_vec()));
    }
    let weights = out.join(MODEL_FILE);
    let meta = HashMap::from([("format".to_string(), "ember".to_string())]);
    hf_export::write_safetensors(&weights, &tensors, dtype, Some(meta)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config_path = out.join("config.json");
    let json = serde_json::json!({ "format": "ember", "model": config });
    std::fs::write(&config_path, serde_json::to_string_pretty(&json)?).with_context(|| format!("cannot write {}", config_path.display()))?;
    let recipe = out.join(RECIPE_FILE);
    std::fs::write(&recipe, recipe_text).with_context(|| format!("cannot write {}", recipe.display()))?;
    Ok(vec![config_path, weights, recipe])
}
