//! TransNormerLLM's token mixer, "NormLinearAttention" (LAYERS.md §3.1): linear attention with
//! a constant per-head decay, computed by Lightning Attention-2's blocks (§3.4), SRMSNorm over
//! all heads jointly and a linear output gate.
//!
//! The block-level parts of TNL (SRMSNorm block norms, the SGLU channel mixer, the `√D`
//! embedding scale, the tied head) are options of the model config, not of this mixer.
use crate::init::{linear, INIT_STD};
use crate::norm::srms_norm;
use crate::LayerContext;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use ember_ops::gated_linear_attention as op;
use ember_ops::precision::{to_dtype, to_f32};
use ember_ops::Form;
use serde::{Deserialize, Serialize};

/// How the per-head decay `λ_{h,l}` depends on the head `h` and the layer `l` of `L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecaySchedule {
    /// The released TNL code: `λ = exp(−s_h · (1 − l/(L−1) + 1e−5))` with ALiBi slopes `s_h`
    /// (the first layer decays fastest, the last barely at all).
    Released,
    /// flash-linear-attention's transcription of the paper: `log λ = −(8/H)(1 − l/L)·h`.
    Fla,
}

/// Which layers apply LRPE to `q` and `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrpeLayers {
    /// Layer 0 only (TNL3's README: LRPE + decay on the first layer, decay only elsewhere).
    First,
    All,
    None,
}

/// `kind = "transnormer"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransNormerConfig {
    pub heads: usize,
    /// Attention width `E` (split over heads); defaults to `d_model`.
    pub hidden_dim: Option<usize>,
    /// "released" (default) or "fla".
    pub decay_schedule: DecaySchedule,
    /// Layers with LRPE: "first" (default), "all" or "none".
    pub lrpe: LrpeLayers,
    /// Epsilon of the SRMSNorm over the attention output.
    pub norm_eps: f64,
    /// Training form: "chunked" (Lightning-2 blocks) or "parallel".
    pub form: Form,
    /// Lightning block size.
    pub chunk_size: usize,
}

impl Default for TransNormerConfig {
    fn default() -> Self {
        Self {
            heads: 8,
            hidden_dim: None,
            decay_schedule: DecaySchedule::Released,
            lrpe: LrpeLayers::First,
            norm_eps: 1e-6,
            form: Form::Chunked,
            chunk_size: 64,
        }
    }
}

/// ALiBi slopes for `n` heads: `2^{−8(h+1)/n}` for a power of two; otherwise the slopes of the
/// nearest lower power of two followed by every other slope of the doubled set.
pub fn alibi_slopes(n: usize) -> Vec<f64> {
    let power_of_two = |n: usize| (1..=n).map(|i| 2f64.powf(-8.0 * i as f64 / n as f64)).collect::<Vec<_>>();
    if n == 0 || n.is_power_of_two() {
        return power_of_two(n);
    }
    let lower = 1 << n.ilog2();
    let mut slopes = power_of_two(lower);
    slopes.extend(power_of_two(2 * lower).into_iter().step_by(2).take(n - lower));
    slopes
}

impl TransNormerConfig {
    /// Attention width `E`.
    pub fn hidden(&self, d_model: usize) -> usize {
        self.hidden_dim.unwrap_or(d_model)
    }

    fn head_dim(&self, d_model: usize) -> usize {
        self.hidden(d_model) / self.heads.max(1)
    }

    /// Whether layer `layer` applies LRPE.
    pub fn uses_lrpe(&self, layer: usize) -> bool {
        match self.lrpe {
            LrpeLayers::First => layer == 0,
            LrpeLayers::All => true,
            LrpeLayers::None => false,
        }
    }

    /// `log λ_h` (≤ 0) for every head of the layer at `at`.
    pub fn log_decays(&self, at: LayerContext) -> Vec<f64> {
        let (l, n) = (at.layer as f64, at.n_layers as f64);
        match self.decay_schedule {
            DecaySchedule::Released => {
                // With a single layer, 1 − l/(L−1) is 0/0: that layer gets the plain slopes.
                let depth = if at.n_layers > 1 { 1.0 - l / (n - 1.0) + 1e-5 } else { 1.0 };
                alibi_slopes(self.heads).into_iter().map(|s| -s * depth).collect()
            }
            DecaySchedule::Fla => {
                let rate = 8.0 / self.heads as f64 * (1.0 - l / n);
                (0..self.heads).map(|h| -rate * h as f64).collect()
            }
        }
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        let e = self.hidden(d_model);
        if self.heads == 0 || e == 0 || e % self.heads != 0 {
            return Err(format!("hidden_dim ({e}) must be positive and divisible by heads ({})", self.heads));
        }
        if self.chunk_size == 0 {
            return Err("chunk_size must be positive".into());
        }
        if !(self.norm_eps > 0.0) {
            return Err(format!("norm_eps must be positive, got {}", self.norm_eps));
        }
        if self.form == Form::Recurrent {
            return Err("form must be \"chunked\" or \"parallel\" (the recurrent form is for generation)".into());
        }
        Ok(())
    }

