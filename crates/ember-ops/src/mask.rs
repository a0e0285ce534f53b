//! Boolean masks for causal and sliding-window attention.
use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// `[q_len, k_len]` mask that is `true` where query `t` may NOT see key `s`.
///
/// Query `t` sits at absolute position `q_offset + t`, key `s` at `s`. A key is visible when
/// it is not in the future and, with `window = Some(w_left)`, at most `w_left` steps back.
pub fn hidden_keys<B: Backend>(
    q_len: usize,
    k_len: usize,
    q_offset: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let t = Tensor::<B, 1, Int>::arange(q_offset as i64..(q_offset + q_len) as i64, device)
        .reshape([q_len, 1]);
    let s = Tensor::<B, 1, Int>::arange(0..k_len as i64, device).reshape([1, k_len]);
    let future = s.clone().greater(t.clone());
    match window {
        None => future,
        // s < t - w_left  <=>  s + w_left < t
        Some(w) => future.bool_or(s.add_scalar(w as i64).lower(t)),
    }
}
