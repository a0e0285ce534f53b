//! LoLCATs' linearized attention (LAYERS.md §9.1) and the Lizard-style variant (§9.2): the
//! teacher's q/k/v/o projections and RoPE, softmax over a sliding window plus linear attention
//! over learned feature maps for everything earlier ([`ember_ops::hybrid`]). `decay = true`
//! adds a per-head data-dependent forget gate on the linear part and `sinks = M` adds M learned
//! key/value pairs every window attends to (Lizard's gated compression and "meta memory").
use crate::attention::AttentionConfig;
use crate::init::{linear, INIT_STD};
use crate::lora::{self, LoraAdapter, LoraConfig};
use crate::LayerContext;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{log_sigmoid, sigmoid, softmax};
use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};
use ember_ops::hybrid::{self, HybridInputs, HybridParams, HybridState};
use ember_ops::rope::{self, RopeScaling};
use serde::{Deserialize, Serialize};

/// `kind = "lolcats"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LolcatsConfig {
    /// Heads, widths, RoPE and biases of the q/k/v/o projections: the teacher's when
    /// linearizing (`ember linearize` fills it in).
    pub attention: AttentionConfig,
    /// `d_f`: each of q and k maps to `2·d_f` features `[softmax(x W), softmax(−x W)]`.
    pub feature_dim: usize,
    /// Keys in the softmax window, the query's own included.
    pub window: usize,
    /// Initial `γ̃` of the window factor `γ = σ(γ̃)` (−2.1972 gives γ = 0.1).
    pub window_factor_init: f64,
    /// Lizard: a per-head forget gate `log α = logsigmoid(x W + b) / decay_normalizer` on the
    /// linear part.
    pub decay: bool,
    pub decay_normalizer: f64,
    /// Initial gate bias `b`: large keeps α ≈ 1 (LoLCATs' no-decay) at the start.
    pub decay_bias_init: f64,
    /// Lizard: learned key/value pairs ("meta memory") in every query's softmax window.
    pub sinks: usize,
    /// LoRA adapters on the projections (linearization's stage 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for LolcatsConfig {
    fn default() -> Self {
        Self {
            attention: AttentionConfig::default(),
            feature_dim: 64,
            window: 64,
            window_factor_init: -2.1972,
            decay: false,
            decay_normalizer: 16.0,
            decay_bias_init: 4.0,
            sinks: 0,
            lora: None,
        }
    }
}

impl LolcatsConfig {
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        self.attention.validate(d_model).map_err(|e| format!("attention: {e}"))?;
        if self.attention.window.is_some() {
            return Err("attention.window: the window is LoLCATs' own `window` key".into());
        }
        if self.feature_dim == 0 {
            return Err("feature_dim must be positive".into());
        }
        if self.window < 2 {
            return Err(format!("window must be at least 2 (the query and one earlier key), got {}", self.window));
        }
        if !(self.decay_normalizer > 0.0) {
            return Err("decay_normalizer must be positive".into());
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        Ok(())
    }

    /// `(q width, k/v width, head_dim)`.
    fn widths(&self, d_model: usize) -> (usize, usize, usize) {
        let dh = self.attention.head_dim(d_model);
        (self.attention.heads * dh, self.attention.kv_heads() * dh, dh)
    }

    pub fn params(&self, d_model: usize) -> usize {
        let (q, kv, dh) = self.widths(d_model);
        let h = self.attention.heads;
        let lora = self.lora.as_ref().map_or(0, |l| {
            let per = |name: &str, i: usize, o: usize| if l.targets(name) { l.params(i, o) } else { 0 };
            per("q", d_model, q) + per("k", d_model, kv) + per("v", d_model, kv) + per("o", q, d_model)
        });
        self.attention.params(d_model)
            + 2 * h * dh * self.feature_dim
            + h
            + if self.decay { (d_model + 1) * h } else { 0 }
            + 2 * h * self.sinks * dh
            + lora
    }