    /// Parameters of the layer at `at` (LRPE's `θ: [H, d]` only where it applies).
    pub fn params_at(&self, at: LayerContext) -> usize {
        let (d, e) = (at.d_model, self.hidden(at.d_model));
        let theta = if self.uses_lrpe(at.layer) { e } else { 0 };
        5 * d * e + theta
    }

    /// Parameters of a lone layer (layer 0 of 1); see [`Self::params_at`] for a layer in a stack.
    pub fn params(&self, d_model: usize) -> usize {
        self.params_at(LayerContext::single(d_model))
    }

    /// Width of the keys the state is indexed by: `2d` with LRPE (cos and sin halves), else `d`.
    fn key_dim(&self, d_model: usize, layer: usize) -> usize {
        self.head_dim(d_model) * if self.uses_lrpe(layer) { 2 } else { 1 }
    }

    pub fn flops_per_token_at(&self, at: LayerContext, seq_len: usize) -> f64 {
        let (h, d) = (self.heads as f64, self.head_dim(at.d_model) as f64);
        let dk = self.key_dim(at.d_model, at.layer) as f64;
        let c = match self.form {
            Form::Parallel => seq_len as f64,
            _ => self.chunk_size.min(seq_len) as f64,
        };
        let e = self.hidden(at.d_model) as f64;
        // Projections, then intra-block scores and mixing, then reading and updating the state.
        2.0 * 5.0 * at.d_model as f64 * e + 2.0 * h * c * (dk + d) + 4.0 * h * dk * d
    }

    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        self.flops_per_token_at(LayerContext::single(d_model), seq_len)
    }

    /// Floats of generation state of the layer at `at` (the position is one integer besides).
    pub fn state_size_at(&self, at: LayerContext) -> usize {
        self.heads * self.key_dim(at.d_model, at.layer) * self.head_dim(at.d_model)
    }

    pub fn state_size(&self, d_model: usize, _seq_len: usize) -> usize {
        self.state_size_at(LayerContext::single(d_model))
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> TransNormer<B> {
        let (d_model, e, h) = (at.d_model, self.hidden(at.d_model), self.heads);
        let d = e / h;
        // θ_{h,i} = 10000^{−2(h·d+i)/(H·d)}: one RoPE-like frequency per channel over all heads.
        let theta: Vec<f32> = (0..e).map(|c| 10_000f64.powf(-2.0 * c as f64 / e as f64) as f32).collect();
        TransNormer {
            qkvu: linear(d_model, 4 * e, false, INIT_STD, device),
            out: linear(e, d_model, false, out_std, device),
            lrpe_theta: self
                .uses_lrpe(at.layer)
                .then(|| Param::from_tensor(Tensor::from_data(TensorData::new(theta, [h, d]), device))),
            log_decay: self.log_decays(at),
            heads: h,
            norm_eps: self.norm_eps,
            chunked: self.form == Form::Chunked,
            chunk_size: self.chunk_size,
        }
    }
}

#[derive(Module, Debug)]
pub struct TransNormer<B: Backend> {
    /// The fused `W_qkvu: D × 4E`.
    pub qkvu: Linear<B>,
    pub out: Linear<B>,
    /// LRPE frequencies `θ: [H, d]` (learnable), on the layers that use LRPE.
    pub lrpe_theta: Option<Param<Tensor<B, 2>>>,
    /// `log λ_h` per head: constants fixed by the schedule and the layer's depth.
    pub log_decay: Vec<f64>,
    pub heads: usize,
    pub norm_eps: f64,
    pub chunked: bool,
    pub chunk_size: usize,
}

/// TransNormer's generation state: `KV: [B, H, d_k, d]` in f32 (`d_k = 2d` with LRPE) and the
/// absolute position of the next token (LRPE needs it).
#[derive(Clone, Debug)]
pub struct TransNormerState<B: Backend> {
    pub kv: Tensor<B, 4>,
    pub position: usize,
}

impl<B: Backend> TransNormerState<B> {
    /// Number of scalars held (the state matrix; the position is bookkeeping).
    pub fn numel(&self) -> usize {
        self.kv.shape().num_elements()
    }
}

