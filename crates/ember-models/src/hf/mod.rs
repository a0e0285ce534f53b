//! Hugging Face decoder checkpoints (Llama, Qwen2, Mistral) as ember models.
//!
//! These architectures are ember's own pre-norm decoder with softmax attention in every layer:
//! RMSNorm, attention with rotate-half RoPE (and its scalings), grouped-query heads, optional
//! q/k/v (and Llama's o) biases, a SwiGLU MLP, a tied or untied head. [`lm_config`] turns a
//! `config.json` into an [`LmConfig`]; [`load`] reads the weights (memory-mapped `safetensors`,
//! one file or a sharded index; f32, bf16 or f16) into it; [`export`] writes an ember model of
//! that shape back in the Hugging Face layout. Nothing is downloaded: paths are local.
mod weights;
pub mod export;
pub mod fla;

pub use weights::Checkpoint;

use crate::lm::{LmConfig, Schedule};
use crate::Lm;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, TensorSnapshot};
use ember_layers::attention::AttentionConfig;
use ember_layers::mlp::{MlpConfig, MlpKind};
use ember_layers::norm::NormKind;
use ember_layers::seeded::exclusive_draws;
use ember_layers::MixerConfig;
use ember_ops::rope::RopeScaling;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An error a user can cause: a bad directory, config or checkpoint, named with its path.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: config key {key}: {message}")]
    Config { path: PathBuf, key: String, message: String },
    #[error("{dir}: the checkpoint does not fit the config:\n{problems}")]
    Tensors { dir: PathBuf, problems: String },
}

/// The architectures read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Mistral,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
        }
    }

    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
        }
    }
}

/// What ember takes from a `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Mistral's sliding window (keys with `t − s < window`), if any.
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
}

