//! Titans' neural long-term memory (LMM, LAYERS.md §4.1) as a token mixer, and the Miras
//! models built on it (§5): Moneta (ℓp objective, ℓq retention), Yaad (Huber objective) and
//! Memora (KL retention: weights on the scaled simplex).
//!
//! `x → [q | k | v] = x W` → causal depthwise conv → SiLU → ℓ2-normalised `q`, `k` per head
//! (`qk_norm`) → a memory MLP per head, written with `(k, v)` by gradient steps on a summed or
//! averaged inner loss (`loss_reduction`) and read with `q` ([`ember_ops::titans`]) → per-head
//! RMSNorm (`output_norm`) ⊙ SiLU(x W_g) → `W_o`. The gates come from one
//! linear map of `x` per head: θ = θ_max·σ(·), η = σ(·), α = σ(·) and Huber's δ = softplus(·).
//! Optional persistent memory (§4.3): `N_p` learned tokens the memory reads before the
//! sequence (in generation, before the first token).
//!
//! The Titans architectures: MAL (memory as a layer) is a schedule of memory layers followed by
//! sliding-window attention layers with persistent keys (`attention.persistent`); MAG (memory
//! as a gate) is the [`Mag`] mixer and MAC (memory as context) the [`Mac`] mixer below.
use crate::attention::{Attention, AttentionConfig};
use crate::init::{linear, INIT_STD};
use crate::LayerContext;
use crate::norm::{rms_norm, srms_norm, RmsNorm};
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear};
use burn::tensor::activation::{log_sigmoid, silu};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use ember_ops::conv::{causal_conv, next_history};
use ember_ops::softmax_attention::KvCache;
use ember_ops::titans::{self as op, probability, Activation, MemoryInputs, MemoryRule, MemoryState, Objective, Retention, Update};
use serde::{Deserialize, Serialize};

/// Which named model a `[model.mixers.NAME]` table is: it sets the defaults of `objective`,
/// `retention` and `momentum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// `kind = "titans"`: ℓ2 objective, decay, momentum.
    Titans,
    /// `kind = "moneta"`: ℓp objective (p = 3), ℓq retention (q = 4), no momentum.
    Moneta,
    /// `kind = "yaad"`: Huber objective, decay, no momentum.
    Yaad,
    /// `kind = "memora"`: ℓ2 objective, KL retention, no momentum.
    Memora,
}

/// The inner loss a write descends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    L2,
    Lp,
    Huber,
}

/// What keeps the memory bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionKind {
    Decay,
    Lq,
    /// Memora's KL retention: `W = c·softmax(Z)`, a mirror-descent step on the logits.
    Kl,
}

