//! BASED's Taylor linear attention (LAYERS.md §1.1).
//!
//! `A_ts = 1 + s + s²/2` with `s = q_t·k_s / √d'` for `s ≤ t`, and
//! `o_t = Σ_s A_ts v_s / (Σ_s A_ts + ε)`. The kernel equals `φ(q)·φ(k)` for the second-order
//! Taylor feature map `φ`, which gives the constant-size recurrent state `(Σ φ(k)ᵀv, Σ φ(k))`.
//! Inputs `q, k: [B, T, H, d']`, `v: [B, T, H, V]`. Under bf16 the op runs in f32 (the kernel,
//! its normaliser and the states) and returns its output in the dtype of `v`.
use crate::linear_attention::{exclusive_cumsum, pad_time};
use crate::mask::hidden_keys;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, FloatDType, Int, Tensor};

/// Which Taylor feature map the recurrent state uses; both give the same kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMap {
    /// `[1, x/d'^¼, (x_i x_j) for i ≤ j]`: `1 + d' + d'(d'+1)/2` features (153 at d'=16).
    Compact,
    /// `[1, x/d'^¼, vec(xᵀx)/(√2·√d')]`: `1 + d' + d'²` features (273 at d'=16).
    Full,
}

impl FeatureMap {
    /// Number of features for query/key dimension `d`.
    pub fn dim(self, d: usize) -> usize {
        match self {
            FeatureMap::Compact => 1 + d + d * (d + 1) / 2,
            FeatureMap::Full => 1 + d + d * d,
        }
    }
}

/// Recurrent state: `kv = Σ φ(k)ᵀ v: [B, H, F, V]` and `k_sum = Σ φ(k)ᵀ: [B, H, F, 1]`.
#[derive(Clone, Debug)]
pub struct TaylorState<B: Backend> {
    pub kv: Tensor<B, 4>,
    pub k_sum: Tensor<B, 4>,
}

impl<B: Backend> TaylorState<B> {
    pub fn zeros(batch: usize, heads: usize, features: usize, dv: usize, device: &B::Device) -> Self {
        Self {
            kv: Tensor::zeros([batch, heads, features, dv], device),
            k_sum: Tensor::zeros([batch, heads, features, 1], device),
        }
    }

    /// Number of scalars held.
    pub fn numel(&self) -> usize {
        self.kv.shape().num_elements() + self.k_sum.shape().num_elements()
    }
}

/// Output and final state.
pub struct TaylorOutput<B: Backend> {
    pub output: Tensor<B, 4>,
    pub state: TaylorState<B>,
}

/// The Taylor feature map applied to the last dimension: `[.., d'] -> [.., F]`.
pub fn feature_map<B: Backend>(x: Tensor<B, 4>, map: FeatureMap) -> Tensor<B, 4> {
    let [b, t, h, d] = x.dims();
    let (device, x_dtype) = (x.device(), x.dtype());
    let df = d as f64;
    let constant = Tensor::ones([b, t, h, 1], (&device, x_dtype));
    let linear = x.clone() / df.powf(0.25);
    let outer = (x.clone().unsqueeze_dim::<5>(4) * x.unsqueeze_dim::<5>(3)).reshape([b, t, h, d * d]);
    let quadratic = match map {
        FeatureMap::Full => outer / (2f64.sqrt() * df.sqrt()),
        FeatureMap::Compact => {
            // Upper triangle (i ≤ j); off-diagonal pairs stand for both (i,j) and (j,i).
            let mut index = Vec::new();
            let mut weight = Vec::new();
            for i in 0..d {
                for j in i..d {
                    index.push((i * d + j) as i64);
                    let w = if i == j { 1.0 / (2f64.sqrt() * df.sqrt()) } else { 1.0 / df.sqrt() };
                    weight.push(w as f32);
                }
            }
            let n = index.len();
            let index = Tensor::<B, 1, Int>::from_data(index.as_slice(), &device);
            let weight = Tensor::<B, 1>::from_floats(weight.as_slice(), &device).cast(FloatDType::from(x_dtype)).reshape([1, 1, 1, n]);
            outer.select(3, index) * weight
        }
    };
    Tensor::cat(vec![constant, linear, quadratic], 3)
}

/// The kernel `1 + s + s²/2` of `s = scaled dot products`.
fn taylor_kernel<B: Backend, const D: usize>(s: Tensor<B, D>) -> Tensor<B, D> {
    s.clone() + s.powi_scalar(2) / 2.0 + 1.0
}

/// Masked quadratic form, optionally continuing from `state`.
pub fn parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    state: Option<TaylorState<B>>,
    map: FeatureMap,
    eps: f64,
) -> TaylorOutput<B> {
    let dtype = v.dtype();
    let (q, k, v) = (to_f32(q), to_f32(k), to_f32(v));
    let [b, t, h, d] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let state = state.unwrap_or_else(|| TaylorState::zeros(b, h, map.dim(d), dv, &device));
    let (phi_q, phi_k) = (feature_map(q.clone(), map).swap_dims(1, 2), feature_map(k.clone(), map).swap_dims(1, 2));
    let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
    let s = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt();
    let future = hidden_keys::<B>(t, t, 0, None, &device).unsqueeze::<4>();
    let a = taylor_kernel(s).mask_fill(future, 0.0);
    let num = a.clone().matmul(v.clone()) + phi_q.clone().matmul(state.kv.clone());
    let den = a.sum_dim(3) + phi_q.matmul(state.k_sum.clone());
    let output = to_dtype((num / (den + eps)).swap_dims(1, 2), dtype);
    let phi_kt = phi_k.swap_dims(2, 3);
    let state = TaylorState {
        kv: state.kv + phi_kt.clone().matmul(v),
        k_sum: state.k_sum + phi_kt.sum_dim(3),
    };
    TaylorOutput { output, state }
}

