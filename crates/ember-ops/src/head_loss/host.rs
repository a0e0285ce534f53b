//! The elementwise part of the head's cross-entropy on the CPU backends, on the logits' own
//! memory: one pass per row for the log-sum-exp, one for `softmax − one-hot`, rows split over
//! the rayon pool. Burn's ndarray ops take one pass per op (max, subtract, exp, sum, log,
//! scatter, scale), each on one thread, and ndarray's `exp` is the C library's scalar `expf`
//! (11% of a tiny model's training step under `perf`); [`exp`] below is written so the compiler
//! vectorises it. Rows are independent, so the split does not change any result.
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

/// Whether `B` keeps tensors in host memory (Burn's CPU backends), where reading a block of
/// logits out costs a copy at memory speed rather than a device transfer.
pub(super) fn runs_on<B: Backend>(device: &B::Device) -> bool {
    matches!(B::name(device).as_str(), "ndarray" | "flex")
}

/// A tensor's ids on the host.
pub(super) fn ids<B: Backend>(t: Tensor<B, 1, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec::<i64>().expect("int data")
}

/// The logits `z: [rows, vocab]` (f32) on the host.
fn host_rows<B: Backend>(z: Tensor<B, 2>) -> (Vec<f32>, usize) {
    let vocab = z.dims()[1];
    (z.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data"), vocab)
}

/// `Σ_rows lse(z_i) − z_i[t_i]` (in f64) and each row's log-sum-exp.
pub(super) fn loss_rows<B: Backend>(z: Tensor<B, 2>, targets: &[i64]) -> (f64, Vec<f32>) {
    let (z, vocab) = host_rows(z);
    let lse: Vec<f32> = z.par_chunks(vocab).map(log_sum_exp).collect();
    let loss = lse.iter().zip(z.chunks(vocab)).zip(targets).map(|((&l, row), &t)| (l - row[t as usize]) as f64).sum();
    (loss, lse)
}

/// The gradient of the loss with respect to the logits: `(softmax(z_i) − onehot(t_i)) · scale`,
/// from each row's log-sum-exp.
pub(super) fn logit_grads<B: Backend>(z: Tensor<B, 2>, lse: &[f32], targets: &[i64], scale: f32) -> Tensor<B, 2> {
    let device = z.device();
    let (mut z, vocab) = host_rows(z);
    let rows = z.len() / vocab.max(1);
    z.par_chunks_mut(vocab).zip(lse).zip(targets).for_each(|((row, &l), &t)| {
        for x in row.iter_mut() {
            *x = exp(*x - l) * scale;
        }
        row[t as usize] -= scale;
    });
    Tensor::from_data(TensorData::new(z, [rows, vocab]), &device)
}

/// `ln Σ exp(x)`, shifted by the maximum so nothing overflows.
fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // Eight running sums: independent adds the compiler can keep in one vector register.
    let mut lanes = [0f32; 8];
    let mut blocks = x.chunks_exact(8);
    for block in &mut blocks {
        for (acc, &v) in lanes.iter_mut().zip(block) {
            *acc += exp(v - max);
        }
    }
    let tail: f32 = blocks.remainder().iter().map(|&v| exp(v - max)).sum();
    max + (lanes.iter().sum::<f32>() + tail).ln()
}

/// `e^x` for f32, within about 2 ulp, for `x` ≤ 88 (the callers pass `x` ≤ 0: the largest
/// logit is subtracted first); results below f32's smallest normal become 0. `e^x = 2^n · e^r` with
/// `n = round(x / ln 2)` and `|r| ≤ ln 2 / 2`, `e^r` by its Taylor polynomial to degree 7
/// (remainder below 6e-9 relative), and `2^n` written straight into the exponent bits. No
/// branches and no library calls, so loops over it vectorise.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cody and Waite; Cephes' pair): `LN2_HI` has 9 significant bits, so
    // `n · LN2_HI` is exact for every `n` the clamp allows.
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-88.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0 + r * (1.0 / 40320.0);
    let p = 1.0 / 720.0 + r * p;
    let p = 1.0 / 120.0 + r * p;
    let p = 1.0 / 24.0 + r * p;
    let p = 1.0 / 6.0 + r * p;
    let p = 0.5 + r * p;
    let p = 1.0 + r * p;
    let p = 1.0 + r * p;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * two_n;
    // Below -87.33 the true value is under f32's smallest normal: flush to 0 (and `2^n`
    // could not be built from exponent bits).
    if x < -87.33 { 0.0 } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library_exp() {
        // Every 1/1000 from -87 to 0 (the range the callers pass), and a few above.
        let mut worst = 0f64;
        for i in -87_000..=3_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 17 % 23) as f32 - 11.0) * 0.9).collect();
        let max = x.iter().cloned().fold(f64::MIN, |m, v| m.max(v as f64));
        let want = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let got = log_sum_exp(&x) as f64;
        assert!((got - want).abs() < 1e-6 * want.abs(), "{got} vs {want}");
    }
}