/// `kind = "titans" | "moneta" | "yaad" | "memora"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Memories per layer; each reads and writes `d_model / heads` channels.
    pub heads: usize,
    /// Layers of the memory MLP `L_M` (1 = a matrix memory).
    pub depth: usize,
    /// Hidden width of the memory MLP as a multiple of the head width.
    pub expansion: usize,
    pub activation: Activation,
    /// `M(k) = k + MLP(k)` instead of `MLP(k)`.
    pub residual: bool,
    /// Tokens whose inner gradients share the chunk-start weights (1 = exact recurrence).
    pub chunk_size: usize,
    /// "token": every token reads its own weights; "chunk": one write per chunk, read from the
    /// last completed chunk (the reference implementation's semantics).
    pub update: Update,
    /// Carry the surprise with momentum η (default: on for titans, off for the Miras kinds).
    pub momentum: Option<bool>,
    /// Inner loss: "l2", "lp" or "huber" (default per kind).
    pub objective: Option<ObjectiveKind>,
    /// Exponent of the ℓp objective.
    pub p: f64,
    /// `a` in the smooth sign `tanh(a·x)` of the ℓp and Huber objectives.
    pub sharpness: f64,
    /// "decay" (forget gate α), "lq" (Moneta's `A / ‖A‖_q^{q−2}`) or "kl" (Memora's
    /// `c·softmax(Z)`); default per kind.
    pub retention: Option<RetentionKind>,
    /// Exponent of the ℓq retention.
    pub q: f64,
    /// `c` of the KL retention: each output unit's incoming weights sum to it.
    pub simplex_scale: f64,
    /// `c` as a multiple of the head width instead (`c = this × d_head`; 0: use
    /// `simplex_scale`). A weight's mean is `c / fan-in` and a write moves it by about
    /// `c / fan-in` times the step on its logit; both fan-ins grow with `d_head`, so this keeps
    /// the memory the same at every width, where a fixed `c` makes it weaker as `d_model` grows.
    pub simplex_scale_per_channel: f64,
    /// Kernel of the causal depthwise convolution after the q/k/v projections.
    pub conv_kernel: usize,
    /// Upper bound of the inner learning rate: θ = θ_max·σ(·).
    pub theta_max: f64,
    /// Upper bound of the momentum: η = eta_max·σ(·) (η → 1 makes the effective step
    /// θ/(1 − η) unbounded).
    pub eta_max: f64,
    /// Soft bound on each token's inner gradient norm, `u·c·tanh(‖u‖/c)/‖u‖`; 0 turns it off.
    pub grad_clip: f64,
    /// Initial gate values (their biases start at the matching logits).
    pub theta_init: f64,
    pub eta_init: f64,
    pub alpha_init: f64,
    /// Initial Huber threshold δ (δ = softplus(·)).
    pub delta_init: f64,
    /// Persistent memory tokens `N_p` read before the sequence.
    pub persistent: usize,
    /// Multiply the normalised read by `SiLU(x W_g)`.
    pub output_gate: bool,
    /// The inner loss over a value's channels: "sum" (the paper's `‖M(k) − v‖²`) or "mean"
    /// (titans-pytorch's `mean((M(k) − v)²)`, writes `1/d_head` as large at the same θ).
    pub loss_reduction: LossReduction,
    /// Unit-ℓ2 queries and keys per head (the paper; titans-pytorch has none by default).
    pub qk_norm: bool,
    /// Per-head RMSNorm of the reads (ember's choice, as GLA's; titans-pytorch's
    /// `post_rmsnorm` is off by default).
    pub output_norm: bool,
    /// `M(x) = x + LN(MLP(x))`: LayerNorm (no gain) on the memory MLP's output, inside the
    /// memory, so writes descend through it (titans-pytorch's `ResidualNorm`, whose gain is
    /// itself written by the inner loop; here it stays 1).
    pub memory_layer_norm: bool,
    /// How the learned initial memory `M_0` starts: "xavier" (titans-pytorch) or "zero" (with
    /// `depth = 1` and `residual = false`, an empty matrix memory: the delta rule's start).
    pub initial_memory: InitialMemory,
    pub norm_eps: f64,
}

/// The initialisation of the learned initial memory `M_0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialMemory {
    Xavier,
    Zero,
}

/// How the inner loss combines a value's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReduction {
    Sum,
    Mean,
}

/// How MAG and MAC combine the attention output `y` with the memory's read `m` (`combine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// `(RMSNorm(y) ⊙ σ(RMSNorm(m))) W_o`: the spec's normalise-and-gate for the paper's `⊗`.
    #[default]
    Gate,
    /// `(RMSNorm(y) + RMSNorm(m)) W_o`: the read added (titans-pytorch, without its attention
    /// gate, adds its read to the residual stream instead).
    Add,
    /// `y W_o`: the read unused at the output. An ablation: MAC's memory then reaches the output
    /// only as attention context (`h`); MAG becomes its attention branch alone.
    Attention,
}

impl Combine {
    fn apply<B: Backend>(self, y: Tensor<B, 3>, m: Tensor<B, 3>, norm_y: &RmsNorm<B>, norm_m: &RmsNorm<B>, out: &Linear<B>) -> Tensor<B, 3> {
        match self {
            Combine::Gate => out.forward(norm_y.forward(y) * probability(norm_m.forward(m))),
            Combine::Add => out.forward(norm_y.forward(y) + norm_m.forward(m)),
            Combine::Attention => out.forward(y),
        }
    }
}

/// What MAC's memory consumes (`write`): the keys and values it stores and the token it reads
/// for the output are projections of this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MacWrite {
    /// The attention output `y_t` (the paper: `M_t = M_{t−1}(y_t)`, `o_t = y_t ⊗ M_t(y_t)`).
    #[default]
    AttentionOutput,
    /// The layer input `x_t` (titans-pytorch stores and retrieves with the same normed input).
    Input,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            heads: 4,
            depth: 2,
            expansion: 4,
            activation: Activation::Gelu,
            residual: true,
            chunk_size: 16,
            update: Update::Token,
            momentum: None,
            objective: None,
            p: 3.0,
            sharpness: 10.0,
            retention: None,
            q: 4.0,
            simplex_scale: 1.0,
            simplex_scale_per_channel: 0.0,
            conv_kernel: 4,
            // The reference implementation's θ_max = 1 scales a loss averaged over the d_head
            // output channels (÷64 at the papers' widths); ours is summed. At 1 the MAL, MAG
            // and persistent-token tiny recipes (momentum on) diverged within 10 steps (lr 5e-3).
            theta_max: 0.1,
            eta_max: 0.9,
            // Without it the MQAR recipe (lr 3e-3) diverged at step 128: large values make
            // large writes, and an MLP memory's curvature grows with its weights.
            grad_clip: 1.0,
            theta_init: 0.01,
            eta_init: 0.5,
            alpha_init: 0.01,
            delta_init: 1.0,
            persistent: 0,
            output_gate: true,
            loss_reduction: LossReduction::Sum,
            qk_norm: true,
            output_norm: true,
            memory_layer_norm: false,
            initial_memory: InitialMemory::Xavier,
            norm_eps: 1e-6,
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

