//! Causal linear attention: `S_t = S_{t-1} + k_tᵀ v_t`, `o_t = scale · q_t S_t`, `S_0 = h0`.
//!
//! Inputs `q, k: [B, T, H, K]`, `v: [B, T, H, V]`; state `[B, H, K, V]`. Returns the output
//! `[B, T, H, V]` and the final state. The three forms are interchangeable.
//!
//! Under bf16 the op runs in f32 (scores, states and the prefix sums over chunks) and returns
//! its output in the dtype of `v`; the state is always f32.
use crate::mask::hidden_keys;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, Tensor};

/// Output and final state of a linear-attention op.
pub struct LinearAttnOutput<B: Backend> {
    pub output: Tensor<B, 4>,
    pub state: Tensor<B, 4>,
}

fn zero_state<B: Backend>(q: &Tensor<B, 4>, v: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, _, h, k] = q.dims();
    Tensor::zeros([b, h, k, v.dims()[3]], &q.device())
}

/// Masked quadratic form: `O = (scale·QKᵀ ⊙ M) V + scale·Q h0`.
pub fn parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let dtype = v.dtype();
    let (q, k, v) = (to_f32(q), to_f32(k), to_f32(v));
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    let t = q.dims()[1];
    let (q, k, v) = (q.swap_dims(1, 2) * scale, k.swap_dims(1, 2), v.swap_dims(1, 2));
    let future = hidden_keys::<B>(t, t, 0, None, &q.device()).unsqueeze::<4>();
    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)).mask_fill(future, 0.0);
    let output = scores.matmul(v.clone()) + q.matmul(h0.clone());
    let state = h0 + k.swap_dims(2, 3).matmul(v);
    LinearAttnOutput { output: to_dtype(output.swap_dims(1, 2), dtype), state }
}

/// Chunked form: quadratic inside chunks of `chunk` tokens, state passed between chunks (on
/// the CubeCL kernels where [`crate::kernels::enabled`]).
///
/// The inter-chunk states are an exclusive prefix sum of per-chunk `KᵀV`, so (without decay)
/// the whole form is batched matmuls and one `cumsum`, with no loop over chunks.
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
    chunk: usize,
) -> LinearAttnOutput<B> {
    if crate::kernels::enabled::<B>(crate::kernels::Variant::NoDecay) {
        return crate::kernels::chunked(&q, &k, &v, None, h0.as_ref(), scale, chunk);
    }
    let dtype = v.dtype();
    let (q, k, v) = (to_f32(q), to_f32(k), to_f32(v));
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    let [b, t, h, dk] = q.dims();
    let dv = v.dims()[3];
    let n = t.div_ceil(chunk);
    // Zero padding at the end changes nothing before it: padded keys carry zero values.
    let (q, k, v) = (pad_time(q, n * chunk), pad_time(k, n * chunk), pad_time(v, n * chunk));
    let split = |x: Tensor<B, 4>, d: usize| x.swap_dims(1, 2).reshape([b, h, n, chunk, d]);
    let (q, k, v) = (split(q, dk) * scale, split(k, dk), split(v, dv));

    let future = hidden_keys::<B>(chunk, chunk, 0, None, &q.device()).unsqueeze::<5>();
    let intra = q.clone().matmul(k.clone().swap_dims(3, 4)).mask_fill(future, 0.0).matmul(v.clone());
    let kv = k.swap_dims(3, 4).matmul(v); // [B, H, N, K, V]
    let (before, total) = exclusive_cumsum(kv, h0);
    let inter = q.matmul(before);
    let output = (intra + inter).reshape([b, h, n * chunk, dv]).swap_dims(1, 2).narrow(1, 0, t);
    LinearAttnOutput { output: to_dtype(output, dtype), state: total }
}

/// States before each chunk, `h0 + Σ_{m<n} x_m` along dim 2 of `x: [B, H, N, *, *]`, and the
/// state after the last chunk. Shifting before the sum (rather than subtracting `x_n` from an
/// inclusive sum) keeps each state exact: a later chunk cannot perturb an earlier one.
pub(crate) fn exclusive_cumsum<B: Backend>(x: Tensor<B, 5>, h0: Tensor<B, 4>) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let [b, h, n, r, c] = x.dims();
    let h0 = h0.unsqueeze_dim::<5>(2);
    let shifted = match n {
        1 => h0,
        _ => Tensor::cat(vec![h0, x.clone().narrow(2, 0, n - 1)], 2),
    };
    let before = shifted.cumsum(2);
    let total = before.clone().narrow(2, n - 1, 1) + x.narrow(2, n - 1, 1);
    (before, total.reshape([b, h, r, c]))
}

/// Token-by-token recurrence from `h0`.
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let h0 = h0.map_or_else(|| zero_state(&q, &v), to_f32);
    let (output, state) = crate::scan_tokens([q, k, v], h0, |[q, k, v], s| {
        let out = step(q, k, v, s, scale);
        (out.output, out.state)
    });
    LinearAttnOutput { output, state }
}

/// One recurrent step: `q, k, v: [B, 1, H, *]`, `state: [B, H, K, V]`.
pub fn step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    state: Tensor<B, 4>,
    scale: f64,
) -> LinearAttnOutput<B> {
    let dtype = v.dtype();
    let [q, k, v] = [q, k, v].map(|x| to_f32(x).swap_dims(1, 2)); // [B, H, 1, *]
    let state = to_f32(state) + k.swap_dims(2, 3).matmul(v);
    let output = (q * scale).matmul(state.clone()).swap_dims(1, 2);
    LinearAttnOutput { output: to_dtype(output, dtype), state }
}

/// Pads dimension 1 (time) with zeros up to `len`.
pub(crate) fn pad_time<B: Backend>(x: Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
    let [b, t, h, d] = x.dims();
    if t == len {
        return x;
    }
    let zeros = Tensor::zeros([b, len - t, h, d], (&x.device(), x.dtype()));
    Tensor::cat(vec![x, zeros], 1)
}