impl HfConfig {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<HfConfig, HfError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| HfError::File { path: path.clone(), message: e.to_string() })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| HfError::File { path: path.clone(), message: format!("not JSON: {e}") })?;
        Self::from_json(&value, &path)
    }

    /// Parses a config (as `transformers` 4 or 5 writes it); `path` names it in errors.
    pub fn from_json(v: &Value, path: &Path) -> Result<HfConfig, HfError> {
        let err = |key: &str, message: String| HfError::Config { path: path.to_path_buf(), key: key.into(), message };
        let usize_of = |key: &str| -> Result<usize, HfError> {
            v[key].as_u64().map(|x| x as usize).ok_or_else(|| err(key, "missing or not a whole number".into()))
        };
        let model_type = v["model_type"].as_str().ok_or_else(|| err("model_type", "missing".into()))?;
        let family = match model_type {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "mistral" => Family::Mistral,
            other => return Err(err("model_type", format!("{other:?} is not supported (llama, qwen2, mistral)"))),
        };
        if let Some(act) = v["hidden_act"].as_str().filter(|a| *a != "silu") {
            return Err(err("hidden_act", format!("{act:?}: only \"silu\" (SwiGLU) is supported")));
        }
        if v["mlp_bias"].as_bool() == Some(true) {
            return Err(err("mlp_bias", "MLP biases are not supported".into()));
        }
        let hidden_size = usize_of("hidden_size")?;
        let num_heads = usize_of("num_attention_heads")?;
        let num_kv_heads = v["num_key_value_heads"].as_u64().map_or(num_heads, |x| x as usize);
        let head_dim = match v["head_dim"].as_u64() {
            Some(d) => d as usize,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => return Err(err("head_dim", "absent, and hidden_size is not divisible by num_attention_heads".into())),
        };
        // transformers 5 moves rope_theta and the scaling into `rope_parameters`.
        let rope = if v["rope_parameters"].is_object() { &v["rope_parameters"] } else { v };
        let rope_theta = rope["rope_theta"].as_f64().or(v["rope_theta"].as_f64()).unwrap_or(10_000.0);
        let max_position_embeddings = v["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
        let scaling_table = if v["rope_scaling"].is_object() { &v["rope_scaling"] } else { rope };
        let rope_scaling = rope_scaling(scaling_table, max_position_embeddings).map_err(|m| err("rope_scaling", m))?;
        let attention_bias = v["attention_bias"].as_bool().unwrap_or(false);
        let sliding_window = match family {
            Family::Mistral => v["sliding_window"].as_u64().map(|w| w as usize),
            Family::Qwen2 if v["use_sliding_window"].as_bool() == Some(true) => {
                return Err(err("use_sliding_window", "Qwen2's per-layer sliding window is not supported".into()));
            }
            _ => None,
        };
        Ok(HfConfig {
            family,
            vocab_size: usize_of("vocab_size")?,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers: usize_of("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family == Family::Llama && attention_bias,
            sliding_window,
            max_position_embeddings,
        })
    }
}

/// A `rope_scaling` (or transformers 5 `rope_parameters`) table; `None` for the default type.
fn rope_scaling(t: &Value, max_positions: usize) -> Result<Option<RopeScaling>, String> {
    let kind = t["rope_type"].as_str().or(t["type"].as_str()).unwrap_or("default");
    let f = |key: &str| t[key].as_f64().ok_or_else(|| format!("{kind} scaling needs {key}"));
    let original = t["original_max_position_embeddings"].as_u64().map_or(max_positions, |x| x as usize);
    let scaling = match kind {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear { factor: f("factor")? },
        "dynamic" => RopeScaling::Dynamic { factor: f("factor")?, original_max_position: original },
        "yarn" => RopeScaling::Yarn {
            factor: f("factor")?,
            original_max_position: original,
            beta_fast: t["beta_fast"].as_f64().unwrap_or(32.0),
            beta_slow: t["beta_slow"].as_f64().unwrap_or(1.0),
            attention_factor: t["attention_factor"].as_f64(),
            mscale: t["mscale"].as_f64(),
            mscale_all_dim: t["mscale_all_dim"].as_f64(),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position: original,
        },
        other => return Err(format!("rope type {other:?} is not supported (default, linear, dynamic, yarn, llama3)")),
    };
    scaling.validate()?;
    Ok(Some(scaling))
}

/// The mixer name every layer of an HF model uses.
pub const ATTENTION: &str = "attn";

/// The ember model of an HF config: softmax attention everywhere, SwiGLU, RMSNorm, the
/// vocabulary unpadded (so shapes match the checkpoint).
pub fn lm_config(c: &HfConfig) -> LmConfig {
    let attention = AttentionConfig {
        heads: c.num_heads,
        kv_heads: Some(c.num_kv_heads),
        head_dim: Some(c.head_dim),
        window: c.sliding_window.map(|w| w.saturating_sub(1)),
        rope: true,
        rope_base: c.rope_theta,
        rope_scaling: c.rope_scaling.clone(),
        qkv_bias: c.qkv_bias,
        out_bias: c.o_bias,
        persistent: 0,
    };
    LmConfig {
        vocab_size: c.vocab_size,
        pad_vocab_to: 1,
        d_model: c.hidden_size,
        n_layers: c.num_layers,
        mixers: BTreeMap::from([(ATTENTION.to_string(), MixerConfig::Attention(attention))]),
        schedule: Schedule { default: ATTENTION.into(), pattern: None, at: BTreeMap::new() },
        mlp: MlpConfig { kind: MlpKind::Swiglu, hidden: Some(c.intermediate_size), ..Default::default() },
        norm: NormKind::Rmsnorm,
        norm_eps: c.rms_norm_eps,
        tie_embeddings: c.tie_word_embeddings,
        scale_embeddings: false,
    }
}

/// How each ember parameter is made from HF tensors: their names, and whether to concatenate
/// (along the output dimension) and transpose (`[out, in]` → Burn's `[in, out]`).
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    pub ember: String,
    pub hf: Vec<String>,
    pub transpose: bool,
}

/// The parameter mapping of an HF config, in module order.
pub(crate) fn mappings(c: &HfConfig) -> Vec<Mapping> {
    let m = |ember: String, hf: Vec<String>, transpose: bool| Mapping { ember, hf, transpose };
    let mut out = vec![m("embed.weight".into(), vec!["model.embed_tokens.weight".into()], false)];
    for i in 0..c.num_layers {
        let (b, l) = (format!("blocks.{i}"), format!("model.layers.{i}"));
        let qkv = |suffix: &str| ["q", "k", "v"].map(|p| format!("{l}.self_attn.{p}_proj.{suffix}")).to_vec();
        out.push(m(format!("{b}.mixer_norm.Rms.gamma"), vec![format!("{l}.input_layernorm.weight")], false));
        out.push(m(format!("{b}.mixer.Attention.qkv.weight"), qkv("weight"), true));
        if c.qkv_bias {
            out.push(m(format!("{b}.mixer.Attention.qkv.bias"), qkv("bias"), false));
        }
        out.push(m(format!("{b}.mixer.Attention.out.weight"), vec![format!("{l}.self_attn.o_proj.weight")], true));
        if c.o_bias {
            out.push(m(format!("{b}.mixer.Attention.out.bias"), vec![format!("{l}.self_attn.o_proj.bias")], false));
        }
        out.push(m(format!("{b}.mlp_norm.Rms.gamma"), vec![format!("{l}.post_attention_layernorm.weight")], false));
        // ember's SwiGLU is `[value | gate] = x W_in`: value = up, gate = gate.
        let fc_in = vec![format!("{l}.mlp.up_proj.weight"), format!("{l}.mlp.gate_proj.weight")];
        out.push(m(format!("{b}.mlp.Glu.fc_in.weight"), fc_in, true));
        out.push(m(format!("{b}.mlp.Glu.fc_out.weight"), vec![format!("{l}.mlp.down_proj.weight")], true));
    }
    out.push(m("final_norm.Rms.gamma".into(), vec!["model.norm.weight".into()], false));
    if !c.tie_word_embeddings {
        out.push(m("head.weight".into(), vec!["lm_head.weight".into()], true));
    }
    out
}

