//! Mixture-of-Head attention (MoH, LAYERS.md §8): causal softmax attention with RoPE in which
//! every token weights its heads by a gate before the output projection. Heads
//! `0..shared_heads` are always on; of the other `heads − shared_heads` ("routed") heads each
//! token activates its top-`top_k`, the rest get gate 0.
//!
//! Two training paths compute the same function: `dense` runs every head on every query and
//! multiplies by the gates (the reference); `sparse` (`skip_unselected`) runs each routed head
//! only on the queries that selected it. Keys and values are still produced for every head and
//! position, since a later token may route to any head. Decoding one token runs only the
//! shared and selected heads against a KV cache of all heads.
use crate::init::{linear, INIT_STD};
use crate::LayerContext;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorData};
use ember_ops::precision::{to_dtype, to_f32};
use ember_ops::{rope, softmax_attention};
use serde::{Deserialize, Serialize};

/// `kind = "moh"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MohConfig {
    /// Attention heads `h`, shared and routed together.
    pub heads: usize,
    /// Always-on heads `h_s` (heads `0..h_s`).
    pub shared_heads: usize,
    /// Routed heads each token activates, `K ≤ heads − shared_heads`; 0 only when every head
    /// is shared.
    pub top_k: usize,
    /// Per-head width; defaults to `d_model / heads`.
    pub head_dim: Option<usize>,
    /// RoPE base (rotate-half convention on the full head dimension).
    pub rope_base: f64,
    /// Weight β of the load-balance loss returned by `forward_aux` (0.01 in the official code).
    pub balance_loss_weight: f64,
    /// Training computes each routed head only for the queries that selected it (`true`), or
    /// every head for every query with gates applied afterwards (`false`, the reference).
    pub skip_unselected: bool,
}

impl Default for MohConfig {
    fn default() -> Self {
        Self {
            heads: 8,
            shared_heads: 4,
            top_k: 2,
            head_dim: None,
            rope_base: 10_000.0,
            balance_loss_weight: 0.01,
            skip_unselected: true,
        }
    }
}

impl MohConfig {
    pub fn head_dim(&self, d_model: usize) -> usize {
        self.head_dim.unwrap_or(d_model / self.heads.max(1))
    }

    fn routed_heads(&self) -> usize {
        self.heads.saturating_sub(self.shared_heads)
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 {
            return Err("heads must be positive".into());
        }
        if self.shared_heads > self.heads {
            return Err(format!("shared_heads ({}) must be at most heads ({})", self.shared_heads, self.heads));
        }
        let routed = self.routed_heads();
        if self.top_k > routed {
            return Err(format!("top_k ({}) must be at most heads − shared_heads ({routed})", self.top_k));
        }
        if self.top_k == 0 && routed > 0 {
            return Err(format!("top_k must be positive when there are routed heads (heads − shared_heads = {routed})"));
        }
        if self.head_dim.is_none() && d_model % self.heads != 0 {
            return Err(format!("d_model ({d_model}) is not divisible by heads ({}); set head_dim", self.heads));
        }
        let dh = self.head_dim(d_model);
        if dh == 0 || dh % 2 != 0 {
            return Err(format!("head_dim ({dh}) must be positive and even for RoPE"));
        }
        if !(self.rope_base > 1.0) {
            return Err(format!("rope_base must be > 1, got {}", self.rope_base));
        }
        if !(self.balance_loss_weight >= 0.0 && self.balance_loss_weight.is_finite()) {
            return Err(format!("balance_loss_weight must be finite and >= 0, got {}", self.balance_loss_weight));
        }
        Ok(())
    }

    /// Output widths of the three router projections `W_r, W_s, W_h` (0 where absent).
    fn router_widths(&self) -> (usize, usize, usize) {
        let routed = if self.top_k > 0 { self.routed_heads() } else { 0 };
        let shared = if self.shared_heads > 1 { self.shared_heads } else { 0 };
        let stage = if self.shared_heads > 0 && self.top_k > 0 { 2 } else { 0 };
        (routed, shared, stage)
    }