    /// Forward FLOPs per token: projections, feature maps, the window, and the linear part
    /// counted in its recurrent form (`φq·S`, `φq·z` and the state update).
    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let (q, _, dh) = self.widths(d_model);
        let (h, f) = (self.attention.heads as f64, 2.0 * self.feature_dim as f64);
        let keys = ((seq_len as f64 + 1.0) / 2.0).min(self.window as f64) + self.sinks as f64;
        2.0 * self.params(d_model) as f64 + 4.0 * q as f64 * keys + 2.0 * 2.0 * h * dh as f64 * self.feature_dim as f64 + 6.0 * h * f * dh as f64
    }

    /// Generation state per sequence: the last `w − 1` keys, values, key features and decays
    /// of every head, plus `S` and `z`.
    pub fn state_size(&self, d_model: usize, seq_len: usize) -> usize {
        let (_, _, dh) = self.widths(d_model);
        let (h, f) = (self.attention.heads, 2 * self.feature_dim);
        let cached = seq_len.min(self.window - 1);
        h * (cached * (2 * dh + f + 1) + f * dh + f)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Lolcats<B> {
        let d_model = at.d_model;
        let (q, kv, dh) = self.widths(d_model);
        let a = &self.attention;
        let h = a.heads;
        let lora = |name: &str, i: usize, o: usize| self.lora.as_ref().and_then(|l| l.init(name, i, o, device));
        Lolcats {
            qkv: linear(d_model, q + 2 * kv, a.qkv_bias, INIT_STD, device),
            out: linear(q, d_model, a.out_bias, out_std, device),
            feature_q: Param::from_tensor(identity_map(h, dh, self.feature_dim, device)),
            feature_k: Param::from_tensor(identity_map(h, dh, self.feature_dim, device)),
            window_factor: Param::from_tensor(Tensor::ones([h], device) * self.window_factor_init),
            decay: self.decay.then(|| {
                let mut gate = linear(d_model, h, true, INIT_STD, device);
                gate.bias = Some(Param::from_tensor(Tensor::ones([h], device) * self.decay_bias_init));
                gate
            }),
            sink_k: (self.sinks > 0).then(|| Param::from_tensor(Tensor::random([h, self.sinks, dh], Distribution::Normal(0.0, 1.0), device))),
            sink_v: (self.sinks > 0).then(|| Param::from_tensor(Tensor::random([h, self.sinks, dh], Distribution::Normal(0.0, INIT_STD), device))),
            q_lora: lora("q", d_model, q),
            k_lora: lora("k", d_model, kv),
            v_lora: lora("v", d_model, kv),
            out_lora: lora("o", q, d_model),
            heads: h,
            kv_heads: a.kv_heads(),
            head_dim: dh,
            feature_dim: self.feature_dim,
            window: self.window,
            rope_base: a.rope_base,
            rope_scaling: a.rope_scaling.clone(),
            decay_normalizer: self.decay_normalizer,
        }
    }
}

/// `[H, Dh, d_f]` with ones on the leading diagonal (LoLCATs' `lk_zero_init`: identity-like).
fn identity_map<B: Backend>(h: usize, dh: usize, df: usize, device: &B::Device) -> Tensor<B, 3> {
    let mut values = vec![0f32; h * dh * df];
    for head in 0..h {
        for i in 0..dh.min(df) {
            values[(head * dh + i) * df + i] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(values, [h, dh, df]), device)
}

#[derive(Module, Debug)]
pub struct Lolcats<B: Backend> {
    /// The teacher's fused q/k/v projection and output projection.
    pub qkv: Linear<B>,
    pub out: Linear<B>,
    /// Feature maps `W_h: [H, Dh, d_f]` of the queries and of the keys.
    pub feature_q: Param<Tensor<B, 3>>,
    pub feature_k: Param<Tensor<B, 3>>,
    /// `γ̃: [H]`, the window factor before its sigmoid.
    pub window_factor: Param<Tensor<B, 1>>,
    /// Lizard's forget gate `d_model → H`.
    pub decay: Option<Linear<B>>,
    /// Lizard's sink keys and values `[H, M, Dh]`.
    pub sink_k: Option<Param<Tensor<B, 3>>>,
    pub sink_v: Option<Param<Tensor<B, 3>>>,
    pub q_lora: Option<LoraAdapter<B>>,
    pub k_lora: Option<LoraAdapter<B>>,
    pub v_lora: Option<LoraAdapter<B>>,
    pub out_lora: Option<LoraAdapter<B>>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub feature_dim: usize,
    pub window: usize,
    pub rope_base: f64,
    #[module(skip)]
    pub rope_scaling: Option<RopeScaling>,
    pub decay_normalizer: f64,
}

/// `[B, T, Hkv, D]` → `[B, T, Hkv·groups, D]`, query head `h` reading kv head `h / groups`.
fn repeat_heads<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, t, h, d] = x.dims();
    x.unsqueeze_dim::<5>(3).expand([b, t, h, groups, d]).reshape([b, t, h * groups, d])
}

