//! LoLCATs' hybrid attention (LAYERS.md §9.1, the `sw` window) and its Lizard-style extension
//! (§9.2): softmax over a sliding window of `w` keys, linear attention over every earlier key,
//! one shared normaliser:
//!
//! ```text
//! m_i = max(max_{j∈W(i)} s_ij, max_sinks s_i·)           s_ij = q_i·k_j · scale
//! num = γ (Σ_{j∈W(i)} e^{s_ij − m_i} v_j + Σ_sinks e^{s − m_i} v)  +  Σ_{j∈E(i)} d_ij (φq_i·φk_j) v_j
//! den = γ (Σ_{j∈W(i)} e^{s_ij − m_i}     + Σ_sinks e^{s − m_i})    +  Σ_{j∈E(i)} d_ij  φq_i·φk_j
//! y_i = num / den,      W(i) = {i−w+1, …, i},  E(i) = {0, …, i−w},  d_ij = Π_{t=j+1..i} α_t
//! ```
//!
//! `α_t = 1` (no gate) is LoLCATs; a per-head data-dependent `α_t` and learned "sink" key/value
//! pairs that every window attends to are the Lizard-style reconstruction. One function serves
//! both training and generation: it takes the tokens of a call plus a [`HybridState`] (the last
//! `w − 1` tokens, and the evicted ones folded into `S = Σ d φk vᵀ`, `z = Σ d φk`), so a whole
//! sequence from no state is the parallel form and one token at a time is the recurrent form.
//! Everything is computed in f32.
use crate::mask::hidden_keys;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, Tensor};

/// Per-head inputs of one call, `[B, T, H, *]` with key/value heads already repeated to `H`.
#[derive(Clone, Debug)]
pub struct HybridInputs<B: Backend> {
    /// Queries and keys (RoPE applied) `[B, T, H, Dh]`, values `[B, T, H, Dv]`.
    pub q: Tensor<B, 4>,
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// Feature maps of the queries and keys, `[B, T, H, F]`, positive.
    pub fq: Tensor<B, 4>,
    pub fk: Tensor<B, 4>,
    /// Per-head log decay `log α_t ≤ 0`, `[B, T, H]`; `None` means α = 1 (LoLCATs).
    pub log_decay: Option<Tensor<B, 3>>,
}

/// Parameters shared by every call.
#[derive(Clone, Debug)]
pub struct HybridParams<B: Backend> {
    /// Window factor `γ` per head `[H]` (`σ(γ̃)` in LoLCATs).
    pub gamma: Tensor<B, 1>,
    /// Learned sink keys `[H, M, Dh]` and values `[H, M, Dv]` (Lizard's meta memory), if any.
    pub sinks: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// Keys in the softmax window, the query's own included (`w ≥ 2`, so the state always
    /// caches at least one token).
    pub window: usize,
    pub scale: f64,
}

/// Generation state after some tokens: the last `w − 1` of them (keys with RoPE, values, key
/// features, log decays, each `[B, H, L, *]`) and the earlier ones folded into
/// `S: [B, H, F, Dv]` and `z: [B, H, F]`, decayed up to the last token seen.
#[derive(Clone, Debug)]
pub struct HybridState<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    pub fk: Tensor<B, 4>,
    pub log_decay: Tensor<B, 3>,
    pub s: Tensor<B, 4>,
    pub z: Tensor<B, 3>,
    /// Tokens seen so far (the RoPE position of the next one).
    pub position: usize,
}

impl<B: Backend> HybridState<B> {
    pub fn numel(&self) -> usize {
        [self.k.shape(), self.v.shape(), self.fk.shape(), self.s.shape()].iter().map(|s| s.num_elements()).sum::<usize>()
            + self.log_decay.shape().num_elements()
            + self.z.shape().num_elements()
    }
}

/// The hybrid attention of `inputs` (`T` new tokens) after `state` (none: the sequence starts
/// here): outputs `[B, T, H, Dv]` in the values' dtype, and the state after the last token.
pub fn hybrid<B: Backend>(
    inputs: HybridInputs<B>,
    params: &HybridParams<B>,
    state: Option<HybridState<B>>,
) -> (Tensor<B, 4>, HybridState<B>) {
    let (y, state) = attend(inputs, params, state, true);
    (y, state.expect("asked for the state"))
}

/// The training form: [`hybrid`] of a whole sequence from no state, without building the
/// state it would leave (the fold of every evicted key into `S`, work training does not need).
pub fn parallel<B: Backend>(inputs: HybridInputs<B>, params: &HybridParams<B>) -> Tensor<B, 4> {
    attend(inputs, params, None, false).0
}