    pub fn params(&self, d_model: usize) -> usize {
        let inner = self.heads * self.head_dim(d_model);
        let (r, s, w) = self.router_widths();
        3 * d_model * inner + inner * d_model + d_model * (r + s + w)
    }

    /// Heads whose scores and values are computed per query.
    fn computed_heads(&self) -> usize {
        if self.skip_unselected { self.shared_heads + self.top_k } else { self.heads }
    }

    /// Forward FLOPs per token at `seq_len`: projections and routers, plus scores and mixing
    /// for the heads the configured path computes.
    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let visible = (seq_len as f64 + 1.0) / 2.0;
        let width = (self.computed_heads() * self.head_dim(d_model)) as f64;
        2.0 * self.params(d_model) as f64 + 4.0 * width * visible
    }

    /// Floats per sequence for generation: keys and values of every head (any later token may
    /// route to any head).
    pub fn state_size(&self, d_model: usize, seq_len: usize) -> usize {
        2 * self.heads * self.head_dim(d_model) * seq_len
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Moh<B> {
        let d_model = at.d_model;
        let inner = self.heads * self.head_dim(d_model);
        let (r, s, w) = self.router_widths();
        let router = |width: usize| (width > 0).then(|| linear(d_model, width, false, INIT_STD, device));
        Moh {
            qkv: linear(d_model, 3 * inner, false, INIT_STD, device),
            out: linear(inner, d_model, false, out_std, device),
            router_routed: router(r),
            router_shared: router(s),
            router_stage: router(w),
            heads: self.heads,
            shared_heads: self.shared_heads,
            top_k: self.top_k,
            head_dim: self.head_dim(d_model),
            rope_base: self.rope_base,
            balance_loss_weight: self.balance_loss_weight,
            skip_unselected: self.skip_unselected,
        }
    }
}

#[derive(Module, Debug)]
pub struct Moh<B: Backend> {
    /// `D -> 3·heads·head_dim`: queries, keys, values, head-major within each.
    pub qkv: Linear<B>,
    pub out: Linear<B>,
    /// `W_r: D -> heads − shared_heads` (absent when `top_k = 0`).
    pub router_routed: Option<Linear<B>>,
    /// `W_s: D -> shared_heads` (only when `shared_heads > 1`).
    pub router_shared: Option<Linear<B>>,
    /// `W_h: D -> 2`, the shared-versus-routed weights (only with both kinds of heads).
    pub router_stage: Option<Linear<B>>,
    pub heads: usize,
    pub shared_heads: usize,
    pub top_k: usize,
    pub head_dim: usize,
    pub rope_base: f64,
    pub balance_loss_weight: f64,
    pub skip_unselected: bool,
}

/// The router's decisions for a batch of tokens.
#[derive(Clone, Debug)]
pub struct Routing<B: Backend> {
    /// `[B, T, heads]` gate of every head (f32); exactly 0 for unselected routed heads.
    pub gates: Tensor<B, 3>,
    /// `[B, T, heads − shared_heads]` routing probabilities `p` (f32), when there are routed heads.
    pub probs: Option<Tensor<B, 3>>,
    /// `[B, T, heads − shared_heads]`, true for each token's top-`top_k` routed heads.
    pub selected: Option<Tensor<B, 3, Bool>>,
}

/// Generation state: keys and values of every head, head-major so that the heads one token
/// selects can be gathered without moving the others.
#[derive(Clone, Debug)]
pub struct MohState<B: Backend> {
    /// `[B, heads, S, head_dim]` (RoPE applied).
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// Absolute position of the next token.
    pub position: usize,
}

impl<B: Backend> MohState<B> {
    pub fn numel(&self) -> usize {
        self.k.shape().num_elements() + self.v.shape().num_elements()
    }
}

