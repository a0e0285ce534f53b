//! Helpers shared by the layer integration tests (`mod common;` in each test file).
//! Not every test file uses every helper.
#![allow(dead_code)]

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use ember_ops::random::TensorRng;

/// `N(0, std²)` values of the given shape from a generator seeded with `seed` (not the
/// backend's process-wide one, which other tests draw from in parallel).
pub fn random<B: Backend, const N: usize>(shape: [usize; N], std: f64, seed: u64) -> Tensor<B, N> {
    TensorRng::new(seed).normal(shape, std, &Default::default())
}

/// A standard-normal `[batch, t, d]` input from a generator seeded with `seed`.
pub fn input<B: Backend>(batch: usize, t: usize, d: usize, seed: u64) -> Tensor<B, 3> {
    random([batch, t, d], 1.0, seed)
}

/// `‖a − b‖ / ‖b‖` (Frobenius norms), computed on the backend.
pub fn rel_err<B: Backend, const N: usize>(a: Tensor<B, N>, b: Tensor<B, N>) -> f32 {
    let diff: f32 = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar().elem();
    let norm: f32 = b.powi_scalar(2).sum().sqrt().into_scalar().elem();
    diff / norm
}

/// The tensor's values as `f32`, in row-major order.
pub fn to_vec<B: Backend, const N: usize>(x: Tensor<B, N>) -> Vec<f32> {
    x.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// `‖a − b‖ / ‖b‖` on the host (the norm of `b` floored at 1e-30).
pub fn vec_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
    let norm: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    diff / norm.max(1e-30)
}

/// [`vec_rel_err`] of two tensors, computed on the host.
pub fn host_rel_err<B: Backend, const N: usize>(a: Tensor<B, N>, b: Tensor<B, N>) -> f32 {
    vec_rel_err(&to_vec(a), &to_vec(b))
}

/// Feeds `x` (`[B, T, D]`) through `step` in consecutive pieces that end at each of `cuts`
/// (increasing, inside `1..T`) and then at `T`, carrying the state from piece to piece; `step`
/// also gets the piece's token range. Returns the concatenated outputs and the final state.
pub fn in_pieces<B: Backend, S>(
    x: Tensor<B, 3>,
    cuts: &[usize],
    mut step: impl FnMut(Tensor<B, 3>, Option<S>, Range<usize>) -> (Tensor<B, 3>, S),
) -> (Tensor<B, 3>, S) {
    let t = x.dims()[1];
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(t);
    let mut state = None;
    let mut ys = Vec::new();
    for w in bounds.windows(2) {
        let (y, s) = step(x.clone().narrow(1, w[0], w[1] - w[0]), state, w[0]..w[1]);
        ys.push(y);
        state = Some(s);
    }
    (Tensor::cat(ys, 1), state.expect("at least one piece"))
}

/// Token-by-token generation: feeds `x` (`[B, T, D]`) through `step` one token at a time,
/// carrying the state, and concatenates the outputs.
pub fn stepwise<B: Backend, S>(
    x: Tensor<B, 3>,
    mut step: impl FnMut(Tensor<B, 3>, Option<S>) -> (Tensor<B, 3>, S),
) -> Tensor<B, 3> {
    let cuts: Vec<usize> = (1..x.dims()[1]).collect();
    in_pieces(x, &cuts, |x, s, _| step(x, s)).0
}

/// `x` with `by` added to every channel of token `token` (all batch rows).
pub fn bumped<B: Backend>(x: Tensor<B, 3>, token: usize, by: f64) -> Tensor<B, 3> {
    let [batch, _, d] = x.dims();
    let bump = x.clone().narrow(1, token, 1) + by;
    x.slice_assign([0..batch, token..token + 1, 0..d], bump)
}

/// Causality: for each of `positions`, bumping that token's input by `bump` (see [`bumped`])
/// leaves every earlier output of `forward` bit-identical and changes the token's own output,
/// in every batch row. `label` prefixes the failure messages.
pub fn assert_causal<B: Backend>(
    x: Tensor<B, 3>,
    positions: &[usize],
    bump: f64,
    forward: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>,
    label: &str,
) {
    let [batch, t, _] = x.dims();
    let out = forward(x.clone());
    let d = out.dims()[2];
    let y = to_vec(out);
    for &changed in positions {
        let y2 = to_vec(forward(bumped(x.clone(), changed, bump)));
        for b in 0..batch {
            let rows = |v: &[f32], from: usize, to: usize| v[(b * t + from) * d..(b * t + to) * d].to_vec();
            let (before, before2) = (rows(&y, 0, changed), rows(&y2, 0, changed));
            let moved = before.iter().zip(&before2).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(before == before2, "{label}: token {changed} changed earlier outputs by {moved}");
            assert!(
                rows(&y, changed, changed + 1) != rows(&y2, changed, changed + 1),
                "{label}: token {changed} did not change its own output"
            );
        }
    }
}
