//! GLA models (every layer GLA, or GLA with some softmax-attention layers) in the layout of
//! flash-linear-attention's `GLAForCausalLM` (`config.json` with `model_type = "gla"` and
//! safetensors): [`export`] writes one so `fla` loads it with
//! `AutoModelForCausalLM.from_pretrained`, and [`load`] reads one (ember's export, or a
//! checkpoint trained with fla in the settings ember has).
//!
//! fla's `GLABlock` builds its GLA layers with the layer defaults for the gate
//! (`gate_low_rank_dim = 16`, `gate_logit_normalizer = 16`) and one `norm_eps` for every norm,
//! so only models that match those can be written; the error says which key does not.
use super::export::{mapped_tensors, write_safetensors, ExportDtype};
use super::{load_mapped, HfError, Mapping};
use crate::lm::LmConfig;
use crate::Lm;
use burn::tensor::backend::Backend;
use ember_layers::attention::AttentionConfig;
use ember_layers::gla::GlaConfig;
use ember_layers::mlp::MlpConfig;
use crate::lm::Schedule;
use std::collections::BTreeMap;
use ember_layers::mlp::MlpKind;
use ember_layers::norm::NormKind;
use ember_layers::MixerConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The GLA config all GLA layers share, the attention config of the others (if any), and the
/// attention layers' indices.
fn split(lm: &LmConfig) -> Result<(GlaConfig, Option<(AttentionConfig, Vec<usize>)>), String> {
    let (mut gla, mut attn, mut attn_layers) = (None::<&GlaConfig>, None::<&AttentionConfig>, Vec::new());
    for (i, name) in lm.layer_mixers().into_iter().enumerate() {
        match &lm.mixers[name] {
            MixerConfig::Gla(c) if gla.is_none_or(|g| g == c) => gla = Some(c),
            MixerConfig::Attention(a) if a.persistent > 0 => return Err("fla has no persistent attention tokens".into()),
            MixerConfig::Attention(a) if attn.is_none_or(|x| x == a) => {
                attn = Some(a);
                attn_layers.push(i);
            }
            MixerConfig::Gla(_) | MixerConfig::Attention(_) => return Err("fla's GLA model has one GLA config and one attention config for all layers".into()),
            other => return Err(format!("layer {i} is {:?}: fla's GLAForCausalLM holds GLA and softmax-attention layers only (export ember's own layout instead)", other.kind())),
        }
    }
    let gla = gla.ok_or("the model has no GLA layer")?.clone();
    if gla.gate_low_rank != 16 || gla.gate_normalizer != 16.0 {
        return Err(format!(
            "fla builds GLA layers with gate_low_rank = 16 and gate_normalizer = 16; this model has {} and {}",
            gla.gate_low_rank, gla.gate_normalizer
        ));
    }
    if gla.norm_eps != lm.norm_eps {
        return Err(format!("fla uses one norm_eps for every norm: the GLA layers' ({}) must equal the model's ({})", gla.norm_eps, lm.norm_eps));
    }
    if lm.mlp.kind != MlpKind::Swiglu || lm.norm != NormKind::Rmsnorm || lm.scale_embeddings {
        return Err("fla's GLA model has a SwiGLU MLP, RMSNorm and unscaled embeddings".into());
    }
    if let Some(a) = attn {
        if a.out_bias || a.rope_scaling.is_some() || a.head_dim.is_some_and(|h| h * a.heads != lm.d_model) {
            return Err("fla's attention layers have no output bias, no RoPE scaling and head_dim = hidden_size / num_heads".into());
        }
    }
    Ok((gla, attn.cloned().map(|a| (a, attn_layers))))
}

/// `config.json` of fla's `GLAConfig` for `lm`.
pub fn config_json(lm: &LmConfig) -> Result<Value, String> {
    let (gla, attn) = split(lm)?;
    let d = lm.d_model as f64;
    Ok(json!({
        "architectures": ["GLAForCausalLM"],
        "model_type": "gla",
        "vocab_size": lm.padded_vocab(),
        "hidden_size": lm.d_model,
        "expand_k": gla.key_dim(lm.d_model) as f64 / d,
        "expand_v": gla.value_dim(lm.d_model) as f64 / d,
        "hidden_ratio": null,
        "intermediate_size": lm.mlp.hidden_width(lm.d_model),
        "num_hidden_layers": lm.n_layers,
        "num_heads": gla.heads,
        "num_kv_heads": null,
        "feature_map": null,
        "attn_mode": "chunk",
        "use_short_conv": false,
        "use_output_gate": gla.output_gate,
        "clamp_min": gla.gate_clamp_min,
        "hidden_act": "swish",
        "elementwise_affine": true,
        "norm_eps": lm.norm_eps,
        "attn": attn.map(|(a, layers)| json!({
            "layers": layers,
            "num_heads": a.heads,
            "num_kv_heads": a.kv_heads(),
            "qkv_bias": a.qkv_bias,
            "window_size": a.window.map(|w| w + 1),
            "rope_theta": a.rope_base,
        })),
        "tie_word_embeddings": lm.tie_embeddings,
        "fuse_norm": true,
        "fuse_swiglu": true,
        "fuse_cross_entropy": true,
        "torch_dtype": "float32",
    }))
}

