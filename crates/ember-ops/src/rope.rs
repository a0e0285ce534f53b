//! Rotary position embedding, rotate-half (Llama / Hugging Face) convention (LAYERS.md P4).
use crate::precision::{to_dtype, to_f32};
use burn::tensor::{backend::Backend, Tensor};

/// Applies RoPE to `x: [B, T, H, D]` whose first token sits at absolute position `offset`
/// (rotating in f32, so bf16 inputs lose no position information to rounded angles).
pub fn apply<B: Backend>(x: Tensor<B, 4>, offset: usize, base: f64) -> Tensor<B, 4> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let [_, t, _, d] = x.dims();
    assert!(d % 2 == 0, "RoPE needs an even head dimension, got {d}");
    let device = x.device();
    let half = d / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| base.powf(-2.0 * i as f64 / d as f64) as f32)
        .collect();
    let pos: Vec<f32> = (offset..offset + t).map(|p| p as f32).collect();
    let pos = Tensor::<B, 1>::from_floats(pos.as_slice(), &device).reshape([t, 1]);
    let freq = Tensor::<B, 1>::from_floats(inv_freq.as_slice(), &device).reshape([1, half]);
    let angles = pos.matmul(freq); // [T, D/2]
    let angles = Tensor::cat(vec![angles.clone(), angles], 1).reshape([1, t, 1, d]);
    let rotated = Tensor::cat(
        vec![x.clone().narrow(3, half, half).neg(), x.clone().narrow(3, 0, half)],
        3,
    );
    to_dtype(x * angles.clone().cos() + rotated * angles.sin(), dtype)
}