impl<B: Backend> Lolcats<B> {
    /// `φ(x) = max([softmax(x W), softmax(−x W)], 1e−12)` per head: `[B, T, H, Dh]` → `[B, T, H, 2 d_f]`.
    fn features(x: Tensor<B, 4>, map: &Param<Tensor<B, 3>>) -> Tensor<B, 4> {
        let z = x.swap_dims(1, 2).matmul(map.val().unsqueeze::<4>()); // [B, H, T, d_f]
        let phi = Tensor::cat(vec![softmax(z.clone(), 3), softmax(z.neg(), 3)], 3);
        phi.clamp_min(1e-12).swap_dims(1, 2)
    }

    /// The q/k/v projection (with LoRA) → `q, k, v: [B, T, H, Dh]`, k and v repeated to every
    /// query head, RoPE from absolute position `offset`.
    fn project(&self, x: Tensor<B, 3>, offset: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let (hq, hkv, dh) = (self.heads, self.kv_heads, self.head_dim);
        let mut qkv = self.qkv.forward(x.clone());
        if self.q_lora.is_some() || self.k_lora.is_some() || self.v_lora.is_some() {
            let device = x.device();
            let part = |a: &Option<LoraAdapter<B>>, width: usize| match a {
                Some(a) => a.delta(x.clone()),
                None => Tensor::zeros([b, t, width], &device),
            };
            qkv = qkv + Tensor::cat(vec![part(&self.q_lora, hq * dh), part(&self.k_lora, hkv * dh), part(&self.v_lora, hkv * dh)], 2);
        }
        let q = qkv.clone().narrow(2, 0, hq * dh).reshape([b, t, hq, dh]);
        let k = qkv.clone().narrow(2, hq * dh, hkv * dh).reshape([b, t, hkv, dh]);
        let v = qkv.narrow(2, (hq + hkv) * dh, hkv * dh).reshape([b, t, hkv, dh]);
        let scaling = self.rope_scaling.as_ref();
        let q = rope::apply_scaled(q, offset, self.rope_base, scaling);
        let k = rope::apply_scaled(k, offset, self.rope_base, scaling);
        let groups = hq / hkv;
        (q, repeat_heads(k, groups), repeat_heads(v, groups))
    }

    fn inputs(&self, x: Tensor<B, 3>, offset: usize) -> HybridInputs<B> {
        let (q, k, v) = self.project(x.clone(), offset);
        let log_decay = self.decay.as_ref().map(|gate| log_sigmoid(gate.forward(x)) / self.decay_normalizer);
        HybridInputs { fq: Self::features(q.clone(), &self.feature_q), fk: Self::features(k.clone(), &self.feature_k), q, k, v, log_decay }
    }

    fn params(&self) -> HybridParams<B> {
        HybridParams {
            gamma: sigmoid(self.window_factor.val()),
            sinks: self.sink_k.as_ref().zip(self.sink_v.as_ref()).map(|(k, v)| (k.val(), v.val())),
            window: self.window,
            scale: 1.0 / (self.head_dim as f64).sqrt(),
        }
    }

    fn merge(&self, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, d] = o.dims();
        lora::forward(&self.out, &self.out_lora, o.reshape([b, t, h * d]))
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.merge(hybrid::parallel(self.inputs(x, 0), &self.params()))
    }

    /// Consumes `x: [B, T, D]` (a prompt or one token) after `state`.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<HybridState<B>>) -> (Tensor<B, 3>, HybridState<B>) {
        let offset = state.as_ref().map_or(0, |s| s.position);
        let (y, state) = hybrid::hybrid(self.inputs(x, offset), &self.params(), state);
        (self.merge(y), state)
    }

    /// The same mixer with every LoRA update folded into `qkv` and `out` (and no adapters).
    pub fn merge_lora(mut self) -> Self {
        let q_width = self.heads * self.head_dim;
        let kv_width = self.kv_heads * self.head_dim;
        for (adapter, start) in [(self.q_lora.take(), 0), (self.k_lora.take(), q_width), (self.v_lora.take(), q_width + kv_width)] {
            if let Some(a) = adapter {
                self.qkv = lora::merge(self.qkv, &a, start);
            }
        }
        if let Some(a) = self.out_lora.take() {
            self.out = lora::merge(self.out, &a, 0);
        }
        self
    }
}