/// LRPE of `x: [B, T, H, d]` at absolute positions `offset..offset+T`:
/// `[x ⊙ cos(nθ_h), x ⊙ sin(nθ_h)]: [B, T, H, 2d]`, so that `LRPE(q)_n · LRPE(k)_m` depends on
/// `n − m` only. The angles are formed in f32.
pub fn lrpe<B: Backend>(x: Tensor<B, 4>, theta: Tensor<B, 2>, offset: usize) -> Tensor<B, 4> {
    let [_, t, h, d] = x.dims();
    let positions = Tensor::<B, 1, Int>::arange(offset as i64..(offset + t) as i64, &x.device());
    let angles = to_f32(positions.float()).reshape([1, t, 1, 1]) * to_f32(theta).reshape([1, 1, h, d]);
    let (cos, sin) = (to_dtype(angles.clone().cos(), x.dtype()), to_dtype(angles.sin(), x.dtype()));
    Tensor::cat(vec![x.clone() * cos, x * sin], 3)
}

impl<B: Backend> TransNormer<B> {
    fn hidden(&self) -> usize {
        self.out.weight.dims()[0]
    }

    /// `q, k: [B, T, H, d_k]` (SiLU, then LRPE from position `offset` where enabled),
    /// `v: [B, T, H, d]` and the output gate `u: [B, T, E]`.
    fn project(&self, x: Tensor<B, 3>, offset: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 3>) {
        let [b, t, _] = x.dims();
        let (e, h) = (self.hidden(), self.heads);
        let qkvu = self.qkvu.forward(x);
        let part = |i: usize| qkvu.clone().narrow(2, i * e, e);
        let heads = |y: Tensor<B, 3>| y.reshape([b, t, h, e / h]);
        let (q, k, v) = (heads(silu(part(0))), heads(silu(part(1))), heads(part(2)));
        let (q, k) = match &self.lrpe_theta {
            Some(theta) => (lrpe(q, theta.val(), offset), lrpe(k, theta.val(), offset)),
            None => (q, k),
        };
        (q, k, v, part(3))
    }

    /// The constant log decays as the `[B, T, H]` the per-head op takes.
    fn log_decay(&self, b: usize, t: usize, device: &B::Device) -> Tensor<B, 3> {
        let rates: Vec<f32> = self.log_decay.iter().map(|&r| r as f32).collect();
        op::constant_per_head(Tensor::from_data(TensorData::new(rates, [self.heads]), device), b, t)
    }

    /// `(SRMSNorm(O) ⊙ u) W_o`, the norm over all `E` channels at once.
    fn output(&self, o: Tensor<B, 4>, u: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h, d] = o.dims();
        self.out.forward(srms_norm(o.reshape([b, t, h * d]), self.norm_eps) * u)
    }

    /// Training forward with an explicit form (the config's form is `forward`'s default).
    /// No query scale: TNL has neither `1/√d` nor a normaliser.
    pub fn forward_with(&self, x: Tensor<B, 3>, form: Form) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (q, k, v, u) = self.project(x, 0);
        let g = self.log_decay(b, t, &q.device());
        let out = match form {
            Form::Parallel => op::parallel_per_head(q, k, v, g, None, 1.0),
            Form::Chunked => op::chunked_per_head(q, k, v, g, None, 1.0, self.chunk_size),
            Form::Recurrent => {
                let width = q.dims()[3];
                op::recurrent(q, k, v, op::per_head(g, width), None, 1.0)
            }
        };
        self.output(out.output, u)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, if self.chunked { Form::Chunked } else { Form::Parallel })
    }

    /// Consumes `x: [B, T, D]` after the tokens in `state` (a prompt in one chunked pass, or one
    /// token), with LRPE continuing at the state's position.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<TransNormerState<B>>) -> (Tensor<B, 3>, TransNormerState<B>) {
        let [b, t, _] = x.dims();
        let (h0, offset) = state.map_or((None, 0), |s| (Some(s.kv), s.position));
        let (q, k, v, u) = self.project(x, offset);
        let g = self.log_decay(b, t, &q.device());
        let out = if t == 1 {
            let [_, _, h, dk] = q.dims();
            let h0 = h0.unwrap_or_else(|| Tensor::zeros([b, h, dk, v.dims()[3]], &q.device()));
            op::step(q, k, v, op::per_head(g, dk), h0, 1.0)
        } else {
            op::chunked_per_head(q, k, v, g, h0, 1.0, self.chunk_size)
        };
        (self.output(out.output, u), TransNormerState { kv: out.state, position: offset + t })
    }
}
