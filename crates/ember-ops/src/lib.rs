//! Sequence-mixing primitives, generic over the Burn backend.
//!
//! Every op takes tensors in the `[batch, time, heads, head_dim]` layout (the layout of the
//! reference fixtures and of flash-linear-attention) and comes in several interchangeable
//! forms: a `parallel` (quadratic, masked) form for training, a `chunked` form where one
//! exists, and a `recurrent` form over an explicit state for generation. The forms compute the
//! same function; the tests and `ember conformance` hold them to each other and to the fixtures.

pub mod aaren;
pub mod conv;
pub mod gated_linear_attention;
pub mod head_loss;
pub mod hybrid;
pub mod kernels;
pub mod linear_attention;
pub mod mask;
pub mod precision;
pub mod random;
pub mod rat;
pub mod rope;
pub mod softmax_attention;
pub mod taylor;
pub mod titans;

use burn::tensor::{backend::Backend, Tensor};

/// Runs a one-token `step` over every position of `inputs` (each `[B, T, H, *]`, e.g. `q, k, v`)
/// in order, threading the state through, and concatenates the outputs along time: the shared
/// body of every op's recurrent form.
pub fn scan_tokens<B: Backend, S, const N: usize>(
    inputs: [Tensor<B, 4>; N],
    mut state: S,
    mut step: impl FnMut([Tensor<B, 4>; N], S) -> (Tensor<B, 4>, S),
) -> (Tensor<B, 4>, S) {
    let t = inputs[0].dims()[1];
    let mut outputs = Vec::with_capacity(t);
    for i in 0..t {
        let (o, s) = step(inputs.clone().map(|x| x.narrow(1, i, 1)), state);
        outputs.push(o);
        state = s;
    }
    (Tensor::cat(outputs, 1), state)
}

/// GELU, `z·Φ(z)` with `Φ` through `erf`. Burn 0.21's `gelu` has this forward but the backward of
/// the tanh approximation (gradients off by ~5e-4 relative; `tests/autodiff_gates.rs`).
pub fn gelu<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    normal_cdf(z.clone()) * z
}

/// `Φ(z)`, the standard normal CDF.
pub fn normal_cdf<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    (z / std::f64::consts::SQRT_2).erf().add_scalar(1.0) / 2.0
}

/// Which algorithm computes a sequence op during training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// Masked quadratic form: `O(T²)` memory, simplest, the reference.
    Parallel,
    /// Intra-chunk quadratic, inter-chunk state passing: `O(T·C)` memory.
    Chunked,
    /// Token-by-token loop over the recurrent state (slow; for tests and generation).
    Recurrent,
}

impl std::fmt::Display for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Form::Parallel => "parallel",
            Form::Chunked => "chunked",
            Form::Recurrent => "recurrent",
        })
    }
}
