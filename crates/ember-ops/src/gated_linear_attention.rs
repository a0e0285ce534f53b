//! Linear attention with a multiplicative decay (GLA, and with a broadcast decay the per-head
//! forms of RetNet / TransNormer-Lightning):
//! `S_t = diag(exp g_t) S_{t-1} + k_tᵀ v_t`, `o_t = scale · q_t S_t`, `S_0 = h0`.
//!
//! `q, k, g: [B, T, H, K]` (`g` the log decay per channel, ≤ 0), `v: [B, T, H, V]`, state
//! `[B, H, K, V]`. A per-head decay `[B, T, H]` or a constant `[H]` is passed broadcast to
//! `[B, T, H, K]` (see [`per_head`], [`constant`]); autodiff sums its gradient back. For those
//! decays [`parallel_per_head`] and [`chunked_per_head`] take `[B, T, H]` directly and form
//! the intra-chunk scores with one matmul (Lightning Attention-2).
//!
//! Every decay product is formed as `exp(G_t − G_s)` with `s ≤ t` (so ≤ 1) from cumulative log
//! decays, never as `exp(G_t) · exp(−G_s)`, which overflows once a sequence has decayed far.
//! The op runs in f32 and returns its output in the dtype of `v`.
use crate::linear_attention::{pad_time, LinearAttnOutput};
use crate::mask::hidden_keys;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, Tensor};

/// A per-head log decay `[B, T, H]` as the `[B, T, H, K]` the op takes.
pub fn per_head<B: Backend>(g: Tensor<B, 3>, k: usize) -> Tensor<B, 4> {
    let [b, t, h] = g.dims();
    g.unsqueeze_dim::<4>(3).expand([b, t, h, k])
}

/// A constant per-head log decay `[H]` as the `[B, T, H, K]` the op takes.
pub fn constant<B: Backend>(log_decay: Tensor<B, 1>, [b, t, h, k]: [usize; 4]) -> Tensor<B, 4> {
    log_decay.reshape([1, 1, h, 1]).expand([b, t, h, k])
}

fn zero_state<B: Backend>(q: &Tensor<B, 4>, v: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, _, h, k] = q.dims();
    Tensor::zeros([b, h, k, v.dims()[3]], &q.device())
}

/// Within each block of `[.., L, K]` rows (time on dim `D-2`): `Σ_k q_tk k_sk exp(G_tk − G_sk)`
/// for `s ≤ t`, zero above the diagonal. `q, k, cum: [.., L, K]` → `[.., L, L]`.
fn decayed_scores<B: Backend, const D: usize, const E: usize>(
    q: Tensor<B, D>,
    k: Tensor<B, D>,
    cum: Tensor<B, D>,
) -> Tensor<B, D> {
    let l = q.dims()[D - 2];
    let rows = |x: Tensor<B, D>| x.unsqueeze_dim::<E>(D - 1); // [.., L, 1, K]: index t
    let cols = |x: Tensor<B, D>| x.unsqueeze_dim::<E>(D - 2); // [.., 1, L, K]: index s
    let mut mask_shape = [1; E];
    mask_shape[D - 2] = l;
    mask_shape[D - 1] = l;
    let future = hidden_keys::<B>(l, l, 0, None, &q.device()).reshape(mask_shape);
    // Mask the exponent, not the product: exp(−∞) = 0 keeps overflowed terms out of the graph.
    let decay = (rows(cum.clone()) - cols(cum)).mask_fill(future, f32::NEG_INFINITY).exp();
    (rows(q) * cols(k) * decay).sum_dim(E - 1).squeeze_dim::<D>(E - 1)
}