impl MemoryConfig {
    pub fn head_dim(&self, d_model: usize) -> usize {
        d_model / self.heads.max(1)
    }

    /// `c` of the KL retention for heads of `d_head` channels.
    fn simplex_scale_at(&self, d_head: usize) -> f64 {
        match self.simplex_scale_per_channel > 0.0 {
            true => self.simplex_scale_per_channel * d_head as f64,
            false => self.simplex_scale,
        }
    }

    /// The objective, retention and momentum of this kind, with its defaults filled in.
    fn choices(&self, preset: Preset) -> (ObjectiveKind, RetentionKind, bool) {
        let (objective, retention, momentum) = match preset {
            Preset::Titans => (ObjectiveKind::L2, RetentionKind::Decay, true),
            Preset::Moneta => (ObjectiveKind::Lp, RetentionKind::Lq, false),
            Preset::Yaad => (ObjectiveKind::Huber, RetentionKind::Decay, false),
            Preset::Memora => (ObjectiveKind::L2, RetentionKind::Kl, false),
        };
        (self.objective.unwrap_or(objective), self.retention.unwrap_or(retention), self.momentum.unwrap_or(momentum))
    }

    /// The learning rule with this kind's defaults filled in, for heads of `d_head` channels.
    pub fn rule(&self, preset: Preset, d_head: usize) -> MemoryRule {
        let (objective, retention, momentum) = self.choices(preset);
        let objective = match objective {
            ObjectiveKind::L2 => Objective::L2,
            ObjectiveKind::Lp => Objective::Lp { p: self.p, sharpness: self.sharpness },
            ObjectiveKind::Huber => Objective::Huber { sharpness: self.sharpness },
        };
        let retention = match retention {
            RetentionKind::Decay => Retention::Decay,
            RetentionKind::Lq => Retention::Lq { q: self.q },
            RetentionKind::Kl => Retention::Softmax { scale: self.simplex_scale_at(d_head) },
        };
        MemoryRule {
            residual: self.residual,
            activation: self.activation,
            objective,
            retention,
            update: self.update,
            chunk: self.chunk_size,
            momentum,
            eta_max: self.eta_max,
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
            mean_loss: self.loss_reduction == LossReduction::Mean,
            layer_norm: self.memory_layer_norm,
        }
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 || d_model % self.heads != 0 {
            return Err(format!("heads ({}) must be positive and divide d_model ({d_model})", self.heads));
        }
        if self.depth == 0 || self.expansion == 0 || self.chunk_size == 0 || self.conv_kernel == 0 {
            return Err("depth, expansion, chunk_size and conv_kernel must be positive".into());
        }
        for (key, value, max) in [("theta_init", self.theta_init / self.theta_max, "theta_max"), ("eta_init", self.eta_init / self.eta_max, "eta_max"), ("alpha_init", self.alpha_init, "1")] {
            if !(value > 0.0 && value < 1.0) {
                return Err(format!("{key} must lie strictly between 0 and {max}"));
            }
        }
        if !(self.grad_clip >= 0.0) {
            return Err(format!("grad_clip must be ≥ 0 (0 turns it off), got {}", self.grad_clip));
        }
        if !(self.eta_max > 0.0 && self.eta_max <= 1.0) {
            return Err(format!("eta_max must lie in (0, 1], got {}", self.eta_max));
        }
        if !(self.p >= 1.0 && self.q >= 2.0) {
            return Err(format!("p must be ≥ 1 and q ≥ 2 (got p = {}, q = {})", self.p, self.q));
        }
        if !(self.delta_init > 0.0 && self.sharpness > 0.0 && self.simplex_scale > 0.0) {
            return Err("delta_init, sharpness and simplex_scale must be positive".into());
        }
        if !(self.simplex_scale_per_channel >= 0.0) {
            return Err(format!("simplex_scale_per_channel must be ≥ 0 (0: use simplex_scale), got {}", self.simplex_scale_per_channel));
        }
        if self.simplex_scale_per_channel > 0.0 && self.simplex_scale != 1.0 {
            return Err(format!("set simplex_scale ({}) or simplex_scale_per_channel ({}), not both", self.simplex_scale, self.simplex_scale_per_channel));
        }
        Ok(())
    }

