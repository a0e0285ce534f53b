//! `ember export`: a checkpoint's model as files a PyTorch user can load.
//!
//! - `hf`: the Hugging Face layout of the Llama family (`config.json`, `model.safetensors`,
//!   `tokenizer.json`), for models of that shape (softmax attention, SwiGLU, RMSNorm). ember's
//!   HF loader (and `transformers`) read it back.
//! - `ember`: any model, in ember's own layout: `model.safetensors` keyed by module path
//!   (`blocks.{i}.mixer.{Kind}.{param}`; linear weights are `[in, out]`), `config.json`
//!   (`{"format": "ember", "model": <the recipe's [model] table>}`), `recipe.toml` and
//!   `tokenizer.json`. `ember generate --checkpoint DIR` (and every `--checkpoint`) reads it.
use crate::checkpoint::{MODEL_FILE, RECIPE_FILE, TOKENIZER_FILE};
use crate::generate;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use ember_models::hf::export::{self as hf_export, ExportDtype};
use ember_models::Lm;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hf,
    Ember,
}

/// Writes the model of `checkpoint` (a checkpoint, or a run directory's newest one) to `out` in
/// `format`; returns the files written. `out` must not already hold an export (nothing is
/// overwritten).
pub fn export<B: Backend>(checkpoint: &Path, out: &Path, format: Format, dtype: ExportDtype, device: &B::Device) -> Result<Vec<PathBuf>> {
    let (model, recipe, ckpt) = generate::load_model::<B>(checkpoint, device)?;
    for existing in ["config.json", MODEL_FILE] {
        if out.join(existing).exists() {
            bail!("{} already holds {existing}; export into a new directory", out.display());
        }
    }
    let mut written = match format {
        Format::Hf => hf_export::export(&model, &recipe.model, out, dtype)
            .map_err(|e| anyhow::anyhow!("cannot export {} in the Hugging Face layout: {e}", ckpt.display()))?,
        Format::Ember => export_ember(&model, &recipe.model, &ckpt, out, dtype)?,
    };
    let tokenizer = ckpt.join(TOKENIZER_FILE);
    if tokenizer.is_file() {
        let to = out.join(TOKENIZER_FILE);
        std::fs::copy(&tokenizer, &to).with_context(|| format!("cannot write {}", to.display()))?;
        written.push(to);
    }
    Ok(written)
}

fn export_ember<B: Backend>(model: &Lm<B>, config: &ember_models::LmConfig, ckpt: &Path, out: &Path, dtype: ExportDtype) -> Result<Vec<PathBuf>> {
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
    std::fs::copy(ckpt.join(RECIPE_FILE), &recipe).with_context(|| format!("cannot write {}", recipe.display()))?;
    Ok(vec![config_path, weights, recipe])
}