/// `[B, T, E]` mask of the `k` largest entries along the last axis of `p`, ties going to the
/// lower index: entry `i` is kept when fewer than `k` entries beat it, where `j` beats `i` if
/// `p_j > p_i`, or `p_j = p_i` and `j < i`.
fn top_k_mask<B: Backend>(p: Tensor<B, 3>, k: usize) -> Tensor<B, 3, Bool> {
    let [b, t, e] = p.dims();
    let device = p.device();
    let own = p.clone().unsqueeze_dim::<4>(3).expand([b, t, e, e]); // [.., i, j] = p_i
    let other = p.unsqueeze_dim::<4>(2).expand([b, t, e, e]); // [.., i, j] = p_j
    let lower_index: Vec<bool> = (0..e).flat_map(|i| (0..e).map(move |j| j < i)).collect();
    let lower_index = Tensor::<B, 2, Bool>::from_data(TensorData::new(lower_index, [e, e]), &device)
        .reshape([1, 1, e, e])
        .expand([b, t, e, e]);
    let beats = other.clone().greater(own.clone()).bool_or(other.equal(own).bool_and(lower_index));
    let rank = beats.int().sum_dim(3).reshape([b, t, e]);
    rank.lower_elem(k as i64)
}

/// A boolean tensor's entries in row-major order.
fn on_host<B: Backend, const D: usize>(mask: &Tensor<B, D, Bool>) -> Vec<bool> {
    mask.clone().int().into_data().iter::<i64>().map(|m| m != 0).collect()
}

