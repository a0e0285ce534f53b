//! Causal softmax attention with grouped-query heads and an optional sliding window.
//!
//! `q: [B, T, Hq, D]`, `k, v: [B, S, Hkv, D]`; query head `h` uses key/value head
//! `h / (Hq / Hkv)`. With `window = Some(w_left)` query `t` sees keys `t - w_left ..= t`
//! (`w_left + 1` keys, itself included; LAYERS.md P6).
use crate::mask::hidden_keys;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{activation::softmax, backend::Backend, Bool, Tensor};

/// Repeats each key/value head `groups` times: `[B, S, Hkv, D] -> [B, Hkv·groups, S, D]`
/// (head-major, so query head `h` meets kv head `h / groups`).
fn expand_heads<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    let [b, s, hkv, d] = x.dims();
    let x = x.swap_dims(1, 2);
    if groups == 1 {
        return x;
    }
    x.unsqueeze_dim::<5>(2).expand([b, hkv, groups, s, d]).reshape([b, hkv * groups, s, d])
}

/// Learned key/value pairs that every query sees whatever its window or position (Titans'
/// persistent memory, LAYERS.md §4.3): `[P, Hkv, D]` each, shared by the batch, without RoPE.
#[derive(Clone, Debug)]
pub struct Prefix<B: Backend> {
    pub k: Tensor<B, 3>,
    pub v: Tensor<B, 3>,
}

/// Materialised masked softmax attention. The queries sit at absolute positions
/// `q_offset..q_offset+T` and the keys at `0..S` (so a KV cache can be attended to).
pub fn parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    window: Option<usize>,
    q_offset: usize,
) -> Tensor<B, 4> {
    parallel_with_prefix(q, k, v, None, scale, window, q_offset)
}

/// [`parallel`] with a [`Prefix`] of always-visible keys before the sequence's own.
pub fn parallel_with_prefix<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    prefix: Option<&Prefix<B>>,
    scale: f64,
    window: Option<usize>,
    q_offset: usize,
) -> Tensor<B, 4> {
    let [_, t, _, _] = q.dims();
    let s = k.dims()[1];
    let hidden = hidden_keys::<B>(t, s, q_offset, window, &q.device());
    masked(q, k, v, hidden, prefix, scale)
}

/// Softmax attention under an explicit mask `hidden: [T, S]` (`true`: query `t` may not see key
/// `s`), after an always-visible [`Prefix`].
pub fn masked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mut hidden: Tensor<B, 2, Bool>,
    prefix: Option<&Prefix<B>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, t, hq, _] = q.dims();
    let [_, _, hkv, d] = k.dims();
    assert!(hq % hkv == 0, "query heads ({hq}) must be a multiple of key/value heads ({hkv})");
    let (k, v) = match prefix {
        None => (k, v),
        Some(p) => {
            let n = p.k.dims()[0];
            let batch = |x: Tensor<B, 3>| x.unsqueeze_dim::<4>(0).expand([b, n, hkv, d]);
            hidden = Tensor::cat(vec![hidden_keys::<B>(t, n, n, None, &q.device()), hidden], 1); // all visible
            (Tensor::cat(vec![batch(p.k.clone()), k], 1), Tensor::cat(vec![batch(p.v.clone()), v], 1))
        }
    };
    let groups = hq / hkv;
    let (k, v) = (expand_heads(k, groups), expand_heads(v, groups));
    let q = q.swap_dims(1, 2);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let hidden = hidden.unsqueeze::<4>();
    // The softmax runs in f32 whatever the compute dtype; the products with V in that dtype.
    let probs = softmax(to_f32(scores).mask_fill(hidden, f32::NEG_INFINITY), 3);
    to_dtype(probs, v.dtype()).matmul(v).swap_dims(1, 2)
}

/// Keys and values seen so far, bounded by the window when there is one.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    /// `[B, L, Hkv, D]`, the last `L` keys (L ≤ w_left + 1 with a window).
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// Absolute position of the next token.
    pub position: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn numel(&self) -> usize {
        self.k.shape().num_elements() + self.v.shape().num_elements()
    }
}

/// Attends `q, k, v: [B, T, *, D]` (a prompt, or one token) after the tokens in `cache`,
/// returning the output and the cache extended (and trimmed to the window).
pub fn step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    cache: Option<KvCache<B>>,
    scale: f64,
    window: Option<usize>,
) -> (Tensor<B, 4>, KvCache<B>) {
    step_with_prefix(q, k, v, None, cache, scale, window)
}

/// [`step`] with a [`Prefix`] (kept out of the cache: it is the same for every token).
pub fn step_with_prefix<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    prefix: Option<&Prefix<B>>,
    cache: Option<KvCache<B>>,
    scale: f64,
    window: Option<usize>,
) -> (Tensor<B, 4>, KvCache<B>) {
    let t = q.dims()[1];
    let (k_all, v_all, start) = match cache {
        None => (k, v, 0),
        Some(c) => (Tensor::cat(vec![c.k, k], 1), Tensor::cat(vec![c.v, v], 1), c.position),
    };
    let cached = k_all.dims()[1];
    // Keys in the buffer start at absolute position `start + t - cached`.
    let first_key = start + t - cached;
    let output = parallel_with_prefix(q, k_all.clone(), v_all.clone(), prefix, scale, window, start - first_key);
    let keep = window.map_or(cached, |w| cached.min(w + 1));
    let cache = KvCache {
        k: k_all.narrow(1, cached - keep, keep),
        v: v_all.narrow(1, cached - keep, keep),
        position: start + t,
    };
    (output, cache)
}

/// Token-by-token form (for tests): each token attends to the cache built so far.
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    window: Option<usize>,
) -> Tensor<B, 4> {
    let (output, _) = crate::scan_tokens([q, k, v], None, |[q, k, v], cache| {
        let (o, c) = step(q, k, v, cache, scale, window);
        (o, Some(c))
    });
    output
}