/// Quadratic form over the whole sequence (memory `T²·K` per head: the reference, for tests).
pub fn parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let dtype = v.dtype();
    let [q, k, v, g] = [q, k, v, g].map(to_f32);
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    let [q, k, v, g] = [q, k, v, g].map(|x| x.swap_dims(1, 2)); // [B, H, T, *]
    let cum = g.clone().cumsum(2); // G_t = Σ_{s≤t} g_s
    let scores = decayed_scores::<B, 4, 5>(q.clone(), k.clone(), cum.clone());
    let output = (scores.matmul(v.clone()) + (q * cum.clone().exp()).matmul(h0.clone())) * scale;
    // G_T as a sum rather than a slice of `cum`: libtorch's backward of a slice of a cumsum
    // gave wrong gradients for `g` (burn-tch 0.21; a test in ember-cli/tests/it/backends.rs).
    let last = g.sum_dim(2); // G_T
    let to_end = (last.clone() - cum).exp(); // exp(G_T − G_s) ≤ 1
    let state = (k * to_end).swap_dims(2, 3).matmul(v) + last.swap_dims(2, 3).exp() * h0;
    LinearAttnOutput { output: to_dtype(output.swap_dims(1, 2), dtype), state }
}

/// Inclusive scan of `S_c = a_c ⊙ S_{c−1} + u_c` along dim 2 (chunks), from `S_{−1} = 0`:
/// `a: [B, H, N, K or 1, 1]` decay factors (≤ 1), `u: [B, H, N, K, V]`. Hillis–Steele
/// doubling over pairs `(a, u)`, `(a₁, u₁)` then `(a₂, u₂)` being `(a₁a₂, a₂u₁ + u₂)`: `⌈log₂ N⌉`
/// rounds of whole-tensor ops. A loop over chunks would slice the tensors once per chunk, and
/// autodiff's backward of each slice writes a zero tensor of the full size: `O(N²)` work.
/// Each position only ever reads earlier ones, so causality stays exact.
fn decay_scan<B: Backend>(mut a: Tensor<B, 5>, mut u: Tensor<B, 5>) -> Tensor<B, 5> {
    let n = u.dims()[2];
    let mut shift = 1;
    while shift < n {
        let (a_late, a_early) = (a.clone().narrow(2, shift, n - shift), a.clone().narrow(2, 0, n - shift));
        let u_late = u.clone().narrow(2, shift, n - shift) + a_late.clone() * u.clone().narrow(2, 0, n - shift);
        u = Tensor::cat(vec![u.narrow(2, 0, shift), u_late], 2);
        a = Tensor::cat(vec![a.clone().narrow(2, 0, shift), a_late * a_early], 2);
        shift *= 2;
    }
    u
}

/// The states entering each chunk, `[B, H, N, K, V]`, and the state after the last one, from
/// each chunk's own contribution `u` (`k_outᵀ v`), its total log decay `total: [B, H, N, K or
/// 1, 1]` and the initial state `h0: [B, H, K, V]`:
/// `S_c = exp(total_c) ⊙ S_{c−1} + u_c`, with `h0` decayed by `exp(Σ_{j≤c} total_j)` added.
fn chunk_states<B: Backend>(u: Tensor<B, 5>, total: Tensor<B, 5>, h0: Tensor<B, 4>) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let [b, h, n, k, v] = u.dims();
    let after = decay_scan(total.clone().exp(), u) + total.cumsum(2).exp() * h0.clone().unsqueeze_dim::<5>(2);
    let last = after.clone().narrow(2, n - 1, 1).reshape([b, h, k, v]);
    let before = match n {
        1 => h0.unsqueeze_dim::<5>(2),
        _ => Tensor::cat(vec![h0.unsqueeze_dim::<5>(2), after.narrow(2, 0, n - 1)], 2),
    };
    (before, last)
}

