//! Gated Linear Attention (LAYERS.md §2): linear attention whose state decays per key channel
//! by a data-dependent gate, with a per-head RMSNorm and a SiLU output gate.
use crate::init::{linear, INIT_STD};
use crate::norm::srms_norm;
use crate::LayerContext;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{log_sigmoid, silu};
use burn::tensor::{backend::Backend, Tensor};
use ember_ops::gated_linear_attention as op;
use ember_ops::precision::to_f32;
use ember_ops::Form;
use serde::{Deserialize, Serialize};

/// `kind = "gla"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlaConfig {
    pub heads: usize,
    /// Query/key width as a fraction of `d_model` (`D_k = expand_k · D`, split over heads).
    pub expand_k: f64,
    /// Value width as a fraction of `d_model` (`D_v = expand_v · D`, split over heads).
    pub expand_v: f64,
    /// Rank of the gate projection `W_α1 W_α2`.
    pub gate_low_rank: usize,
    /// τ in `log α = logsigmoid(x W_α1 W_α2 + b_α) / τ`: larger keeps the gates closer to 1.
    pub gate_normalizer: f64,
    /// Lower bound on `log α` (a negative number); absent means no clamp.
    pub gate_clamp_min: Option<f64>,
    /// Multiply the normalised output by `SiLU(x W_g)`.
    pub output_gate: bool,
    /// Epsilon of the per-head RMSNorm.
    pub norm_eps: f64,
    /// Training form: "chunked" or "parallel".
    pub form: Form,
    pub chunk_size: usize,
}

impl Default for GlaConfig {
    fn default() -> Self {
        Self {
            heads: 4,
            expand_k: 0.5,
            expand_v: 1.0,
            gate_low_rank: 16,
            gate_normalizer: 16.0,
            gate_clamp_min: None,
            output_gate: true,
            norm_eps: 1e-6,
            form: Form::Chunked,
            chunk_size: 64,
        }
    }
}

/// `expand · d_model` when it is a positive whole number.
fn width(d_model: usize, expand: f64) -> Option<usize> {
    let w = d_model as f64 * expand;
    (w >= 1.0 && w.fract() == 0.0).then_some(w as usize)
}

impl GlaConfig {
    /// Total query/key width `D_k`.
    pub fn key_dim(&self, d_model: usize) -> usize {
        width(d_model, self.expand_k).unwrap_or(0)
    }

    /// Total value width `D_v`.
    pub fn value_dim(&self, d_model: usize) -> usize {
        width(d_model, self.expand_v).unwrap_or(0)
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 {
            return Err("heads must be positive".into());
        }
        for (key, expand) in [("expand_k", self.expand_k), ("expand_v", self.expand_v)] {
            match width(d_model, expand) {
                Some(w) if w % self.heads == 0 => {}
                Some(w) => return Err(format!("{key}: width {w} is not divisible by heads ({})", self.heads)),
                None => return Err(format!("{key}: d_model ({d_model}) × {expand} is not a positive whole number")),
            }
        }
        if self.gate_low_rank == 0 || self.chunk_size == 0 {
            return Err("gate_low_rank and chunk_size must be positive".into());
        }
        if !(self.gate_normalizer > 0.0 && self.gate_normalizer.is_finite()) {
            return Err(format!("gate_normalizer must be positive, got {}", self.gate_normalizer));
        }
        if let Some(m) = self.gate_clamp_min {
            if !(m < 0.0) {
                return Err(format!("gate_clamp_min bounds a log decay and must be negative, got {m}"));
            }
        }
        if !(self.norm_eps > 0.0) {
            return Err(format!("norm_eps must be positive, got {}", self.norm_eps));
        }
        if self.form == Form::Recurrent {
            return Err("form must be \"chunked\" or \"parallel\" (the recurrent form is for generation)".into());
        }
        Ok(())
    }

    /// Weights of the matmuls (everything but the gate bias and the norm gain).
    fn matmul_params(&self, d_model: usize) -> usize {
        let (dk, dv, r) = (self.key_dim(d_model), self.value_dim(d_model), self.gate_low_rank);
        let gate = if self.output_gate { d_model * dv } else { 0 };
        2 * d_model * dk + d_model * dv + gate + d_model * r + r * dk + dv * d_model
    }

    pub fn params(&self, d_model: usize) -> usize {
        self.matmul_params(d_model) + self.key_dim(d_model) + self.value_dim(d_model) / self.heads.max(1)
    }

    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let h = self.heads as f64;
        let dk = self.key_dim(d_model) as f64 / h;
        let dv = self.value_dim(d_model) as f64 / h;
        let c = match self.form {
            Form::Parallel => seq_len as f64,
            _ => self.chunk_size.min(seq_len) as f64,
        };
        // Intra-chunk decayed scores (product, decay, sum per key channel) and mixing, plus
        // reading and updating the state.
        2.0 * self.matmul_params(d_model) as f64 + h * c * (3.0 * dk + 2.0 * dv) + 4.0 * h * dk * dv
    }

    pub fn state_size(&self, d_model: usize, _seq_len: usize) -> usize {
        self.key_dim(d_model) * self.value_dim(d_model) / self.heads.max(1)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Gla<B> {
        let d_model = at.d_model;
        let (dk, dv) = (self.key_dim(d_model), self.value_dim(d_model));
        Gla {
            q: linear(d_model, dk, false, INIT_STD, device),
            k: linear(d_model, dk, false, INIT_STD, device),
            v: linear(d_model, dv, false, INIT_STD, device),
            gate: self.output_gate.then(|| linear(d_model, dv, false, INIT_STD, device)),
            decay_down: linear(d_model, self.gate_low_rank, false, INIT_STD, device),
            decay_up: linear(self.gate_low_rank, dk, true, INIT_STD, device),
            norm_gain: Param::from_tensor(Tensor::ones([dv / self.heads], device)),
            out: linear(dv, d_model, false, out_std, device),
            heads: self.heads,
            gate_normalizer: self.gate_normalizer,
            gate_clamp_min: self.gate_clamp_min,
            norm_eps: self.norm_eps,
            chunked: self.form == Form::Chunked,
            chunk_size: self.chunk_size,
        }
    }
}