fn attend<B: Backend>(
    inputs: HybridInputs<B>,
    params: &HybridParams<B>,
    state: Option<HybridState<B>>,
    keep_state: bool,
) -> (Tensor<B, 4>, Option<HybridState<B>>) {
    let dtype = inputs.v.dtype();
    let gated = inputs.log_decay.is_some();
    let [b, n, h, _] = inputs.q.dims();
    let device = inputs.q.device();
    let heads = |x: Tensor<B, 4>| to_f32(x).swap_dims(1, 2); // [B, H, T, *]
    let log_decay = inputs.log_decay.map_or_else(|| Tensor::zeros([b, n, h], &device), to_f32).swap_dims(1, 2);
    let (q, fq) = (heads(inputs.q), heads(inputs.fq));
    let (mut k, mut v, mut fk, mut g) = (heads(inputs.k), heads(inputs.v), heads(inputs.fk), log_decay);
    let (prior, position) = match state {
        Some(s) => {
            let c = s.k.dims()[2];
            if c > 0 {
                k = Tensor::cat(vec![s.k, k], 2);
                v = Tensor::cat(vec![s.v, v], 2);
                fk = Tensor::cat(vec![s.fk, fk], 2);
                g = Tensor::cat(vec![s.log_decay, g], 2);
            }
            (Some((s.s, s.z)), s.position)
        }
        None => (None, 0),
    };
    // Keys of this call: the cached ones (positions `c` before the first query) then the new.
    let keys = k.dims()[2];
    let c = keys - n;
    let (dv, f) = (v.dims()[3], fk.dims()[3]);
    let w = params.window;
    assert!(w >= 2, "the hybrid attention window must hold at least 2 keys, got {w}");

    // Cumulative log decay over the keys; log d_ij = G_i − G_j for j ≤ i.
    let cum = g.clone().cumsum(2); // [B, H, keys]
    let cum_q = cum.clone().narrow(2, c, n);
    // Query i (key index c + i) sees key j in its window when i + c − w < j ≤ i + c.
    let outside_window = hidden_keys::<B>(n, keys, c, Some(w - 1), &device).unsqueeze::<4>();
    let future = hidden_keys::<B>(n, keys, c, None, &device).unsqueeze::<4>();
    let not_earlier = outside_window.clone().bool_xor(future).bool_not(); // all but j ≤ i + c − w

    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * params.scale; // [B,H,n,keys]
    let scores = scores.mask_fill(outside_window, f32::NEG_INFINITY);
    let sink_scores = params.sinks.as_ref().map(|(sk, _)| q.clone().matmul(to_f32(sk.clone()).swap_dims(1, 2).unsqueeze::<4>()) * params.scale);
    let mut max = scores.clone().max_dim(3);
    if let Some(ss) = &sink_scores {
        max = Tensor::cat(vec![max, ss.clone().max_dim(3)], 3).max_dim(3);
    }
    let gamma = to_f32(params.gamma.clone()).reshape([1, h, 1, 1]);
    let window_weights = (scores - max.clone()).exp();
    let mut window_num = window_weights.clone().matmul(v.clone());
    let mut window_den = window_weights.sum_dim(3);
    if let (Some(ss), Some((_, sv))) = (sink_scores, &params.sinks) {
        let e = (ss - max).exp();
        window_num = window_num + e.clone().matmul(to_f32(sv.clone()).unsqueeze::<4>());
        window_den = window_den + e.sum_dim(3);
    }
    let kernel = fq.clone().matmul(fk.clone().swap_dims(2, 3)); // [B, H, n, keys]
    let linear = if gated {
        // −∞ before exp, so no masked entry overflows (inf · 0 would poison the backward).
        let decay = (cum_q.clone().unsqueeze_dim::<4>(3) - cum.clone().unsqueeze_dim::<4>(2))
            .mask_fill(not_earlier, f32::NEG_INFINITY)
            .exp(); // zero outside E(i)
        kernel * decay
    } else {
        kernel.mask_fill(not_earlier, 0.0)
    };
    let mut num = window_num * gamma.clone() + linear.clone().matmul(v.clone());
    let mut den = window_den * gamma + linear.sum_dim(3);
    // Log decay of the cached keys: the prior (S, z) is decayed up to the token before them.
    let cached = (c > 0).then(|| g.clone().narrow(2, 0, c).sum_dim(2)); // [B, H, 1]
    if let Some((s, z)) = &prior {
        // Everything before the cache, decayed from the last token seen up to query i.
        let since = match &cached {
            Some(cached) => cum_q.clone() - cached.clone(),
            None => cum_q.clone(),
        };
        let to_query = since.exp().unsqueeze_dim::<4>(3); // [B, H, n, 1]
        num = num + fq.clone().matmul(s.clone()) * to_query.clone();
        den = den + fq.clone().matmul(z.clone().unsqueeze_dim::<4>(3)) * to_query;
    }
    let y = to_dtype((num / den).swap_dims(1, 2), dtype);
    if !keep_state {
        return (y, None);
    }

    // The next state: keep the last w − 1 keys, fold the rest into (S, z) decayed to the end.
    let keep = (w - 1).min(keys);
    let evicted = keys - keep;
    let total = g.clone().sum_dim(2); // [B, H, 1]: log decay over every key of this call
    let (mut s, mut z) = match prior {
        Some((s, z)) => {
            let new = match cached {
                Some(cached) => total.clone() - cached,
                None => total.clone(),
            };
            let d = new.exp(); // from the last token seen to the last one of this call
            (s * d.clone().unsqueeze_dim::<4>(3), z * d)
        }
        None => (Tensor::zeros([b, h, f, dv], &device), Tensor::zeros([b, h, f], &device)),
    };
    if evicted > 0 {
        let to_end = (total - cum.narrow(2, 0, evicted)).exp().unsqueeze_dim::<4>(3); // [B, H, e, 1]
        let fk_out = fk.clone().narrow(2, 0, evicted) * to_end;
        s = s + fk_out.clone().swap_dims(2, 3).matmul(v.clone().narrow(2, 0, evicted));
        z = z + fk_out.sum_dim(2).reshape([b, h, f]);
    }
    let state = HybridState {
        k: k.narrow(2, evicted, keep),
        v: v.narrow(2, evicted, keep),
        fk: fk.narrow(2, evicted, keep),
        log_decay: g.narrow(2, evicted, keep),
        s,
        z,
        position: position + n,
    };
    (y, Some(state))
}