/// Chunked form: the quadratic form inside chunks of `chunk` tokens (memory `T·C·K` per head),
/// the states between chunks from a doubling scan over the chunks ([`chunk_states`]); on the
/// CubeCL kernels where [`crate::kernels::enabled`].
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
    chunk: usize,
) -> LinearAttnOutput<B> {
    if crate::kernels::enabled::<B>(crate::kernels::Variant::PerChannel) {
        return crate::kernels::chunked(&q, &k, &v, Some(&g), h0.as_ref(), scale, chunk);
    }
    let dtype = v.dtype();
    let [b, t, h, dk] = q.dims();
    let dv = v.dims()[3];
    let n = t.div_ceil(chunk);
    let [q, k, v, g] = [q, k, v, g].map(to_f32);
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    // Padding: zero keys add nothing and zero log decay keeps the state; outputs are cut back.
    let split = |x: Tensor<B, 4>, d: usize| pad_time(x, n * chunk).swap_dims(1, 2).reshape([b, h, n, chunk, d]);
    let (q, k, v, g) = (split(q, dk), split(k, dk), split(v, dv), split(g, dk));
    let cum = g.clone().cumsum(3); // decay from each chunk's start, inclusive
    let intra = decayed_scores::<B, 5, 6>(q.clone(), k.clone(), cum.clone()).matmul(v.clone());
    let total = g.sum_dim(3); // [B, H, N, 1, K], a sum for the reason given in `parallel`
    let q_in = q * cum.clone().exp(); // q_t ⊙ exp(G_t): reads the state entering the chunk
    let k_out = k * (total.clone() - cum).exp(); // k_s ⊙ exp(G_end − G_s): decayed to the chunk end
    let own = k_out.swap_dims(3, 4).matmul(v); // [B, H, N, K, V]
    let (before, state) = chunk_states(own, total.swap_dims(3, 4), h0);
    let output = (intra + q_in.matmul(before)) * scale;
    let output = output.reshape([b, h, n * chunk, dv]).swap_dims(1, 2).narrow(1, 0, t);
    LinearAttnOutput { output: to_dtype(output, dtype), state }
}

/// Token-by-token recurrence from `h0`.
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    let (output, state) = crate::scan_tokens([q, k, v, g], h0, |[q, k, v, g], s| {
        let out = step(q, k, v, g, s, scale);
        (out.output, out.state)
    });
    LinearAttnOutput { output, state }
}

/// One recurrent step: `q, k, g: [B, 1, H, K]`, `v: [B, 1, H, V]`, `state: [B, H, K, V]`.
pub fn step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    state: Tensor<B, 4>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let dtype = v.dtype();
    let [q, k, v, g] = [q, k, v, g].map(|x| to_f32(x).swap_dims(1, 2)); // [B, H, 1, *]
    let state = g.swap_dims(2, 3).exp() * to_f32(state) + k.swap_dims(2, 3).matmul(v);
    let output = (q * scale).matmul(state.clone()).swap_dims(1, 2);
    LinearAttnOutput { output: to_dtype(output, dtype), state }
}

// ---------------------------------------------------------------------------------------------
// Per-head (scalar) decay: Lightning Attention-2's intra-/inter-block algorithm (LAYERS.md §3.4).
//
// When every key channel of a head decays alike, the decay factors out of the `q·k` sum:
// `Σ_k q_tk k_sk exp(G_t − G_s) = (q_t·k_s) exp(G_t − G_s)`, so the intra-chunk scores are one
// matmul `Q Kᵀ` times a `C×C` decay matrix instead of the `[C, C, K]` product above.
// ---------------------------------------------------------------------------------------------

/// A constant per-head log decay `[H]` as the `[B, T, H]` the per-head forms take.
pub fn constant_per_head<B: Backend>(log_decay: Tensor<B, 1>, b: usize, t: usize) -> Tensor<B, 3> {
    let h = log_decay.dims()[0];
    log_decay.reshape([1, 1, h]).expand([b, t, h])
}

/// `exp(G_t − G_s)` for `s ≤ t` and 0 above the diagonal, from cumulative log decays
/// `cum: [.., L, 1]` (time on dim `D-2`) → `[.., L, L]`.
fn causal_decay<B: Backend, const D: usize>(cum: Tensor<B, D>) -> Tensor<B, D> {
    let l = cum.dims()[D - 2];
    let mut mask_shape = [1; D];
    mask_shape[D - 2] = l;
    mask_shape[D - 1] = l;
    let future = hidden_keys::<B>(l, l, 0, None, &cum.device()).reshape(mask_shape);
    // `[.., L, 1]` → `[.., 1, L]` by a reshape, not a swap of the two dims: wgpu (Burn 0.21)
    // computed the broadcast difference wrongly from the swapped view inside the chunked form.
    let mut row_shape = cum.dims();
    row_shape[D - 2] = 1;
    row_shape[D - 1] = l;
    // −∞ before exp: the future entries (positive exponents) never reach `exp`.
    (cum.clone() - cum.reshape(row_shape)).mask_fill(future, f32::NEG_INFINITY).exp()
}

