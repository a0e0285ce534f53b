//! RAT's sequence mixing (LAYERS.md §6): a gated recurrence inside chunks of `L` tokens and
//! softmax attention across chunks.
//!
//! Per head, with `q, k, v: [B, T, H, d]` and the forget gate `g ∈ (0, 1)` of the same shape:
//! inside each chunk `ṽ_l = g_l ⊙ ṽ_{l−1} + (1 − g_l) ⊙ v_l` and `k̃_l` likewise (same gate),
//! both reset to zero at every chunk start; token `t` of chunk `c` then attends, in one softmax
//! with scale `1/√d`, over the chunk-final `(k̃, ṽ)` of every earlier chunk and its own
//! `(k̃_t, ṽ_t)`. Queries and keys carry RoPE at position = chunk index ("InterRoPE").
//!
//! The recurrence is a loop over the `L` offsets of a chunk, each step on all chunks at once
//! (`O(T·d)` work); the attention scores are `T × T/L`; nothing is `T × T`.
//!
//! A sequence whose length is not a multiple of `L` simply ends inside a chunk: its last tokens
//! see exactly what they would see while decoding, and decoding continues from that chunk's
//! partial state. Everything runs in f32; the output comes back in `v`'s dtype.
use crate::precision::{to_dtype, to_f32};
use crate::rope;
use burn::tensor::{activation::softmax, backend::Backend, Int, Tensor};

/// What generation carries from token to token.
#[derive(Clone, Debug)]
pub struct RatState<B: Backend> {
    /// Intra-chunk states `k̃, ṽ` of the chunk in progress, `[B, 1, H, d]`, unrotated, f32;
    /// zero when the next token starts a chunk.
    pub key: Tensor<B, 4>,
    pub value: Tensor<B, 4>,
    /// Chunk-final `RoPE_j(k̃)` and `ṽ` of every completed chunk `j`, `[B, j, H, d]` each (f32);
    /// `None` until the first chunk completes. The chunk in progress lives in `key`/`value`.
    pub chunks: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Tokens consumed so far.
    pub position: usize,
}

impl<B: Backend> RatState<B> {
    pub fn zeros(batch: usize, heads: usize, head_dim: usize, device: &B::Device) -> Self {
        let zeros = Tensor::zeros([batch, 1, heads, head_dim], device);
        Self { key: zeros.clone(), value: zeros, chunks: None, position: 0 }
    }

    /// Number of floats held.
    pub fn numel(&self) -> usize {
        let cache = self.chunks.as_ref().map_or(0, |(k, v)| k.shape().num_elements() + v.shape().num_elements());
        self.key.shape().num_elements() + self.value.shape().num_elements() + cache
    }
}

pub struct RatOutput<B: Backend> {
    /// `[B, T, H, d]`, in the dtype of `v`.
    pub output: Tensor<B, 4>,
    pub state: RatState<B>,
}

