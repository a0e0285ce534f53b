//! Synthetic sweeps from known laws, shared by the integration tests.
#![allow(dead_code)]

use ember_scaling::{ChinchillaParams, RunResult};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The law of Hoffmann et al. (2022), the ground truth of the synthetic sweeps.
pub const TRUE_LAW: ChinchillaParams = ChinchillaParams {
    e: 1.69,
    a: 406.4,
    b: 410.7,
    alpha: 0.34,
    beta: 0.28,
};

/// `count` values evenly spaced in log from `lo` to `hi`.
pub fn log_space(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    (0..count)
        .map(|i| (lo.ln() + (hi.ln() - lo.ln()) * i as f64 / (count - 1) as f64).exp())
        .collect()
}

/// Runs on an 8×8 grid of N in 1e6..1e9 and D in 1e8..1e11, with the loss of `law`
/// multiplied by `exp(noise · ε)`, ε standard normal (seeded).
pub fn grid_sweep(law: &ChinchillaParams, noise: f64, seed: u64) -> Vec<RunResult> {
    let sizes = log_space(1e6, 1e9, 8);
    let points = sizes
        .iter()
        .flat_map(|&n| log_space(1e8, 1e11, 8).into_iter().map(move |d| (n, d)));
    noisy_runs(law, points, noise, seed)
}

/// An isoFLOP sweep: for each budget, seven model sizes spaced ×2 around the law's
/// optimum, tokens from C = 6ND, loss noisy as in [`grid_sweep`].
pub fn isoflop_sweep(
    law: &ChinchillaParams,
    budgets: &[f64],
    noise: f64,
    seed: u64,
) -> Vec<RunResult> {
    let points = budgets.iter().flat_map(|&c| {
        let n_opt = law.optimal_allocation(c).0;
        (-3..=3)
            .map(move |k| n_opt * 2f64.powi(k))
            .map(move |n| (n, c / (6.0 * n)))
    });
    noisy_runs(law, points, noise, seed)
}

/// Runs at the given `(N, D)` with the loss of `law` times `exp(noise · ε)`.
fn noisy_runs(
    law: &ChinchillaParams,
    points: impl Iterator<Item = (f64, f64)>,
    noise: f64,
    seed: u64,
) -> Vec<RunResult> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    points
        .map(|(n, d)| {
            let loss = law.loss(n, d) * (noise * standard_normal(&mut rng)).exp();
            RunResult::new(format!("n{n:.2e}-d{d:.2e}"), "test", n, d, loss)
        })
        .collect()
}

/// Box–Muller transform of two uniforms.
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