    /// Widths `(in, out)` of the memory MLP's layers for a head of `d` channels.
    pub fn layer_dims(&self, d: usize) -> Vec<(usize, usize)> {
        let hidden = self.expansion * d;
        (0..self.depth)
            .map(|l| (if l == 0 { d } else { hidden }, if l + 1 == self.depth { d } else { hidden }))
            .collect()
    }

    /// Gates per head: θ, η, α (+ δ for Huber).
    fn gates(&self, preset: Preset) -> usize {
        3 + (self.choices(preset).0 == ObjectiveKind::Huber) as usize
    }

    fn memory_floats(&self, d_model: usize) -> usize {
        self.heads * self.layer_dims(self.head_dim(d_model)).iter().map(|(i, o)| i * o).sum::<usize>()
    }

    pub fn params(&self, d_model: usize, preset: Preset) -> usize {
        let d = d_model;
        let gates = self.gates(preset) * self.heads;
        let gate = if self.output_gate { d * d } else { 0 };
        let norm = if self.output_norm { self.head_dim(d) } else { 0 };
        3 * d * d + 3 * d * self.conv_kernel + (d + 1) * gates + self.memory_floats(d) + norm + gate + d * d + self.persistent * d
    }

    /// Projections, convolution, and per head and token: one inner gradient (forward and
    /// backward through the memory, ~3 passes) and a read of the token's own weights (the
    /// chunk-start weights, the momentum, and `C` rank-one updates per layer).
    pub fn flops_per_token(&self, d_model: usize, seq_len: usize, preset: Preset) -> f64 {
        let d = d_model as f64;
        let gate = if self.output_gate { d * d } else { 0.0 };
        let matmuls = 2.0 * (3.0 * d * d + d * (self.gates(preset) * self.heads) as f64 + gate + d * d);
        let momentum = self.choices(preset).2 as usize as f64;
        let c = self.chunk_size.min(seq_len.max(1)) as f64;
        // KL retention reads through the chunk-start softmax's Jacobian: per token, `C` products
        // `(r ⊙ x_i) p` of `in` entries by `in × out` (see `ember_ops::titans`).
        let kl = (self.choices(preset).1 == RetentionKind::Kl) as usize as f64;
        let per_head: f64 = self
            .layer_dims(self.head_dim(d_model))
            .iter()
            .map(|&(i, o)| {
                let (i, o) = (i as f64, o as f64);
                6.0 * i * o + 2.0 * i * o * (1.0 + momentum) + 2.0 * c * (i + o) + kl * 2.0 * c * i * o
            })
            .sum();
        matmuls + 2.0 * 3.0 * d * self.conv_kernel as f64 + self.heads as f64 * per_head
    }

    /// The memory (and its momentum), the convolution's history, and the inputs of the tokens
    /// since the last chunk boundary (`seq_len mod chunk_size` of them).
    pub fn state_size(&self, d_model: usize, seq_len: usize, preset: Preset) -> usize {
        let copies = 1 + self.choices(preset).2 as usize;
        let pending = (seq_len % self.chunk_size) * (2 * d_model + self.gates(preset) * self.heads);
        copies * self.memory_floats(d_model) + (self.conv_kernel - 1) * 3 * d_model + pending
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, preset: Preset, device: &B::Device) -> Memory<B> {
        let d_model = at.d_model;
        let (h, dh) = (self.heads, self.head_dim(d_model));
        let gates = self.gates(preset);
        let gate_proj = linear(d_model, gates * h, true, INIT_STD, device);
        // Biases at the logits of the initial gate values: [θ | η | α | δ] blocks of H.
        let mut bias = vec![logit(self.theta_init / self.theta_max); h];
        bias.extend(vec![logit(self.eta_init / self.eta_max); h]);
        bias.extend(vec![logit(self.alpha_init); h]);
        if gates == 4 {
            // softplus⁻¹(x) = ln(eˣ − 1), written x + ln(1 − e⁻ˣ) so that a large δ does not overflow.
            bias.extend(vec![self.delta_init + (-(-self.delta_init).exp()).ln_1p(); h]);
        }
        let gate_proj = Linear { bias: Some(Param::from_tensor(Tensor::from_floats(bias.as_slice(), device))), ..gate_proj };
        let bound = 1.0 / (self.conv_kernel as f64).sqrt();
        let memory = self
            .layer_dims(dh)
            .into_iter()
            .map(|(i, o)| {
                let std = (2.0 / (i + o) as f64).sqrt(); // Xavier
                Param::from_tensor(match self.initial_memory {
                    InitialMemory::Xavier => Tensor::random([h, i, o], Distribution::Normal(0.0, std), device),
                    InitialMemory::Zero => Tensor::zeros([h, i, o], device),
                })
            })
            .collect();
        Memory {
            qkv: linear(d_model, 3 * d_model, false, INIT_STD, device),
            conv: Initializer::Uniform { min: -bound, max: bound }.init([3 * d_model, self.conv_kernel], device),
            gates: gate_proj,
            memory,
            persistent: (self.persistent > 0)
                .then(|| Param::from_tensor(Tensor::random([self.persistent, d_model], Distribution::Normal(0.0, INIT_STD), device))),
            norm_gain: self.output_norm.then(|| Param::from_tensor(Tensor::ones([dh], device))),
            qk_norm: self.qk_norm,
            gate: self.output_gate.then(|| linear(d_model, d_model, false, INIT_STD, device)),
            out: linear(d_model, d_model, false, out_std, device),
            heads: h,
            theta_max: self.theta_max,
            norm_eps: self.norm_eps,
            rule: self.rule(preset, dh),
        }
    }
}