/// Parallel (training and prefill) form over `T` new tokens after `state` (none: a fresh
/// sequence). `q, k, v, g: [B, T, H, d]`, `g` the forget gate in (0, 1).
pub fn parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    state: Option<RatState<B>>,
    chunk: usize,
    rope_base: f64,
) -> RatOutput<B> {
    let dtype = v.dtype();
    let [b, t, h, d] = q.dims();
    let device = q.device();
    let [q, k, v, g] = [q, k, v, g].map(to_f32);
    let state = state.unwrap_or_else(|| RatState::zeros(b, h, d, &device));
    // The new tokens start at offset `first` of chunk `chunk0` (= the number of completed chunks).
    let (chunk0, first) = (state.position / chunk, state.position % chunk);
    let n = (first + t).div_ceil(chunk);
    let back = n * chunk - first - t;

    // Lay the tokens out as [B, n, L, H, *] at their offsets within chunks. The `first` front
    // slots stand for the tokens of the chunk in progress already consumed: gate 1 and zero
    // input carry that chunk's state (fed in below) unchanged to the first new token. The back
    // padding only fills the last chunk; nothing reads its states.
    let layout = |x: Tensor<B, 4>, front_fill: f32| {
        let width = x.dims()[3];
        let mut parts = Vec::new();
        if first > 0 {
            parts.push(Tensor::full([b, first, h, width], front_fill, &device));
        }
        parts.push(x);
        if back > 0 {
            parts.push(Tensor::zeros([b, back, h, width], &device));
        }
        Tensor::cat(parts, 1).reshape([b, n, chunk, h, width])
    };
    let inputs = layout(Tensor::cat(vec![k, v], 3), 0.0); // k and v share the gate: one pass
    let gate = layout(Tensor::cat(vec![g.clone(), g], 3), 1.0);
    let keep = gate.clone();
    let admit = gate.ones_like() - gate;

    // Intra-chunk recurrence, one offset at a time for all chunks at once; only chunk 0 starts
    // from a non-zero state (the chunk in progress, when the state has one).
    let carried = Tensor::cat(vec![state.key, state.value], 3).unsqueeze_dim::<5>(1);
    let mut carry = if n > 1 {
        Tensor::cat(vec![carried, Tensor::zeros([b, n - 1, 1, h, 2 * d], &device)], 1)
    } else {
        carried
    };
    let mut states = Vec::with_capacity(chunk);
    for l in 0..chunk {
        let at = |x: &Tensor<B, 5>| x.clone().narrow(2, l, 1);
        carry = at(&keep) * carry + at(&admit) * at(&inputs);
        states.push(carry.clone());
    }
    let states = Tensor::cat(states, 2); // [B, n, L, H, 2d]
    let finals = states.clone().narrow(2, chunk - 1, 1).reshape([b, n, h, 2 * d]);
    let final_keys = rope::apply(finals.clone().narrow(3, 0, d), chunk0, rope_base);
    let final_values = finals.narrow(3, d, d);
    let per_token = states.reshape([b, n * chunk, h, 2 * d]).narrow(1, first, t);
    let (key_t, value_t) = (per_token.clone().narrow(3, 0, d), per_token.narrow(3, d, d));

    // Queries at position = chunk index: with the chunks as "time" and (offset, head) as heads,
    // `rope::apply` gives every token of chunk i the position chunk0 + i.
    let q_rot = layout(q.clone(), 0.0).reshape([b, n, chunk * h, d]);
    let q_rot = rope::apply(q_rot, chunk0, rope_base).reshape([b, n * chunk, h, d]).narrow(1, first, t);

    // Keys: every chunk-final so far, indexed by global chunk; query of chunk c sees j < c.
    let (keys, values) = match state.chunks.clone() {
        Some((ck, cv)) => (Tensor::cat(vec![ck, final_keys.clone()], 1), Tensor::cat(vec![cv, final_values.clone()], 1)),
        None => (final_keys.clone(), final_values.clone()),
    };
    let n_keys = keys.dims()[1];
    let scale = 1.0 / (d as f64).sqrt();
    let heads_first = |x: Tensor<B, 4>| x.swap_dims(1, 2); // [B, H, *, d]
    let inter = heads_first(q_rot).matmul(heads_first(keys).swap_dims(2, 3)) * scale; // [B, H, T, n_keys]
    let query_chunk = Tensor::<B, 1, Int>::arange(first as i64..(first + t) as i64, &device)
        .div_scalar(chunk as i64)
        .add_scalar(chunk0 as i64)
        .reshape([t, 1]);
    let key_chunk = Tensor::<B, 1, Int>::arange(0..n_keys as i64, &device).reshape([1, n_keys]);
    let hidden = key_chunk.greater_equal(query_chunk).unsqueeze::<4>();
    // The self score: q and k̃_t share the rotation (both at chunk c), so it needs none.
    let own = heads_first((q * key_t.clone()).sum_dim(3)) * scale; // [B, H, T, 1]
    // One softmax over [earlier chunk-finals ‖ own state]; the own column is always finite.
    let probs = softmax(Tensor::cat(vec![inter.mask_fill(hidden, f32::NEG_INFINITY), own], 3), 3);
    let y = probs.clone().narrow(3, 0, n_keys).matmul(heads_first(values))
        + probs.narrow(3, n_keys, 1) * heads_first(value_t.clone());

    let completed = (first + t) / chunk; // chunks finished by these tokens
    let chunks = if completed == 0 {
        state.chunks
    } else {
        let (new_k, new_v) = (final_keys.narrow(1, 0, completed), final_values.narrow(1, 0, completed));
        Some(match state.chunks {
            Some((ck, cv)) => (Tensor::cat(vec![ck, new_k], 1), Tensor::cat(vec![cv, new_v], 1)),
            None => (new_k, new_v),
        })
    };
    let (key, value) = if (first + t) % chunk == 0 {
        let zeros = Tensor::zeros([b, 1, h, d], &device);
        (zeros.clone(), zeros)
    } else {
        (key_t.narrow(1, t - 1, 1), value_t.narrow(1, t - 1, 1))
    };
    let state = RatState { key, value, chunks, position: state.position + t };
    RatOutput { output: to_dtype(y.swap_dims(1, 2), dtype), state }
}

