//! The compute-optimal allocation at one budget, shared by approaches 2 and 3.

use serde::Serialize;

use crate::bootstrap::Interval;

/// Compute-optimal model size and data at one compute budget, with bootstrap intervals.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ComputeOptimal {
    pub flops: f64,
    pub n_opt: f64,
    pub d_opt: f64,
    /// `d_opt / n_opt`.
    pub tokens_per_param: f64,
    /// Predicted loss at the optimum, where the approach predicts one.
    pub loss: Option<f64>,
    pub n_opt_interval: Option<Interval>,
    pub d_opt_interval: Option<Interval>,
    pub tokens_per_param_interval: Option<Interval>,
}

impl ComputeOptimal {
    /// Point estimate `(n_opt, d_opt)` plus the same quantity from each bootstrap fit.
    pub(crate) fn new(
        flops: f64,
        (n_opt, d_opt): (f64, f64),
        loss: Option<f64>,
        samples: &[(f64, f64)],
    ) -> Self {
        Self {
            flops,
            n_opt,
            d_opt,
            tokens_per_param: d_opt / n_opt,
            loss,
            n_opt_interval: Interval::from_samples(samples.iter().map(|s| s.0)),
            d_opt_interval: Interval::from_samples(samples.iter().map(|s| s.1)),
            tokens_per_param_interval: Interval::from_samples(samples.iter().map(|s| s.1 / s.0)),
        }
    }
}