#[derive(Module, Debug)]
pub struct Memory<B: Backend> {
    /// `[W_Q | W_K | W_V]`.
    pub qkv: Linear<B>,
    /// Depthwise kernel over the q, k, v channels, `[3D, K]`.
    pub conv: Param<Tensor<B, 2>>,
    /// θ, η, α (and δ) logits per head.
    pub gates: Linear<B>,
    /// The memory's initial weights `M_0`, per layer `[H, in, out]`.
    pub memory: Vec<Param<Tensor<B, 3>>>,
    /// Persistent memory tokens `[N_p, D]`.
    pub persistent: Option<Param<Tensor<B, 2>>>,
    /// Per-head RMSNorm gain `[d_head]` (none without `output_norm`).
    pub norm_gain: Option<Param<Tensor<B, 1>>>,
    /// Unit-ℓ2 queries and keys.
    pub qk_norm: bool,
    pub gate: Option<Linear<B>>,
    pub out: Linear<B>,
    pub heads: usize,
    pub theta_max: f64,
    pub norm_eps: f64,
    #[module(skip)]
    pub rule: MemoryRule,
}

/// Generation state: the memory ([`MemoryState`]) and the convolution's last `K−1` inputs.
#[derive(Clone, Debug)]
pub struct TitansState<B: Backend> {
    pub memory: MemoryState<B>,
    pub conv: Tensor<B, 3>,
}

impl<B: Backend> TitansState<B> {
    pub fn numel(&self) -> usize {
        self.memory.numel() + self.conv.shape().num_elements()
    }
}

impl<B: Backend> Memory<B> {
    fn head_dim(&self) -> usize {
        self.memory[0].dims()[1] // the first layer reads a head's key: [H, d_head, out]
    }

    /// A fresh state for `batch` sequences: `M_0` and an empty convolution history.
    pub fn initial_state(&self, batch: usize, device: &B::Device) -> TitansState<B> {
        let weights = self.memory.iter().map(|w| w.val().unsqueeze_dim::<4>(0).repeat_dim(0, batch)).collect();
        let [channels, k] = self.conv.dims();
        TitansState { memory: MemoryState::new(weights, self.rule.momentum), conv: Tensor::zeros([batch, k - 1, channels], device) }
    }

    /// The memory's per-token inputs for `x: [B, T, D]` after the convolution history `conv`;
    /// returns them with the new history.
    fn inputs(&self, x: Tensor<B, 3>, conv: Tensor<B, 3>) -> (MemoryInputs<B>, Tensor<B, 3>) {
        let [b, t, d] = x.dims();
        let (h, dh) = (self.heads, self.head_dim());
        let u = self.qkv.forward(x.clone());
        let mixed = silu(causal_conv(u.clone(), self.conv.val(), Some(conv.clone())));
        let history = next_history(conv, u);
        let part = |i: usize| mixed.clone().narrow(2, i * d, d).reshape([b, t, h, dh]);
        let unit = |x: Tensor<B, 4>| match self.qk_norm {
            true => x.clone() / (x.powi_scalar(2).sum_dim(3) + 1e-12).sqrt(),
            false => x,
        };
        let g = self.gates.forward(x);
        let gate = |i: usize| g.clone().narrow(2, i * h, h);
        let delta = (g.dims()[2] == 4 * h).then(|| log_sigmoid(gate(3).neg()).neg()); // softplus
        let inputs = MemoryInputs {
            q: unit(part(0)),
            k: unit(part(1)),
            v: part(2),
            theta: probability(gate(0)) * self.theta_max,
            eta: gate(1),
            alpha: gate(2),
            delta,
        };
        (inputs, history)
    }