#[derive(Module, Debug)]
pub struct Gla<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    /// `W_g` of the output gate (absent with `output_gate = false`).
    pub gate: Option<Linear<B>>,
    /// `W_α1`: the low-rank gate's first factor.
    pub decay_down: Linear<B>,
    /// `W_α2` and `b_α`.
    pub decay_up: Linear<B>,
    /// RMSNorm gain `[d_v]`, shared by every head.
    pub norm_gain: Param<Tensor<B, 1>>,
    pub out: Linear<B>,
    pub heads: usize,
    pub gate_normalizer: f64,
    pub gate_clamp_min: Option<f64>,
    pub norm_eps: f64,
    pub chunked: bool,
    pub chunk_size: usize,
}

/// GLA's generation state: `S: [B, H, d_k, d_v]` in f32.
#[derive(Clone, Debug)]
pub struct GlaState<B: Backend> {
    pub kv: Tensor<B, 4>,
}

impl<B: Backend> GlaState<B> {
    /// Number of scalars held.
    pub fn numel(&self) -> usize {
        self.kv.shape().num_elements()
    }
}

impl<B: Backend> Gla<B> {
    fn key_dim(&self) -> usize {
        self.q.weight.dims()[1] / self.heads
    }

    /// Query scale `d_k^{-1/2}`.
    fn scale(&self) -> f64 {
        1.0 / (self.key_dim() as f64).sqrt()
    }

    /// The per-channel log decay `log α = logsigmoid(x W_α1 W_α2 + b_α) / τ`: `[B, T, H, d_k]`,
    /// in f32 (it is summed over time).
    pub fn log_decay(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        let pre = to_f32(self.decay_up.forward(self.decay_down.forward(x)));
        let mut g = log_sigmoid(pre) / self.gate_normalizer;
        if let Some(min) = self.gate_clamp_min {
            g = g.clamp_min(min);
        }
        g.reshape([b, t, self.heads, self.key_dim()])
    }

    /// `q, k: [B, T, H, d_k]`, `v: [B, T, H, d_v]` and the log decay.
    fn project(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 4] {
        let [b, t, _] = x.dims();
        let (h, dk) = (self.heads, self.key_dim());
        let dv = self.v.weight.dims()[1] / h;
        let q = self.q.forward(x.clone()).reshape([b, t, h, dk]);
        let k = self.k.forward(x.clone()).reshape([b, t, h, dk]);
        let v = self.v.forward(x.clone()).reshape([b, t, h, dv]);
        [q, k, v, self.log_decay(x)]
    }

    /// Per-head RMSNorm with the shared gain, the output gate and `W_o`: `o: [B, T, H, d_v]`.
    fn output(&self, x: Tensor<B, 3>, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, dv] = o.dims();
        let o = srms_norm(o, self.norm_eps) * self.norm_gain.val().reshape([1, 1, 1, dv]);
        let y = o.reshape([b, t, h * dv]);
        let y = match &self.gate {
            Some(gate) => y * silu(gate.forward(x)),
            None => y,
        };
        self.out.forward(y)
    }

    /// Training forward with an explicit form (the config's form is `forward`'s default).
    pub fn forward_with(&self, x: Tensor<B, 3>, form: Form) -> Tensor<B, 3> {
        let [q, k, v, g] = self.project(x.clone());
        let scale = self.scale();
        let out = match form {
            Form::Parallel => op::parallel(q, k, v, g, None, scale),
            Form::Chunked => op::chunked(q, k, v, g, None, scale, self.chunk_size),
            Form::Recurrent => op::recurrent(q, k, v, g, None, scale),
        };
        self.output(x, out.output)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, if self.chunked { Form::Chunked } else { Form::Parallel })
    }

    /// Consumes `x: [B, T, D]` from `state` (a prompt in one chunked pass, or one token).
    pub fn step(&self, x: Tensor<B, 3>, state: Option<GlaState<B>>) -> (Tensor<B, 3>, GlaState<B>) {
        let [q, k, v, g] = self.project(x.clone());
        let h0 = state.map(|s| s.kv);
        let out = if q.dims()[1] == 1 {
            let h0 = h0.unwrap_or_else(|| {
                let [b, _, h, dk] = q.dims();
                Tensor::zeros([b, h, dk, v.dims()[3]], &q.device())
            });
            op::step(q, k, v, g, h0, self.scale())
        } else {
            op::chunked(q, k, v, g, h0, self.scale(), self.chunk_size)
        };
        (self.output(x, out.output), GlaState { kv: out.state })
    }
}
