//! Aaren (LAYERS.md §7): softmax attention of one query per head over every prefix,
//! `o_k = Σ_{i≤k} e^{s_i} v_i / Σ_{i≤k} e^{s_i}`, as an RNN and as a prefix scan.
//!
//! `s: [B, T, H]` are the scores, `v: [B, T, H, dv]` the values. A stretch of tokens is
//! summarised by a [`Segment`] `(m, u, w)`: `m` its largest score, `u = Σ e^{s_i − m}`,
//! `w = Σ e^{s_i − m} v_i`; `o = w / u`. Two adjacent segments [`combine`] associatively, so the
//! prefixes come from a scan. The outputs do not depend on `m`, which is therefore computed from
//! detached scores (no gradient flows through a max). Every exponent is `score − max ≤ 0`.
//! The op runs in f32 and returns its output in `v`'s dtype.
use crate::mask::hidden_keys;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, DType, Tensor};

/// `(m, u, w)` of a stretch of tokens: `m, u` end in a dimension of size 1, `w` in `dv`.
#[derive(Clone, Debug)]
pub struct Segment<B: Backend, const D: usize> {
    pub m: Tensor<B, D>,
    pub u: Tensor<B, D>,
    pub w: Tensor<B, D>,
}

/// Generation state: the segment of every token so far, `m, u: [B, H, 1]`, `w: [B, H, dv]` (f32).
pub type AarenState<B> = Segment<B, 3>;

impl<B: Backend, const D: usize> Segment<B, D> {
    /// The tokens' own segments: `(s, e^{s − m}, e^{s − m} v)` with `m = s` detached, so `u` is 1
    /// in value but carries the gradient of `s`.
    pub fn leaf(s: Tensor<B, D>, v: Tensor<B, D>) -> Self {
        let m = s.clone().detach();
        let u = (s - m.clone()).exp();
        Self { w: v * u.clone(), u, m }
    }

    /// `w / u`.
    pub fn output(&self) -> Tensor<B, D> {
        self.w.clone() / self.u.clone()
    }

    pub fn numel(&self) -> usize {
        [&self.m, &self.u, &self.w].iter().map(|x| x.shape().num_elements()).sum()
    }