    /// Per-head RMSNorm, output gate and `W_o` of the reads `y: [B, T, H, d_head]`.
    fn output(&self, x: Tensor<B, 3>, y: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, dh] = y.dims();
        let y = match &self.norm_gain {
            Some(gain) => srms_norm(y, self.norm_eps) * gain.val().reshape([1, 1, 1, dh]),
            None => y,
        };
        let y = y.reshape([b, t, h * dh]);
        let y = match &self.gate {
            Some(gate) => y * silu(gate.forward(x)),
            None => y,
        };
        self.out.forward(y)
    }

    /// The persistent tokens before `x` (for a sequence start), and how many were added.
    fn with_persistent(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, usize) {
        match &self.persistent {
            Some(p) => {
                let n = p.dims()[0];
                let prefix = p.val().unsqueeze_dim::<3>(0).repeat_dim(0, x.dims()[0]);
                (Tensor::cat(vec![prefix, x], 1), n)
            }
            None => (x, 0),
        }
    }

    /// Consumes `x: [B, T, D]` after `state` (a fresh one: from the persistent tokens), with the
    /// chunked form or (`sequential`) the token-by-token reference.
    pub fn run(&self, x: Tensor<B, 3>, state: Option<TitansState<B>>, sequential: bool) -> (Tensor<B, 3>, TitansState<B>) {
        let (x, skip) = match state {
            Some(_) => (x, 0),
            None => self.with_persistent(x),
        };
        let state = state.unwrap_or_else(|| self.initial_state(x.dims()[0], &x.device()));
        let (inputs, conv) = self.inputs(x.clone(), state.conv);
        let (reads, memory) = match sequential {
            true => op::sequential(&self.rule, inputs, state.memory),
            false => op::chunked(&self.rule, inputs, state.memory),
        };
        let y = self.output(x, reads);
        let t = y.dims()[1];
        (y.narrow(1, skip, t - skip), TitansState { memory, conv })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.run(x, None, false).0
    }

    /// Recurrent form: one token or a prompt after `state`. The chunked form started from the
    /// state serves both: a single token replays at most `chunk_size − 1` pending ones.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<TitansState<B>>) -> (Tensor<B, 3>, TitansState<B>) {
        self.run(x, state, false)
    }
}

/// `kind = "titans_mag"`: Titans' memory as a gate (LAYERS.md §4.4). A sliding-window attention
/// branch and a memory branch read the same input; by default (`combine`) `o = (RMSNorm_a(y_attn)
/// ⊙ σ(RMSNorm_b(y_mem))) W_o` (the spec's choice for the paper's unspecified `⊗`). Persistent tokens are set per
/// branch (`attention.persistent`, `memory.persistent`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MagConfig {
    pub attention: AttentionConfig,
    pub memory: MemoryConfig,
    pub combine: Combine,
    pub norm_eps: f64,
}

impl Default for MagConfig {
    fn default() -> Self {
        Self {
            attention: AttentionConfig { heads: 4, window: Some(64), persistent: 4, ..Default::default() },
            memory: MemoryConfig { persistent: 4, ..Default::default() },
            combine: Combine::Gate,
            norm_eps: 1e-6,
        }
    }
}

impl MagConfig {
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        self.attention.validate(d_model).map_err(|e| format!("attention: {e}"))?;
        self.memory.validate(d_model).map_err(|e| format!("memory: {e}"))
    }

    pub fn params(&self, d_model: usize) -> usize {
        self.attention.params(d_model) + self.memory.params(d_model, Preset::Titans) + 2 * d_model + d_model * d_model
    }

    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let d = d_model as f64;
        self.attention.flops_per_token(d_model, seq_len) + self.memory.flops_per_token(d_model, seq_len, Preset::Titans) + 2.0 * d * d
    }

    pub fn state_size(&self, d_model: usize, seq_len: usize) -> usize {
        self.attention.state_size(d_model, seq_len) + self.memory.state_size(d_model, seq_len, Preset::Titans)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Mag<B> {
        let d = at.d_model;
        Mag {
            attention: self.attention.init(at, INIT_STD, device),
            memory: self.memory.init(at, INIT_STD, Preset::Titans, device),
            norm_attention: rms_norm(d, self.norm_eps, device),
            norm_memory: rms_norm(d, self.norm_eps, device),
            out: linear(d, d, false, out_std, device),
            combine: self.combine,
        }
    }
}

#[derive(Module, Debug)]
pub struct Mag<B: Backend> {
    pub attention: Attention<B>,
    pub memory: Memory<B>,
    pub norm_attention: RmsNorm<B>,
    pub norm_memory: RmsNorm<B>,
    pub out: Linear<B>,
    #[module(skip)]
    pub combine: Combine,
}