/// One decoding step (LAYERS.md §6.3): `q, k, v, g: [B, 1, H, d]`.
pub fn step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    state: RatState<B>,
    chunk: usize,
    rope_base: f64,
) -> RatOutput<B> {
    let dtype = v.dtype();
    let [q, k, v, g] = [q, k, v, g].map(to_f32);
    let c = state.position / chunk;
    let admit = g.ones_like() - g.clone();
    let key = g.clone() * state.key + admit.clone() * k;
    let value = g * state.value + admit * v;
    let q = rope::apply(q, c, rope_base).swap_dims(1, 2); // [B, H, 1, d]
    let key_rot = rope::apply(key.clone(), c, rope_base);
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let own = q.clone().matmul(key_rot.clone().swap_dims(1, 2).swap_dims(2, 3)) * scale; // [B, H, 1, 1]
    // The cache holds completed chunks only, all earlier than c: no mask.
    let y = match &state.chunks {
        None => value.clone().swap_dims(1, 2),
        Some((ck, cv)) => {
            let n = ck.dims()[1];
            let inter = q.matmul(ck.clone().swap_dims(1, 2).swap_dims(2, 3)) * scale;
            let probs = softmax(Tensor::cat(vec![inter, own], 3), 3);
            probs.clone().narrow(3, 0, n).matmul(cv.clone().swap_dims(1, 2))
                + probs.narrow(3, n, 1) * value.clone().swap_dims(1, 2)
        }
    };
    let position = state.position + 1;
    let state = if position % chunk == 0 {
        // The chunk is complete: its final state moves into the cache and the intra state resets.
        let chunks = match state.chunks {
            Some((ck, cv)) => (Tensor::cat(vec![ck, key_rot], 1), Tensor::cat(vec![cv, value.clone()], 1)),
            None => (key_rot, value.clone()),
        };
        RatState { key: key.zeros_like(), value: value.zeros_like(), chunks: Some(chunks), position }
    } else {
        RatState { key, value, chunks: state.chunks, position }
    };
    RatOutput { output: to_dtype(y.swap_dims(1, 2), dtype), state }
}

/// Token-by-token form from `state` (none: a fresh sequence).
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    state: Option<RatState<B>>,
    chunk: usize,
    rope_base: f64,
) -> RatOutput<B> {
    let [b, _, h, d] = q.dims();
    let state = state.unwrap_or_else(|| RatState::zeros(b, h, d, &q.device()));
    let (output, state) = crate::scan_tokens([q, k, v, g], state, |[q, k, v, g], s| {
        let out = step(q, k, v, g, s, chunk, rope_base);
        (out.output, out.state)
    });
    RatOutput { output, state }
}
