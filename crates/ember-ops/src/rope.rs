//! Rotary position embedding, rotate-half (Llama / Hugging Face) convention (LAYERS.md P4), with
//! the frequency scalings of Hugging Face checkpoints (`rope_scaling` / `rope_parameters`):
//! linear, dynamic NTK, YaRN and Llama 3.
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// How the rotation frequencies are rescaled for contexts longer than pretraining's, as
/// Hugging Face `transformers` defines each `rope_type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor` (every frequency over `factor`).
    Linear { factor: f64 },
    /// NTK-aware: past `original_max_position` tokens the base grows with the sequence length.
    Dynamic { factor: f64, original_max_position: usize },
    /// YaRN: low frequencies interpolated, high ones kept, a ramp between (`beta_fast`,
    /// `beta_slow` rotations), and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position: usize,
        #[serde(default = "default_beta_fast")]
        beta_fast: f64,
        #[serde(default = "default_beta_slow")]
        beta_slow: f64,
        /// Default `0.1·ln(factor) + 1` (or from `mscale` / `mscale_all_dim`).
        #[serde(default)]
        attention_factor: Option<f64>,
        #[serde(default)]
        mscale: Option<f64>,
        #[serde(default)]
        mscale_all_dim: Option<f64>,
    },
    /// Llama 3.1: wavelengths above `original_max_position / low_freq_factor` divided by
    /// `factor`, below `/ high_freq_factor` kept, smoothly between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: usize },
}

fn default_beta_fast() -> f64 {
    32.0
}
fn default_beta_slow() -> f64 {
    1.0
}

impl RopeScaling {
    pub fn validate(&self) -> Result<(), String> {
        let factor = match self {
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor, .. }
            | RopeScaling::Yarn { factor, .. }
            | RopeScaling::Llama3 { factor, .. } => *factor,
        };
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(format!("rope scaling factor must be positive, got {factor}"));
        }
        if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = self {
            if !(high_freq_factor > low_freq_factor) {
                return Err(format!("llama3 rope scaling needs high_freq_factor > low_freq_factor, got {high_freq_factor} and {low_freq_factor}"));
            }
        }
        Ok(())
    }
}

/// The inverse frequencies of the `dim / 2` rotated pairs for a sequence of `seq_len` tokens, and
/// the factor cos and sin are scaled by (1 except for YaRN).
pub fn frequencies(dim: usize, base: f64, scaling: Option<&RopeScaling>, seq_len: usize) -> (Vec<f64>, f64) {
    let plain = |base: f64| -> Vec<f64> { (0..dim / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / dim as f64)).collect() };
    match scaling {
        None => (plain(base), 1.0),
        Some(RopeScaling::Linear { factor }) => (plain(base).into_iter().map(|f| f / factor).collect(), 1.0),
        Some(RopeScaling::Dynamic { factor, original_max_position }) => {
            let max = *original_max_position as f64;
            let seq = seq_len as f64;
            let base = match seq > max {
                true => base * ((factor * seq / max) - (factor - 1.0)).powf(dim as f64 / (dim as f64 - 2.0)),
                false => base,
            };
            (plain(base), 1.0)
        }
        Some(RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim }) => {
            let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                (Some(m), Some(all)) if *m != 0.0 && *all != 0.0 => get_mscale(*factor, *m) / get_mscale(*factor, *all),
                _ => get_mscale(*factor, 1.0),
            });
            let correction = |rotations: f64| {
                dim as f64 * (*original_max_position as f64 / (rotations * 2.0 * PI)).ln() / (2.0 * base.ln())
            };
            let low = correction(*beta_fast).floor().max(0.0);
            let mut high = correction(*beta_slow).ceil().min(dim as f64 - 1.0);
            if low == high {
                high += 0.001;
            }
            let freqs = (0..dim / 2)
                .map(|i| {
                    let pos_freq = base.powf(2.0 * i as f64 / dim as f64);
                    let (extrapolated, interpolated) = (1.0 / pos_freq, 1.0 / (factor * pos_freq));
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp; // share of the unscaled frequency
                    interpolated * (1.0 - keep) + extrapolated * keep
                })
                .collect();
            (freqs, attention)
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
            let old = *original_max_position as f64;
            let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
            let freqs = plain(base)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (freqs, 1.0)
        }
    }
}

/// Applies RoPE to `x: [B, T, H, D]` whose first token sits at absolute position `offset`
/// (rotating in f32, so bf16 inputs lose no position information to rounded angles).
pub fn apply<B: Backend>(x: Tensor<B, 4>, offset: usize, base: f64) -> Tensor<B, 4> {
    apply_scaled(x, offset, base, None)
}

/// [`apply`] with a frequency scaling.
pub fn apply_scaled<B: Backend>(x: Tensor<B, 4>, offset: usize, base: f64, scaling: Option<&RopeScaling>) -> Tensor<B, 4> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let [_, t, _, d] = x.dims();
    assert!(d % 2 == 0, "RoPE needs an even head dimension, got {d}");
    let device = x.device();
    let half = d / 2;
    let (freqs, attention_factor) = frequencies(d, base, scaling, offset + t);
    // Frequencies in f32 like Hugging Face's buffers, so angles round the same way.
    let inv_freq: Vec<f32> = freqs.iter().map(|&f| f as f32).collect();
    let pos: Vec<f32> = (offset..offset + t).map(|p| p as f32).collect();
    let pos = Tensor::<B, 1>::from_floats(pos.as_slice(), &device).reshape([t, 1]);
    let freq = Tensor::<B, 1>::from_floats(inv_freq.as_slice(), &device).reshape([1, half]);
    let angles = pos.matmul(freq); // [T, D/2]
    let angles = Tensor::cat(vec![angles.clone(), angles], 1).reshape([1, t, 1, d]);
    let rotated = Tensor::cat(vec![x.clone().narrow(3, half, half).neg(), x.clone().narrow(3, 0, half)], 3);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let (cos, sin) = match attention_factor {
        f if f == 1.0 => (cos, sin),
        f => (cos * f, sin * f),
    };
    to_dtype(x * cos + rotated * sin, dtype)
}