/// MAG's generation state: the attention's (windowed) KV cache and the memory's state.
#[derive(Clone, Debug)]
pub struct MagState<B: Backend> {
    pub attention: KvCache<B>,
    pub memory: TitansState<B>,
}

impl<B: Backend> MagState<B> {
    pub fn numel(&self) -> usize {
        self.attention.numel() + self.memory.numel()
    }
}

impl<B: Backend> Mag<B> {
    fn output(&self, attention: Tensor<B, 3>, memory: Tensor<B, 3>) -> Tensor<B, 3> {
        self.combine.apply(attention, memory, &self.norm_attention, &self.norm_memory, &self.out)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.output(self.attention.forward(x.clone()), self.memory.forward(x))
    }

    pub fn step(&self, x: Tensor<B, 3>, state: Option<MagState<B>>) -> (Tensor<B, 3>, MagState<B>) {
        let (cache, memory) = match state {
            Some(s) => (Some(s.attention), Some(s.memory)),
            None => (None, None),
        };
        let (a, attention) = self.attention.step(x.clone(), cache);
        let (m, memory) = self.memory.step(x, memory);
        (self.output(a, m), MagState { attention, memory })
    }
}

/// `kind = "titans_mac"`: Titans' memory as context (LAYERS.md §4.4). The sequence is cut into
/// segments of the memory's `chunk_size`. For each segment `S`: `h = M_{s−1}(S W_R)` reads the
/// memory of the previous segments; attention runs over `[P; h; S]` (persistent keys, then the
/// read-outs and the segment, each at its segment position); its outputs `y` write the memory
/// token by token and read it back, `m_t = M_t(y_t)`; by default (`combine`)
/// `o = (RMSNorm(y) ⊙ σ(RMSNorm(m))) W_o`. `write = "input"` feeds the memory `x` instead of `y`.
///
/// Causal where the paper is not explicit: token `t` sees `h` and `S` up to itself only (a
/// read-out `h_j` is a function of token `j`), and reads `M_t`, which holds the writes of the
/// segment up to `t`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MacConfig {
    /// The attention over `[P; h; S]` (`window` must be absent; `persistent` is `P`).
    pub attention: AttentionConfig,
    /// The memory; its `chunk_size` is the segment length.
    pub memory: MemoryConfig,
    pub combine: Combine,
    pub write: MacWrite,
    pub norm_eps: f64,
}

impl Default for MacConfig {
    fn default() -> Self {
        Self {
            attention: AttentionConfig { heads: 4, persistent: 4, ..Default::default() },
            memory: MemoryConfig { chunk_size: 64, ..Default::default() },
            combine: Combine::Gate,
            write: MacWrite::AttentionOutput,
            norm_eps: 1e-6,
        }
    }
}

impl MacConfig {
    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.attention.window.is_some() {
            return Err("attention.window: MAC attends over whole segments (the memory's chunk_size); remove it".into());
        }
        if self.memory.persistent > 0 {
            return Err("memory.persistent: MAC's persistent tokens are attention.persistent".into());
        }
        self.attention.validate(d_model).map_err(|e| format!("attention: {e}"))?;
        self.memory.validate(d_model).map_err(|e| format!("memory: {e}"))
    }

    pub fn params(&self, d_model: usize) -> usize {
        self.attention.params(d_model) + self.memory.params(d_model, Preset::Titans) + 2 * d_model + 2 * d_model * d_model
    }

    /// The memory (written with `y`), the retrieval, and attention over `2·c` keys on average
    /// for a segment of `c`.
    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let d = d_model as f64;
        let segment = self.memory.chunk_size.min(seq_len.max(1));
        let read: f64 = 2.0 * self.memory.layer_dims(self.memory.head_dim(d_model)).iter().map(|(i, o)| (i * o) as f64).sum::<f64>();
        let attention = self.attention.flops_per_token(d_model, segment) + self.attention.params(d_model) as f64 + 4.0 * d * (segment as f64 + 1.0) / 2.0;
        attention + self.memory.flops_per_token(d_model, seq_len, Preset::Titans) + 2.0 * d * d * 2.0 + self.memory.heads as f64 * read
    }

    /// The memory's state plus the keys and values of the segment in progress (`h` and `S`).
    pub fn state_size(&self, d_model: usize, seq_len: usize) -> usize {
        let in_segment = seq_len % self.memory.chunk_size;
        self.memory.state_size(d_model, seq_len, Preset::Titans) + self.attention.state_size(d_model, 2 * in_segment)
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Mac<B> {
        let d = at.d_model;
        Mac {
            attention: self.attention.init(at, INIT_STD, device),
            memory: self.memory.init(at, INIT_STD, Preset::Titans, device),
            retrieve: linear(d, d, false, INIT_STD, device),
            norm_attention: rms_norm(d, self.norm_eps, device),
            norm_memory: rms_norm(d, self.norm_eps, device),
            out: linear(d, d, false, out_std, device),
            combine: self.combine,
            write: self.write,
        }
    }
}

