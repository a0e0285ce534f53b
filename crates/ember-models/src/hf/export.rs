//! Writing an ember model of the Llama family's shape as a Hugging Face checkpoint directory
//! (`config.json` + `model.safetensors`) that `transformers` and [`super::load`] read.
use super::{mappings, Family, HfConfig, Mapping};
use crate::lm::LmConfig;
use crate::Lm;
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use ember_layers::mlp::MlpKind;
use ember_layers::norm::NormKind;
use ember_layers::MixerConfig;
use ember_ops::rope::RopeScaling;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The HF config of an ember model, if it has the Llama family's shape: softmax attention (one
/// config) in every layer, SwiGLU, RMSNorm, unscaled embeddings. Qwen2 when q/k/v have biases and
/// o has none, Mistral with a sliding window, Llama otherwise.
pub fn hf_config_of(lm: &LmConfig) -> Result<HfConfig, String> {
    let mixers: Vec<&MixerConfig> = lm.layer_mixers().iter().map(|name| &lm.mixers[*name]).collect();
    let Some(MixerConfig::Attention(a)) = mixers.first() else {
        return Err("the Hugging Face layout holds softmax attention layers only (export ember's own layout instead)".into());
    };
    if mixers.iter().any(|m| *m != mixers[0]) {
        return Err("every layer must use the same attention mixer for the Hugging Face layout".into());
    }
    if !a.rope {
        return Err("attention without RoPE (rope = false) has no Hugging Face Llama-family equivalent".into());
    }
    if a.persistent > 0 {
        return Err("persistent attention tokens have no Hugging Face equivalent (export ember's own layout instead)".into());
    }
    if lm.mlp.kind != MlpKind::Swiglu || lm.norm != NormKind::Rmsnorm || lm.scale_embeddings {
        return Err("the Hugging Face layout needs a SwiGLU MLP, RMSNorm and unscaled embeddings".into());
    }
    let family = match (a.window, a.qkv_bias, a.out_bias) {
        (Some(_), false, false) => Family::Mistral,
        (Some(_), ..) => return Err("a sliding window with attention biases has no Hugging Face architecture here".into()),
        (None, true, false) => Family::Qwen2,
        (None, ..) => Family::Llama,
    };
    if family == Family::Llama && a.qkv_bias != a.out_bias {
        return Err("Llama's attention_bias puts a bias on q, k, v and o together".into());
    }
    Ok(HfConfig {
        family,
        vocab_size: lm.padded_vocab(),
        hidden_size: lm.d_model,
        intermediate_size: lm.mlp.hidden_width(lm.d_model),
        num_layers: lm.n_layers,
        num_heads: a.heads,
        num_kv_heads: a.kv_heads(),
        head_dim: a.head_dim(lm.d_model),
        rms_norm_eps: lm.norm_eps,
        rope_theta: a.rope_base,
        rope_scaling: a.rope_scaling.clone(),
        tie_word_embeddings: lm.tie_embeddings,
        qkv_bias: a.qkv_bias,
        o_bias: a.out_bias,
        sliding_window: a.window.map(|w| w + 1),
        max_position_embeddings: 4096,
    })
}

/// `config.json` as `transformers` reads it (the 4.x layout, which 5.x also reads).
pub fn config_json(c: &HfConfig) -> Value {
    let mut v = json!({
        "architectures": [c.family.architecture()],
        "model_type": c.family.model_type(),
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "torch_dtype": "float32",
        "attention_dropout": 0.0,
    });
    match c.family {
        Family::Llama => {
            v["attention_bias"] = json!(c.qkv_bias);
            v["mlp_bias"] = json!(false);
        }
        Family::Mistral => v["sliding_window"] = json!(c.sliding_window),
        Family::Qwen2 => v["use_sliding_window"] = json!(false),
    }
    if let Some(s) = &c.rope_scaling {
        v["rope_scaling"] = rope_scaling_json(s);
    }
    v
}