fn int_tensor<B: Backend>(values: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

impl<B: Backend> Moh<B> {
    fn routed_heads(&self) -> usize {
        self.heads - self.shared_heads
    }

    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// Queries `[B, T, H, Dh]` and head-major keys and values `[B, H, T, Dh]`, RoPE applied from
    /// absolute position `offset`.
    fn project(&self, x: Tensor<B, 3>, offset: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let (h, dh) = (self.heads, self.head_dim);
        let qkv = self.qkv.forward(x);
        let split = |i: usize| qkv.clone().narrow(2, i * h * dh, h * dh).reshape([b, t, h, dh]);
        let q = rope::apply(split(0), offset, self.rope_base);
        let k = rope::apply(split(1), offset, self.rope_base).swap_dims(1, 2);
        (q, k, split(2).swap_dims(1, 2))
    }

    /// The gates of §8.2 in the official code's form, for `x: [B, T, D]`.
    pub fn routing(&self, x: Tensor<B, 3>) -> Routing<B> {
        let [b, t, _] = x.dims();
        let (hs, k) = (self.shared_heads, self.top_k);
        let shared = match &self.router_shared {
            Some(w) => Some(softmax(to_f32(w.forward(x.clone())), 2) * hs as f64),
            None => (hs == 1).then(|| Tensor::ones([b, t, 1], &x.device())),
        };
        let (routed, probs, selected) = match &self.router_routed {
            Some(w) => {
                let p = softmax(to_f32(w.forward(x.clone())), 2);
                let selected = top_k_mask(p.clone(), k);
                let kept = p.clone().mask_fill(selected.clone().bool_not(), 0.0);
                // Renormalised over the selected heads; the clamp only guards a zero sum.
                let sum = kept.clone().sum_dim(2).clamp_min(f32::EPSILON);
                (Some(kept / sum * k as f64), Some(p), Some(selected))
            }
            None => (None, None, None),
        };
        let (shared, routed) = match &self.router_stage {
            Some(w) => {
                let stage = softmax(to_f32(w.forward(x)), 2) * 2.0;
                (shared.map(|g| g * stage.clone().narrow(2, 0, 1)), routed.map(|g| g * stage.narrow(2, 1, 1)))
            }
            None => (shared, routed),
        };
        let gates = Tensor::cat(shared.into_iter().chain(routed).collect(), 2);
        Routing { gates, probs, selected }
    }

    /// `β · L_b` with `L_b = E · Σ_i f_i P_i` over all `B·T` tokens (§8.3); `f` (the fraction of
    /// tokens selecting each head) carries no gradient, `P` (mean probability) does.
    fn balance_loss(&self, routing: &Routing<B>) -> Option<Tensor<B, 1>> {
        let (p, selected) = (routing.probs.clone()?, routing.selected.clone()?);
        if self.balance_loss_weight == 0.0 {
            return None;
        }
        let [b, t, e] = p.dims();
        let fraction = p.zeros_like().mask_fill(selected, 1.0).reshape([b * t, e]).mean_dim(0);
        let mean_prob = p.reshape([b * t, e]).mean_dim(0);
        Some((mean_prob * fraction).sum() * (e as f64 * self.balance_loss_weight))
    }

    /// Head outputs `[B, T, H, Dh]` times their gates, through the output projection.
    fn merge(&self, heads_out: Tensor<B, 4>, gates: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h, d] = heads_out.dims();
        let gates = to_dtype(gates, heads_out.dtype()).unsqueeze_dim::<4>(3);
        self.out.forward((heads_out * gates).reshape([b, t, h * d]))
    }

    /// Every head for every query (queries at absolute positions `offset..`, keys at `0..S`).
    fn attend_dense(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, offset: usize) -> Tensor<B, 4> {
        softmax_attention::parallel(q, k.swap_dims(1, 2), v.swap_dims(1, 2), self.scale(), None, offset)
    }

    /// Shared heads for every query; each routed head only for the queries that selected it
    /// (`selected[(b·T + t)·E + e]`), the other rows left at zero.
    fn attend_sparse(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        offset: usize,
        selected: &[bool],
    ) -> Tensor<B, 4> {
        let [b, t, h, d] = q.dims();
        let (hs, e) = (self.shared_heads, self.routed_heads());
        let device = q.device();
        let mut parts = Vec::new();
        if hs > 0 {
            let narrow = |x: Tensor<B, 4>| x.narrow(1, 0, hs);
            parts.push(self.attend_dense(q.clone().narrow(2, 0, hs), narrow(k.clone()), narrow(v.clone()), offset));
        }
        if e > 0 {
            // Rows of the selected (token, routed head) pairs in a [B·T·E, Dh] layout, grouped
            // by (batch, head) so that each group is one contiguous block of queries.
            let mut rows = Vec::new();
            let mut groups = Vec::new(); // (batch, routed head, query positions)
            for bi in 0..b {
                for ei in 0..e {
                    let times: Vec<usize> = (0..t).filter(|&ti| selected[(bi * t + ti) * e + ei]).collect();
                    rows.extend(times.iter().map(|&ti| ((bi * t + ti) * e + ei) as i64));
                    if !times.is_empty() {
                        groups.push((bi, ei, times));
                    }
                }
            }
            let rows = int_tensor::<B>(rows, &device);
            let queries = q.narrow(2, hs, e).reshape([b * t * e, d]).select(0, rows.clone());
            let keys = k.dims()[2];
            let key_positions = Tensor::<B, 1, Int>::arange(0..keys as i64, &device).reshape([1, keys]);
            let mut outputs = Vec::with_capacity(groups.len());
            let mut start = 0;
            for (bi, ei, times) in groups {
                let n = times.len();
                let head = |x: &Tensor<B, 4>| x.clone().slice([bi..bi + 1, hs + ei..hs + ei + 1]).reshape([keys, d]);
                let scores = queries.clone().narrow(0, start, n).matmul(head(&k).transpose()) * self.scale();
                let positions = int_tensor::<B>(times.iter().map(|&ti| (offset + ti) as i64).collect(), &device);
                let future = key_positions.clone().greater(positions.reshape([n, 1]));
                let probs = softmax(to_f32(scores).mask_fill(future, f32::NEG_INFINITY), 1);
                let values = head(&v);
                outputs.push(to_dtype(probs, values.dtype()).matmul(values));
                start += n;
            }
            let routed = to_dtype(Tensor::<B, 2>::zeros([b * t * e, d], &device), queries.dtype());
            let routed = if outputs.is_empty() {
                routed
            } else {
                routed.select_assign(0, rows, Tensor::cat(outputs, 0), IndexingUpdateOp::Add)
            };
            parts.push(routed.reshape([b, t, e, d]));
        }
        Tensor::cat(parts, 2).reshape([b, t, h, d])
    }

    /// The training computation on queries at `offset..` over all keys `[B, H, S, Dh]`.
    fn mix(
        &self,
        x: Tensor<B, 3>,
        (q, k, v): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
        offset: usize,
        sparse: bool,
    ) -> (Tensor<B, 3>, Routing<B>) {
        let routing = self.routing(x);
        let heads_out = match (&routing.selected, sparse) {
            (Some(selected), true) => self.attend_sparse(q, k, v, offset, &on_host(selected)),
            _ => self.attend_dense(q, k, v, offset),
        };
        (self.merge(heads_out, routing.gates.clone()), routing)
    }

    /// Training forward with the chosen path (`sparse` = skip unselected heads) and the weighted
    /// load-balance loss (`None` without routed heads or with β = 0).
    pub fn forward_aux_with(&self, x: Tensor<B, 3>, sparse: bool) -> (Tensor<B, 3>, Option<Tensor<B, 1>>) {
        let (y, routing) = self.mix(x.clone(), self.project(x, 0), 0, sparse);
        (y, self.balance_loss(&routing))
    }

    pub fn forward_aux(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Option<Tensor<B, 1>>) {
        self.forward_aux_with(x, self.skip_unselected)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.mix(x.clone(), self.project(x, 0), 0, self.skip_unselected).0
    }

    /// Consumes `x: [B, T, D]` after the tokens in `state`: a prompt through the training path,
    /// one token through only its shared and selected heads.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<MohState<B>>) -> (Tensor<B, 3>, MohState<B>) {
        let t = x.dims()[1];
        let offset = state.as_ref().map_or(0, |s| s.position);
        let (q, k, v) = self.project(x.clone(), offset);
        let (k, v) = match state {
            None => (k, v),
            Some(s) => (Tensor::cat(vec![s.k, k], 2), Tensor::cat(vec![s.v, v], 2)),
        };
        let y = if t == 1 {
            self.decode(x, q, k.clone(), v.clone())
        } else {
            self.mix(x, (q, k.clone(), v.clone()), offset, self.skip_unselected).0
        };
        (y, MohState { k, v, position: offset + t })
    }

    /// One new token per sequence (`q: [B, 1, H, Dh]`) against all cached keys: the active
    /// heads (shared plus selected) are gathered, attended, and scattered back.
    fn decode(&self, x: Tensor<B, 3>, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, h, s, d] = k.dims();
        let device = q.device();
        let routing = self.routing(x);
        let selected = routing.selected.as_ref().map_or_else(Vec::new, on_host);
        let (hs, e) = (self.shared_heads, self.routed_heads());
        let mut rows = Vec::new(); // index into [B·H] of each active (sequence, head)
        for bi in 0..b {
            rows.extend((0..hs).map(|hi| (bi * h + hi) as i64));
            rows.extend((0..e).filter(|&ei| selected[bi * e + ei]).map(|ei| (bi * h + hs + ei) as i64));
        }
        let active = rows.len() / b;
        let rows = int_tensor::<B>(rows, &device);
        let gather = |x: Tensor<B, 4>, len: usize| {
            x.reshape([b * h, len, d]).select(0, rows.clone()).reshape([b, active, len, d])
        };
        let q = gather(q.swap_dims(1, 2), 1);
        let (k, v) = (gather(k, s), gather(v, s));
        // A new token sees every cached key: no mask.
        let scores = q.matmul(k.swap_dims(2, 3)) * self.scale();
        let probs = softmax(to_f32(scores), 3);
        let out = to_dtype(probs, v.dtype()).matmul(v).reshape([b * active, d]);
        let heads_out = to_dtype(Tensor::<B, 2>::zeros([b * h, d], &device), out.dtype())
            .select_assign(0, rows, out, IndexingUpdateOp::Add)
            .reshape([b, 1, h, d]);
        self.merge(heads_out, routing.gates)
    }
}
