//! Causal depthwise short convolution (LAYERS.md P3).
use burn::tensor::{backend::Backend, Tensor};

/// `y[t, c] = Σ_j w[c, j] · u[t - (K-1) + j, c]` with `u[<0] = 0`; `u: [B, T, C]`, `w: [C, K]`.
///
/// `history: [B, K-1, C]` holds the inputs before `u` (zeros at the start of a sequence), so the
/// same function serves training (no history) and generation (the last `K-1` inputs).
pub fn causal_conv<B: Backend>(
    u: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    history: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    let [b, t, c] = u.dims();
    let [_, k] = weight.dims();
    // A kernel of 1 has no history (a per-channel scale); Burn cannot narrow to length 0.
    let padded = match (k, history) {
        (1, _) => u,
        (_, Some(history)) => Tensor::cat(vec![history, u], 1), // [B, T+K-1, C]
        (_, None) => Tensor::cat(vec![Tensor::zeros([b, k - 1, c], (&u.device(), u.dtype())), u], 1),
    };
    let mut y: Option<Tensor<B, 3>> = None;
    for j in 0..k {
        let tap = weight.clone().narrow(1, j, 1).reshape([1, 1, c]);
        let term = padded.clone().narrow(1, j, t) * tap;
        y = Some(match y {
            None => term,
            Some(acc) => acc + term,
        });
    }
    y.expect("kernel size must be at least 1")
}

/// The last `K-1` inputs of `history ‖ u`: the convolution state after consuming `u`.
pub fn next_history<B: Backend>(history: Tensor<B, 3>, u: Tensor<B, 3>) -> Tensor<B, 3> {
    let keep = history.dims()[1];
    if keep == 0 {
        return history;
    }
    let all = Tensor::cat(vec![history, u], 1);
    let len = all.dims()[1];
    all.narrow(1, len - keep, keep)
}