/// ember parameter path → fla names, in module order.
fn fla_mappings(lm: &LmConfig, gla: &GlaConfig) -> Vec<Mapping> {
    let m = |ember: String, hf: Vec<String>, transpose: bool| Mapping { ember, hf, transpose };
    let mut out = vec![m("embed.weight".into(), vec!["model.embeddings.weight".into()], false)];
    for (i, name) in lm.layer_mixers().into_iter().enumerate() {
        let (b, l) = (format!("blocks.{i}"), format!("model.layers.{i}"));
        out.push(m(format!("{b}.mixer_norm.Rms.gamma"), vec![format!("{l}.attn_norm.weight")], false));
        match &lm.mixers[name] {
            MixerConfig::Attention(a) => {
                let qkv = |suffix: &str| ["q", "k", "v"].map(|p| format!("{l}.attn.{p}_proj.{suffix}")).to_vec();
                out.push(m(format!("{b}.mixer.Attention.qkv.weight"), qkv("weight"), true));
                if a.qkv_bias {
                    out.push(m(format!("{b}.mixer.Attention.qkv.bias"), qkv("bias"), false));
                }
                out.push(m(format!("{b}.mixer.Attention.out.weight"), vec![format!("{l}.attn.o_proj.weight")], true));
            }
            _ => {
                let g = format!("{b}.mixer.Gla");
                for (ours, theirs) in [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")] {
                    out.push(m(format!("{g}.{ours}.weight"), vec![format!("{l}.attn.{theirs}.weight")], true));
                }
                if gla.output_gate {
                    out.push(m(format!("{g}.gate.weight"), vec![format!("{l}.attn.g_proj.weight")], true));
                }
                out.push(m(format!("{g}.decay_down.weight"), vec![format!("{l}.attn.gk_proj.0.weight")], true));
                out.push(m(format!("{g}.decay_up.weight"), vec![format!("{l}.attn.gk_proj.1.weight")], true));
                out.push(m(format!("{g}.decay_up.bias"), vec![format!("{l}.attn.gk_proj.1.bias")], false));
                // fla fuses norm and output gate when there is a gate (`g_norm_swish_gate`).
                let norm = if gla.output_gate { "g_norm_swish_gate" } else { "g_norm" };
                out.push(m(format!("{g}.norm_gain"), vec![format!("{l}.attn.{norm}.weight")], false));
                out.push(m(format!("{g}.out.weight"), vec![format!("{l}.attn.o_proj.weight")], true));
            }
        }
        out.push(m(format!("{b}.mlp_norm.Rms.gamma"), vec![format!("{l}.mlp_norm.weight")], false));
        // ember's SwiGLU is `[value | gate] = x W_in`: value = up, gate = gate.
        out.push(m(format!("{b}.mlp.Glu.fc_in.weight"), vec![format!("{l}.mlp.up_proj.weight"), format!("{l}.mlp.gate_proj.weight")], true));
        out.push(m(format!("{b}.mlp.Glu.fc_out.weight"), vec![format!("{l}.mlp.down_proj.weight")], true));
    }
    out.push(m("final_norm.Rms.gamma".into(), vec!["model.norm.weight".into()], false));
    if !lm.tie_embeddings {
        out.push(m("head.weight".into(), vec!["lm_head.weight".into()], true));
    }
    out
}

/// Writes `dir/config.json` and `dir/model.safetensors` in fla's GLA layout; returns the files.
pub fn export<B: Backend>(model: &Lm<B>, lm: &LmConfig, dir: &Path, dtype: ExportDtype) -> Result<Vec<PathBuf>, String> {
    let (gla, attn) = split(lm)?;
    let kv_width = attn.as_ref().map_or(0, |(a, _)| a.kv_heads() * a.head_dim(lm.d_model));
    let tensors = mapped_tensors(model, &fla_mappings(lm, &gla), kv_width)?;
    let mut config = config_json(lm)?;
    config["torch_dtype"] = json!(if dtype == ExportDtype::Bf16 { "bfloat16" } else { "float32" });
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).expect("serializes")).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let weights = dir.join("model.safetensors");
    write_safetensors(&weights, &tensors, dtype, Some(HashMap::from([("format".to_string(), "pt".to_string())])))?;
    Ok(vec![config_path, weights])
}