/// [`parallel`] for a per-head log decay `g: [B, T, H]`: `O = ((Q Kᵀ) ⊙ D) V` with
/// `D_ts = exp(G_t − G_s)` (the reference; memory `T²` per head).
pub fn parallel_per_head<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 3>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let dtype = v.dtype();
    let [q, k, v] = [q, k, v].map(to_f32);
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    let [q, k, v] = [q, k, v].map(|x| x.swap_dims(1, 2)); // [B, H, T, *]
    let g = to_f32(g).swap_dims(1, 2).unsqueeze_dim::<4>(3); // [B, H, T, 1]
    let cum = g.clone().cumsum(2);
    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * causal_decay(cum.clone());
    let output = (scores.matmul(v.clone()) + q.matmul(h0.clone()) * cum.clone().exp()) * scale;
    let last = g.sum_dim(2); // G_T, a sum for the reason given in `parallel`
    let state = (k * (last.clone() - cum).exp()).swap_dims(2, 3).matmul(v) + last.exp() * h0;
    LinearAttnOutput { output: to_dtype(output.swap_dims(1, 2), dtype), state }
}

/// [`chunked`] for a per-head log decay `g: [B, T, H]` (Lightning-2 blocks of `chunk` tokens):
/// intra-block `((Q Kᵀ) ⊙ D) V`, inter-block `diag(exp G_t) Q S`, with
/// `S ← exp(G_end) S + (diag(exp(G_end − G_s)) K)ᵀ V` from one scan over the blocks.
pub fn chunked_per_head<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 3>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
    chunk: usize,
) -> LinearAttnOutput<B> {
    if crate::kernels::enabled::<B>(crate::kernels::Variant::PerHead) {
        // The kernels take the decay per channel: broadcast it (autodiff sums the gradient back).
        let g = per_head(g, q.dims()[3]);
        return crate::kernels::chunked(&q, &k, &v, Some(&g), h0.as_ref(), scale, chunk);
    }
    let dtype = v.dtype();
    let [b, t, h, dk] = q.dims();
    let dv = v.dims()[3];
    let n = t.div_ceil(chunk);
    let [q, k, v] = [q, k, v].map(to_f32);
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    // Padding as in `chunked`: zero keys add nothing, zero log decay keeps the state.
    let split = |x: Tensor<B, 4>, d: usize| pad_time(x, n * chunk).swap_dims(1, 2).reshape([b, h, n, chunk, d]);
    let (q, k, v) = (split(q, dk), split(k, dk), split(v, dv));
    // The decay is summed over `[B, H, N, C]` and only then given its unit channel dim: wgpu
    // (Burn 0.21) got the chunked cumsum wrong on a `[.., C, 1]` tensor.
    let g = to_f32(g).swap_dims(1, 2); // [B, H, T]
    let g = Tensor::cat(vec![g.clone(), Tensor::zeros([b, h, n * chunk - t], &g.device())], 2).reshape([b, h, n, chunk]);
    let cum = g.clone().cumsum(3).unsqueeze_dim::<5>(4); // [B, H, N, C, 1], from each chunk's start
    let g = g.unsqueeze_dim::<5>(4);
    let scores = q.clone().matmul(k.clone().swap_dims(3, 4)) * causal_decay(cum.clone());
    let intra = scores.matmul(v.clone());
    let total = g.sum_dim(3); // [B, H, N, 1, 1]
    let q_in = q * cum.clone().exp();
    let k_out = k * (total.clone() - cum).exp();
    let (before, state) = chunk_states(k_out.swap_dims(3, 4).matmul(v), total, h0);
    let output = (intra + q_in.matmul(before)) * scale;
    let output = output.reshape([b, h, n * chunk, dv]).swap_dims(1, 2).narrow(1, 0, t);
    LinearAttnOutput { output: to_dtype(output, dtype), state }
}