/// A teacher loaded from a directory: its config and the ember model holding its weights.
pub struct Teacher<B: Backend> {
    pub config: HfConfig,
    pub lm_config: LmConfig,
    pub model: Lm<B>,
}

/// Loads `dir` (`config.json` and `model.safetensors` or `model.safetensors.index.json` with its
/// shards) onto `device` in f32. Every expected tensor must be present with the shape the config
/// implies; the error lists every missing or mismatched one.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Teacher<B>, HfError> {
    let config = HfConfig::read(dir)?;
    let lm_config = lm_config(&config);
    lm_config
        .validate()
        .map_err(|(key, message)| HfError::Config { path: dir.join("config.json"), key, message })?;
    let model = load_mapped(dir, &lm_config, &mappings(&config), device)?;
    Ok(Teacher { config, lm_config, model })
}

/// `lm_config`'s model with every parameter read from the safetensors in `dir` through `maps`;
/// the error lists every missing or mismatched tensor.
pub(crate) fn load_mapped<B: Backend>(dir: &Path, lm_config: &LmConfig, maps: &[Mapping], device: &B::Device) -> Result<Lm<B>, HfError> {
    let checkpoint = Checkpoint::open(dir)?;
    // Building the skeleton may draw from the backend's generator (eager initialisers, and lazy
    // ones as `apply` replaces them): under the seeding lock, so another thread's seeded model
    // keeps its weights.
    let (model, used) = exclusive_draws(|| -> Result<_, HfError> {
        let mut model: Lm<B> = lm_config.init(device);
        let expected: BTreeMap<String, Vec<usize>> =
            model.collect(None, None, false).into_iter().map(|s| (s.full_path(), s.shape.to_vec())).collect();
        let mut problems = Vec::new();
        let mut snapshots = Vec::new();
        for mapping in maps {
            let Some(shape) = expected.get(&mapping.ember) else {
                problems.push(format!("  ember has no parameter {} (a bug in the mapping)", mapping.ember));
                continue;
            };
            match checkpoint.snapshot(mapping, shape) {
                Ok(snapshot) => snapshots.push(snapshot),
                Err(problem) => problems.push(format!("  {problem}")),
            }
        }
        if !problems.is_empty() {
            return Err(HfError::Tensors { dir: dir.to_path_buf(), problems: problems.join("\n") });
        }
        let used: Vec<String> = maps.iter().flat_map(|m| m.hf.clone()).collect();
        let result = model.apply(snapshots, None, None, false);
        if !result.errors.is_empty() || !result.missing.is_empty() {
            let mut problems: Vec<String> = result.errors.iter().map(|e| format!("  {e:?}")).collect();
            problems.extend(result.missing.iter().map(|(path, _)| format!("  ember parameter {path} was not set")));
            return Err(HfError::Tensors { dir: dir.to_path_buf(), problems: problems.join("\n") });
        }
        Ok((model, used))
    })?;
    let _unused = checkpoint.unused(&used);
    Ok(model)
}

/// A snapshot of `data` at the ember path `path` (for [`ModuleSnapshot::apply`]).
pub(crate) fn snapshot_at(path: &str, shape: Vec<usize>, data: std::rc::Rc<dyn Fn() -> Result<burn::tensor::TensorData, burn_store::TensorSnapshotError>>) -> TensorSnapshot {
    TensorSnapshot::from_closure(
        data,
        burn::tensor::DType::F32,
        burn::tensor::Shape::from(shape),
        path.split('.').map(str::to_string).collect(),
        Vec::new(),
        burn::module::ParamId::new(),
    )
}