/// The ember model of an fla `GLAConfig` (`config.json` of `dir`).
pub fn lm_config(v: &Value, path: &Path) -> Result<LmConfig, HfError> {
    let err = |key: &str, message: String| HfError::Config { path: path.to_path_buf(), key: key.into(), message };
    let num = |key: &str| v[key].as_u64().map(|x| x as usize).ok_or_else(|| err(key, "missing or not a whole number".into()));
    let float = |key: &str, default: f64| v.get(key).and_then(Value::as_f64).unwrap_or(default);
    if v["model_type"].as_str() != Some("gla") {
        return Err(err("model_type", format!("{} is not fla's \"gla\"", v["model_type"])));
    }
    for (key, ok) in [
        ("use_short_conv", !v["use_short_conv"].as_bool().unwrap_or(false)),
        ("feature_map", v["feature_map"].is_null()),
        ("use_gv", !v["use_gv"].as_bool().unwrap_or(false)),
        ("hidden_act", v["hidden_act"].as_str().unwrap_or("swish") == "swish"),
    ] {
        if !ok {
            return Err(err(key, format!("{}: ember's GLA has no such variant", v[key])));
        }
    }
    let (d, heads) = (num("hidden_size")?, num("num_heads")?);
    if v["num_kv_heads"].as_u64().is_some_and(|k| k as usize != heads) {
        return Err(err("num_kv_heads", "grouped key/value heads in GLA layers are not supported".into()));
    }
    let intermediate = match v["intermediate_size"].as_u64() {
        Some(x) => x as usize,
        // fla's GatedMLP: 2/3 · hidden_ratio · hidden, rounded up to a multiple of 256.
        None => (((d as f64 * float("hidden_ratio", 4.0) * 2.0 / 3.0) as usize).div_ceil(256)) * 256,
    };
    let norm_eps = float("norm_eps", 1e-6);
    let gla = GlaConfig {
        heads,
        expand_k: float("expand_k", 0.5),
        expand_v: float("expand_v", 1.0),
        gate_low_rank: 16,
        gate_normalizer: 16.0,
        gate_clamp_min: v["clamp_min"].as_f64(),
        output_gate: v["use_output_gate"].as_bool().unwrap_or(true),
        norm_eps,
        ..Default::default()
    };
    let mut mixers = BTreeMap::from([("gla".to_string(), MixerConfig::Gla(gla))]);
    let mut at = BTreeMap::new();
    if let Some(attn) = v.get("attn").filter(|a| !a.is_null()) {
        let layers: Vec<usize> = serde_json::from_value(attn["layers"].clone()).map_err(|e| err("attn.layers", e.to_string()))?;
        let attn_heads = attn["num_heads"].as_u64().ok_or_else(|| err("attn.num_heads", "missing".into()))? as usize;
        let attention = AttentionConfig {
            heads: attn_heads,
            kv_heads: Some(attn["num_kv_heads"].as_u64().map_or(attn_heads, |k| k as usize)),
            head_dim: None,
            window: attn["window_size"].as_u64().map(|w| (w as usize).saturating_sub(1)),
            rope: true,
            rope_base: attn["rope_theta"].as_f64().unwrap_or(10_000.0),
            rope_scaling: None,
            qkv_bias: attn["qkv_bias"].as_bool().unwrap_or(false),
            out_bias: false,
            persistent: 0,
        };
        mixers.insert("attn".into(), MixerConfig::Attention(attention));
        at.insert("attn".to_string(), layers);
    }
    let lm = LmConfig {
        vocab_size: num("vocab_size")?,
        pad_vocab_to: 1,
        d_model: d,
        n_layers: num("num_hidden_layers")?,
        mixers,
        schedule: Schedule { default: "gla".into(), pattern: None, at },
        mlp: MlpConfig { kind: MlpKind::Swiglu, hidden: Some(intermediate), ..Default::default() },
        norm: NormKind::Rmsnorm,
        norm_eps,
        tie_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
        scale_embeddings: false,
    };
    lm.validate().map_err(|(key, message)| err(&key, message))?;
    Ok(lm)
}

/// Reads an fla `GLAForCausalLM` directory (`config.json`, safetensors) onto `device` in f32.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<(LmConfig, Lm<B>), HfError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| HfError::File { path: path.clone(), message: e.to_string() })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| HfError::File { path: path.clone(), message: format!("not JSON: {e}") })?;
    let lm = lm_config(&value, &path)?;
    let MixerConfig::Gla(gla) = &lm.mixers["gla"] else { unreachable!("lm_config puts GLA under \"gla\"") };
    let model = load_mapped(dir, &lm, &fla_mappings(&lm, gla), device)?;
    Ok((lm, model))
}