/// Chunked form: the kernel inside chunks (in `d'` space), feature-map states between chunks;
/// on the CubeCL kernels (in feature space) where [`crate::kernels::enabled`].
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    state: Option<TaylorState<B>>,
    map: FeatureMap,
    eps: f64,
    chunk: usize,
) -> TaylorOutput<B> {
    let dtype = v.dtype();
    let (q, k, v) = (to_f32(q), to_f32(k), to_f32(v));
    let [b, t, h, d] = q.dims();
    let dv = v.dims()[3];
    let f = map.dim(d);
    let device = q.device();
    let state = state.unwrap_or_else(|| TaylorState::zeros(b, h, f, dv, &device));
    if crate::kernels::enabled::<B>(crate::kernels::Variant::NoDecay) {
        return chunked_on_kernels(q, k, v, state, map, eps, chunk, dtype);
    }
    let n = t.div_ceil(chunk);
    let len = n * chunk;
    // Features before padding, so padded keys have all-zero features and add nothing.
    let phi_q = pad_time(feature_map(q.clone(), map), len);
    let phi_k = pad_time(feature_map(k.clone(), map), len);
    let split = |x: Tensor<B, 4>, dim: usize| x.swap_dims(1, 2).reshape([b, h, n, chunk, dim]);
    let (q, k, v) = (split(pad_time(q, len), d), split(pad_time(k, len), d), split(pad_time(v, len), dv));
    let (phi_q, phi_k) = (split(phi_q, f), split(phi_k, f));

    let s = q.matmul(k.swap_dims(3, 4)) / (d as f64).sqrt();
    let future = hidden_keys::<B>(chunk, chunk, 0, None, &device).unsqueeze::<5>();
    let a = taylor_kernel(s).mask_fill(future, 0.0);

    let phi_kt = phi_k.swap_dims(3, 4); // [B, H, N, F, C]
    let kv = phi_kt.clone().matmul(v.clone()); // [B, H, N, F, V]
    let ks = phi_kt.sum_dim(4); // [B, H, N, F, 1]
    let (kv_before, kv_total) = exclusive_cumsum(kv, state.kv);
    let (ks_before, ks_total) = exclusive_cumsum(ks, state.k_sum);

    let num = a.clone().matmul(v) + phi_q.clone().matmul(kv_before);
    let den = a.sum_dim(4) + phi_q.matmul(ks_before);
    let output = (num / (den + eps)).reshape([b, h, len, dv]).swap_dims(1, 2).narrow(1, 0, t);
    TaylorOutput { output: to_dtype(output, dtype), state: TaylorState { kv: kv_total, k_sum: ks_total } }
}

/// Token-by-token recurrence.
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    state: Option<TaylorState<B>>,
    map: FeatureMap,
    eps: f64,
) -> TaylorOutput<B> {
    let [b, _, h, d] = q.dims();
    let state = state.unwrap_or_else(|| TaylorState::zeros(b, h, map.dim(d), v.dims()[3], &q.device()));
    let (output, state) = crate::scan_tokens([q, k, v], state, |[q, k, v], s| {
        let out = step(q, k, v, s, map, eps);
        (out.output, out.state)
    });
    TaylorOutput { output, state }
}

/// [`chunked`] on the CubeCL kernels: linear attention over the features, with a column of ones
/// appended to `v` so that one pass gives numerator and normaliser (and their states).
#[allow(clippy::too_many_arguments)]
fn chunked_on_kernels<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    state: TaylorState<B>,
    map: FeatureMap,
    eps: f64,
    chunk: usize,
    dtype: burn::tensor::DType,
) -> TaylorOutput<B> {
    let [b, t, h, dv] = v.dims();
    let v = Tensor::cat(vec![v.clone(), Tensor::ones([b, t, h, 1], &v.device())], 3);
    let h0 = Tensor::cat(vec![state.kv, state.k_sum], 3);
    let (phi_q, phi_k) = (feature_map(q, map), feature_map(k, map));
    let out = crate::kernels::chunked(&phi_q, &phi_k, &v, None, Some(&h0), 1.0, chunk);
    let (num, den) = (out.output.clone().narrow(3, 0, dv), out.output.narrow(3, dv, 1));
    let state = TaylorState { kv: out.state.clone().narrow(3, 0, dv), k_sum: out.state.narrow(3, dv, 1) };
    TaylorOutput { output: to_dtype(num / (den + eps), dtype), state }
}

/// One recurrent step: `q, k, v: [B, 1, H, *]`.
pub fn step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    state: TaylorState<B>,
    map: FeatureMap,
    eps: f64,
) -> TaylorOutput<B> {
    let dtype = v.dtype();
    let phi_q = feature_map(to_f32(q), map).swap_dims(1, 2); // [B, H, 1, F]
    let phi_kt = feature_map(to_f32(k), map).swap_dims(1, 2).swap_dims(2, 3); // [B, H, F, 1]
    let kv = state.kv + phi_kt.clone().matmul(to_f32(v).swap_dims(1, 2));
    let k_sum = state.k_sum + phi_kt;
    let num = phi_q.clone().matmul(kv.clone());
    let den = phi_q.matmul(k_sum.clone());
    let output = to_dtype((num / (den + eps)).swap_dims(1, 2), dtype);
    TaylorOutput { output, state: TaylorState { kv, k_sum } }
}