    fn map<const E: usize>(self, f: impl Fn(Tensor<B, D>) -> Tensor<B, E>) -> Segment<B, E> {
        Segment { m: f(self.m), u: f(self.u), w: f(self.w) }
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Self {
        self.clone().map(|x| x.narrow(dim, start, len))
    }

    fn cat(parts: Vec<Self>, dim: usize) -> Self {
        let take = |f: fn(&Self) -> Tensor<B, D>| Tensor::cat(parts.iter().map(f).collect(), dim);
        Self { m: take(|s| s.m.clone()), u: take(|s| s.u.clone()), w: take(|s| s.w.clone()) }
    }
}

/// The segment of `earlier` followed by `later` (both of the same shapes).
pub fn combine<B: Backend, const D: usize>(earlier: Segment<B, D>, later: Segment<B, D>) -> Segment<B, D> {
    let m = earlier.m.clone().max_pair(later.m.clone());
    let a = (earlier.m - m.clone()).exp();
    let b = (later.m - m.clone()).exp();
    Segment { u: earlier.u * a.clone() + later.u * b.clone(), w: earlier.w * a + later.w * b, m }
}

pub struct AarenOutput<B: Backend> {
    /// `[B, T, H, dv]`, in the dtype of `v`.
    pub output: Tensor<B, 4>,
    /// The segment of every token consumed, the initial state's included.
    pub state: AarenState<B>,
}

/// Prepends `state` (if any) to every prefix in `prefixes` (`[B, T, H, *]`).
fn after_state<B: Backend>(prefixes: Segment<B, 4>, state: Option<AarenState<B>>) -> Segment<B, 4> {
    match state {
        None => prefixes,
        Some(state) => {
            let [b, t, h, _] = prefixes.m.dims();
            let dv = prefixes.w.dims()[3];
            let spread = |x: Tensor<B, 3>, width: usize| to_f32(x).unsqueeze_dim::<4>(1).expand([b, t, h, width]);
            let state = Segment { m: spread(state.m, 1), u: spread(state.u, 1), w: spread(state.w, dv) };
            combine(state, prefixes)
        }
    }
}

/// The outputs of every prefix, and the last one as the state `[B, H, *]`.
fn finish<B: Backend>(prefixes: Segment<B, 4>, dtype: DType) -> AarenOutput<B> {
    let t = prefixes.m.dims()[1];
    let state = prefixes.narrow(1, t - 1, 1).map(|x| x.squeeze_dim::<3>(1));
    AarenOutput { output: to_dtype(prefixes.output(), dtype), state }
}

/// Inclusive prefix scan by Hillis–Steele doubling (LAYERS.md §7.2): after the round with shift
/// `2^r`, token `t` holds the segment of tokens `t − 2^{r+1} + 1 ..= t`; `⌈log2 T⌉` rounds of
/// shifted slices, `O(T log T)` work.
pub fn parallel<B: Backend>(s: Tensor<B, 3>, v: Tensor<B, 4>, state: Option<AarenState<B>>) -> AarenOutput<B> {
    let dtype = v.dtype();
    let x = scan(Segment::leaf(to_f32(s).unsqueeze_dim::<4>(3), to_f32(v)), 1);
    finish(after_state(x, state), dtype)
}

/// Inclusive prefix scan of segments along `dim` by doubling: `⌈log2 n⌉` rounds of shifted
/// slices of the whole tensors.
fn scan<B: Backend, const D: usize>(mut x: Segment<B, D>, dim: usize) -> Segment<B, D> {
    let n = x.m.dims()[dim];
    let mut shift = 1;
    while shift < n {
        let merged = combine(x.narrow(dim, 0, n - shift), x.narrow(dim, shift, n - shift));
        x = Segment::cat(vec![x.narrow(dim, 0, shift), merged], dim);
        shift *= 2;
    }
    x
}

/// Chunked form: inside each chunk of `chunk` tokens a masked prefix softmax (`C × C` weights,
/// the running max as a masked row max), then the segments carried over from earlier chunks
/// (a scan over the chunk totals) combined in front.
pub fn chunked<B: Backend>(
    s: Tensor<B, 3>,
    v: Tensor<B, 4>,
    state: Option<AarenState<B>>,
    chunk: usize,
) -> AarenOutput<B> {
    let dtype = v.dtype();
    let [b, t, h] = s.dims();
    let dv = v.dims()[3];
    let device = s.device();
    let n = t.div_ceil(chunk);
    let pad = n * chunk - t;
    // Padding after the last token is causal-safe: it only enters rows that are cut off.
    let (mut s, mut v) = (to_f32(s), to_f32(v));
    if pad > 0 {
        s = Tensor::cat(vec![s, Tensor::zeros([b, pad, h], &device)], 1);
        v = Tensor::cat(vec![v, Tensor::zeros([b, pad, h, dv], &device)], 1);
    }
    let s = s.swap_dims(1, 2).reshape([b, h, n, 1, chunk]); // a row of scores per chunk
    let v = v.swap_dims(1, 2).reshape([b, h, n, chunk, dv]);
    let future = hidden_keys::<B>(chunk, chunk, 0, None, &device).reshape([1, 1, 1, chunk, chunk]);
    let scores = s.expand([b, h, n, chunk, chunk]).mask_fill(future, f32::NEG_INFINITY); // [.., row t, col i]
    let m = scores.clone().detach().max_dim(4); // running max: the diagonal keeps it finite
    let weights = (scores - m.clone()).exp(); // 0 above the diagonal
    let intra = Segment { u: weights.clone().sum_dim(4), w: weights.matmul(v), m }; // [B, H, n, C, *]

    // Carry into chunk c = state ∘ totals of chunks 0..c−1 (a total is the chunk's last row),
    // from one scan over the chunk totals: slicing the chunks one by one would cost `O(n²)` in
    // the backward pass (each slice's gradient is a zero tensor of the full size).
    let totals = scan(intra.narrow(3, chunk - 1, 1), 2); // [B, H, n, 1, *]: chunks 0..=c
    let state = state.map(|st| st.map(|x| to_f32(x).unsqueeze_dim::<4>(2).unsqueeze_dim::<5>(2)));
    // `[B, H, chunks or 1, 1, *]` segments broadcast to `[B, H, chunks, rows, *]`.
    let spread = |x: Segment<B, 5>, chunks, rows| {
        let m = x.m.expand([b, h, chunks, rows, 1]);
        Segment { u: x.u.expand([b, h, chunks, rows, 1]), w: x.w.expand([b, h, chunks, rows, dv]), m }
    };
    let prefixes = match state {
        Some(st) => {
            let totals = combine(spread(st.clone(), n, 1), totals);
            let carry = match n {
                1 => st,
                _ => Segment::cat(vec![st, totals.narrow(2, 0, n - 1)], 2),
            };
            combine(spread(carry, n, chunk), intra)
        }
        None if n == 1 => intra,
        None => {
            let later = combine(spread(totals.narrow(2, 0, n - 1), n - 1, chunk), intra.narrow(2, 1, n - 1));
            Segment::cat(vec![intra.narrow(2, 0, 1), later], 2)
        }
    };
    let prefixes = prefixes.map(|x| {
        let width = x.dims()[4];
        x.reshape([b, h, n * chunk, width]).swap_dims(1, 2).narrow(1, 0, t)
    });
    finish(prefixes, dtype)
}

/// One recurrent step (LAYERS.md §7.1): `s: [B, 1, H]`, `v: [B, 1, H, dv]`.
pub fn step<B: Backend>(s: Tensor<B, 3>, v: Tensor<B, 4>, state: Option<AarenState<B>>) -> AarenOutput<B> {
    let dtype = v.dtype();
    let leaf = Segment::leaf(to_f32(s).swap_dims(1, 2), to_f32(v).squeeze_dim::<3>(1));
    let state = match state {
        None => leaf,
        Some(state) => combine(state.map(to_f32), leaf),
    };
    AarenOutput { output: to_dtype(state.output().unsqueeze_dim::<4>(1), dtype), state }
}

/// Token-by-token form from `state`.
pub fn recurrent<B: Backend>(s: Tensor<B, 3>, v: Tensor<B, 4>, state: Option<AarenState<B>>) -> AarenOutput<B> {
    let (output, state) = crate::scan_tokens([s.unsqueeze_dim::<4>(3), v], state, |[s, v], st| {
        let out = step(s.squeeze_dim::<3>(3), v, st);
        (out.output, Some(out.state))
    });
    AarenOutput { output, state: state.expect("at least one token") }
}