#[derive(Module, Debug)]
pub struct Mac<B: Backend> {
    pub attention: Attention<B>,
    pub memory: Memory<B>,
    /// `W_R`: the retrieval query.
    pub retrieve: Linear<B>,
    pub norm_attention: RmsNorm<B>,
    pub norm_memory: RmsNorm<B>,
    pub out: Linear<B>,
    #[module(skip)]
    pub combine: Combine,
    #[module(skip)]
    pub write: MacWrite,
}

/// MAC's generation state: the memory's, and the attention keys and values (`h` then `S`
/// interleaved per token) of the segment in progress.
#[derive(Clone, Debug)]
pub struct MacState<B: Backend> {
    pub memory: TitansState<B>,
    /// `[B, 2·n, Hkv, Dh]` for the `n` tokens of the segment so far, `None` at a segment start.
    pub keys: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> MacState<B> {
    pub fn numel(&self) -> usize {
        self.memory.numel() + self.keys.as_ref().map_or(0, |(k, v)| k.shape().num_elements() + v.shape().num_elements())
    }
}

impl<B: Backend> Mac<B> {
    fn segment(&self) -> usize {
        self.memory.rule.chunk
    }

    /// One piece of a segment: `x: [B, n, D]` starting at segment position `p = state.pending`.
    fn piece(&self, x: Tensor<B, 3>, state: MacState<B>) -> (Tensor<B, 3>, MacState<B>) {
        let [b, n, d] = x.dims();
        let p = state.memory.memory.pending_len();
        // h = M_{s−1}(unit(x W_R)), per head.
        let (h, dh) = (self.memory.heads, d / self.memory.heads);
        let q = self.retrieve.forward(x.clone()).reshape([b, n, h, dh]);
        let q = q.clone() / (q.powi_scalar(2).sum_dim(3) + 1e-12).sqrt();
        let read = op::read(&self.memory.rule, &state.memory.memory, q).reshape([b, n, d]);
        // Attention from the segment's tokens over [P; earlier h, S; this piece's h, S].
        let (q, k_s, v_s) = self.attention.project(x.clone(), p);
        let (_, k_h, v_h) = self.attention.project(read, p);
        let (k_new, v_new) = (Tensor::cat(vec![k_h, k_s], 1), Tensor::cat(vec![v_h, v_s], 1));
        let device = k_new.device();
        let causal = ember_ops::mask::hidden_keys::<B>(n, n, 0, None, &device);
        let mut hidden = Tensor::cat(vec![causal.clone(), causal], 1);
        let (k, v) = match state.keys {
            Some((k_old, v_old)) => {
                let earlier = ember_ops::mask::hidden_keys::<B>(n, k_old.dims()[1], k_old.dims()[1], None, &device);
                hidden = Tensor::cat(vec![earlier, hidden], 1);
                (Tensor::cat(vec![k_old, k_new], 1), Tensor::cat(vec![v_old, v_new], 1))
            }
            None => (k_new, v_new),
        };
        let prefix = self.attention.prefix();
        let o = ember_ops::softmax_attention::masked(q, k.clone(), v.clone(), hidden, prefix.as_ref(), self.attention.scale());
        let y = self.attention.merge(o);
        let written = match self.write {
            MacWrite::AttentionOutput => y.clone(),
            MacWrite::Input => x,
        };
        let (m, memory) = self.memory.step(written, Some(state.memory));
        let keys = (memory.memory.pending_len() > 0).then_some((k, v));
        let out = self.combine.apply(y, m, &self.norm_attention, &self.norm_memory, &self.out);
        (out, MacState { memory, keys })
    }

    /// Consumes `x: [B, T, D]` after `state`, segment piece by segment piece.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<MacState<B>>) -> (Tensor<B, 3>, MacState<B>) {
        let mut state = state.unwrap_or_else(|| MacState { memory: self.memory.initial_state(x.dims()[0], &x.device()), keys: None });
        let t = x.dims()[1];
        let mut outputs = Vec::new();
        let mut start = 0;
        while start < t {
            let len = (self.segment() - state.memory.memory.pending_len()).min(t - start);
            let (y, s) = self.piece(x.clone().narrow(1, start, len), state);
            outputs.push(y);
            state = s;
            start += len;
        }
        (Tensor::cat(outputs, 1), state)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.step(x, None).0
    }
}