fn rope_scaling_json(s: &RopeScaling) -> Value {
    match s {
        RopeScaling::Linear { factor } => json!({ "rope_type": "linear", "factor": factor }),
        RopeScaling::Dynamic { factor, original_max_position } => {
            json!({ "rope_type": "dynamic", "factor": factor, "original_max_position_embeddings": original_max_position })
        }
        RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim } => {
            let mut v = json!({ "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original_max_position,
                "beta_fast": beta_fast, "beta_slow": beta_slow });
            for (key, value) in [("attention_factor", attention_factor), ("mscale", mscale), ("mscale_all_dim", mscale_all_dim)] {
                if let Some(x) = value {
                    v[key] = json!(x);
                }
            }
            v
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position }),
    }
}

/// Precision of the exported weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    Bf16,
}

/// The model's weights under their Hugging Face names (`[out, in]` orientation), as f32.
pub fn hf_tensors<B: Backend>(model: &Lm<B>, c: &HfConfig) -> Result<BTreeMap<String, (Vec<f32>, Vec<usize>)>, String> {
    mapped_tensors(model, &mappings(c), c.num_kv_heads * c.head_dim)
}

/// The weights of `model` renamed by `maps`: transposed back to `[out, in]` where marked, and
/// cut along dim 0 where one ember tensor is several (a fused q/k/v with key/value width
/// `kv_width` each; SwiGLU's fused up/gate in halves).
pub(crate) fn mapped_tensors<B: Backend>(model: &Lm<B>, maps: &[Mapping], kv_width: usize) -> Result<BTreeMap<String, (Vec<f32>, Vec<usize>)>, String> {
    let ember: HashMap<String, burn::tensor::TensorData> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| Ok((s.full_path(), s.to_data().map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    let mut out = BTreeMap::new();
    for m in maps {
        let data = ember.get(&m.ember).ok_or_else(|| format!("the model has no parameter {}", m.ember))?;
        let shape = data.shape.clone();
        let values: Vec<f32> = data.to_vec::<f32>().map_err(|e| format!("{}: {e:?}", m.ember))?;
        // Back to `[out, in]`, then cut into the HF tensors along dim 0.
        let (values, rows, cols) = match (m.transpose, shape.as_slice()) {
            (true, [i, o]) => (super::weights::transposed(&values, *i, *o), *o, *i),
            (_, [r, c]) => (values, *r, *c),
            (_, [r]) => (values, *r, 1),
            _ => return Err(format!("{}: unexpected shape {shape:?}", m.ember)),
        };
        let part_rows: Vec<usize> = match m.hf.len() {
            1 => vec![rows],
            // q, k, v: the query width then two equal key/value widths.
            3 => vec![rows - 2 * kv_width, kv_width, kv_width],
            // up and gate: two halves.
            _ => vec![rows / 2; 2],
        };
        let mut start = 0;
        for (name, r) in m.hf.iter().zip(part_rows) {
            let part = values[start * cols..(start + r) * cols].to_vec();
            let hf_shape = if shape.len() == 1 { vec![r] } else { vec![r, cols] };
            out.insert(name.clone(), (part, hf_shape));
            start += r;
        }
    }
    Ok(out)
}

/// Writes `dir/config.json` and `dir/model.safetensors` for `model`; returns the files written.
pub fn export<B: Backend>(model: &Lm<B>, lm: &LmConfig, dir: &Path, dtype: ExportDtype) -> Result<Vec<PathBuf>, String> {
    let c = hf_config_of(lm)?;
    let tensors = hf_tensors(model, &c)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut config = config_json(&c);
    config["torch_dtype"] = json!(if dtype == ExportDtype::Bf16 { "bfloat16" } else { "float32" });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).expect("serializes"))
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let weights = dir.join("model.safetensors");
    write_safetensors(&weights, &tensors, dtype, Some(HashMap::from([("format".to_string(), "pt".to_string())])))?;
    Ok(vec![config_path, weights])
}

/// Writes named f32 tensors as a safetensors file in `dtype` (atomically: a temporary file,
/// then a rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    dtype: ExportDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), String> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, (values, shape))| {
            let b: Vec<u8> = match dtype {
                ExportDtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ExportDtype::Bf16 => values.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            };
            (name.clone(), b, shape.clone())
        })
        .collect();
    let st_dtype = if dtype == ExportDtype::Bf16 { Dtype::BF16 } else { Dtype::F32 };
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, b, shape)| Ok((name.clone(), TensorView::new(st_dtype, shape.clone(), b).map_err(|e| format!("{name}: {e}"))?)))
        .collect::<Result<_, String>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
