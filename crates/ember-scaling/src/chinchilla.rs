//! Approach 3 of Hoffmann et al. (2022): fit `L(N, D) = E + A/N^α + B/D^β` to all runs.
//!
//! Follows the procedure of Hoffmann et al. as replicated by Besiroglu et al. (2024):
//! with `E = exp(e)`, `A = exp(a)`, `B = exp(b)`, minimise
//! `Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L)` by L-BFGS from a grid of starts.
//! Working in log space makes the residuals relative errors, and the Huber loss keeps a
//! few diverged runs from dominating the fit.

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use rayon::prelude::*;
use serde::Serialize;

use crate::bootstrap::{resample, BootstrapConfig, Interval};
use crate::data::RunResult;
use crate::optimal::ComputeOptimal;

/// The five constants of the parametric loss law.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChinchillaParams {
    /// Irreducible loss E.
    pub e: f64,
    /// Model-size coefficient A.
    pub a: f64,
    /// Data coefficient B.
    pub b: f64,
    /// Model-size exponent α.
    pub alpha: f64,
    /// Data exponent β.
    pub beta: f64,
}

impl ChinchillaParams {
    /// Predicted loss `E + A/N^α + B/D^β`.
    pub fn loss(&self, n_params: f64, tokens: f64) -> f64 {
        self.e + self.a / n_params.powf(self.alpha) + self.b / tokens.powf(self.beta)
    }

    /// `G = (αA / (βB))^{1/(α+β)}`, the scale of the compute-optimal model size.
    pub fn g(&self) -> f64 {
        (self.alpha * self.a / (self.beta * self.b)).powf(1.0 / (self.alpha + self.beta))
    }

    /// Loss-minimising `(N_opt, D_opt)` under `C = 6·N·D`: `N_opt = G (C/6)^{β/(α+β)}`,
    /// `D_opt = G⁻¹ (C/6)^{α/(α+β)}`.
    pub fn optimal_allocation(&self, flops: f64) -> (f64, f64) {
        let sum = self.alpha + self.beta;
        let g = self.g();
        let c6 = flops / 6.0;
        (g * c6.powf(self.beta / sum), c6.powf(self.alpha / sum) / g)
    }

    /// Compute-optimal tokens per parameter `D_opt / N_opt` at compute `flops`.
    pub fn tokens_per_param(&self, flops: f64) -> f64 {
        let (n, d) = self.optimal_allocation(flops);
        d / n
    }

    /// The compute-optimal frontier `L(N_opt(C), D_opt(C))`.
    pub fn optimal_loss(&self, flops: f64) -> f64 {
        let (n, d) = self.optimal_allocation(flops);
        self.loss(n, d)
    }

    /// The optimiser's coordinates `[a, b, e, α, β]` (log A, log B, log E).
    pub fn to_log_vector(&self) -> [f64; 5] {
        [self.a.ln(), self.b.ln(), self.e.ln(), self.alpha, self.beta]
    }

    /// Inverse of [`Self::to_log_vector`].
    pub fn from_log_vector(x: &[f64]) -> Self {
        Self {
            a: x[0].exp(),
            b: x[1].exp(),
            e: x[2].exp(),
            alpha: x[3],
            beta: x[4],
        }
    }
}

/// The Huber objective over log-loss residuals, with its analytic gradient.
///
/// Coordinates are `x = [a, b, e, α, β]`. For each run, with `u = (a − α ln N, b − β ln D, e)`
/// and `w = softmax(u)`, the residual `r = LSE(u) − ln L` has gradient
/// `(w₀, w₁, w₂, −w₀ ln N, −w₁ ln D)`; the chain rule multiplies it by `Huber'(r)`.
#[derive(Debug, Clone)]
pub struct ChinchillaObjective {
    log_n: Vec<f64>,
    log_d: Vec<f64>,
    log_loss: Vec<f64>,
    delta: f64,
}

impl ChinchillaObjective {
    pub fn new(runs: &[RunResult], huber_delta: f64) -> Self {
        Self {
            log_n: runs.iter().map(|r| r.n_params.ln()).collect(),
            log_d: runs.iter().map(|r| r.tokens.ln()).collect(),
            log_loss: runs.iter().map(|r| r.loss.ln()).collect(),
            delta: huber_delta,
        }
    }

    /// Objective value at `x = [a, b, e, α, β]`.
    pub fn value(&self, x: &[f64]) -> f64 {
        self.terms(x).map(|(r, _)| huber(r, self.delta)).sum()
    }

    /// Analytic gradient at `x`.
    pub fn gradient(&self, x: &[f64]) -> Vec<f64> {
        let mut grad = vec![0.0; 5];
        for (i, (r, w)) in self.terms(x).enumerate() {
            let psi = huber_derivative(r, self.delta);
            grad[0] += psi * w[0];
            grad[1] += psi * w[1];
            grad[2] += psi * w[2];
            grad[3] -= psi * w[0] * self.log_n[i];
            grad[4] -= psi * w[1] * self.log_d[i];
        }
        grad
    }

    /// Per run: the residual and the softmax weights of the three LSE terms.
    fn terms<'a>(&'a self, x: &'a [f64]) -> impl Iterator<Item = (f64, [f64; 3])> + 'a {
        (0..self.log_n.len()).map(move |i| {
            let u = [
                x[0] - x[3] * self.log_n[i],
                x[1] - x[4] * self.log_d[i],
                x[2],
            ];
            let max = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps = u.map(|ui| (ui - max).exp());
            let total: f64 = exps.iter().sum();
            let lse = max + total.ln();
            (lse - self.log_loss[i], exps.map(|e| e / total))
        })
    }
}

fn huber(r: f64, delta: f64) -> f64 {
    if r.abs() <= delta {
        0.5 * r * r
    } else {
        delta * (r.abs() - 0.5 * delta)
    }
}

fn huber_derivative(r: f64, delta: f64) -> f64 {
    r.clamp(-delta, delta)
}

impl CostFunction for &ChinchillaObjective {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.value(x))
    }
}

impl Gradient for &ChinchillaObjective {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, x: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(ChinchillaObjective::gradient(self, x))
    }
}

/// Starting points for L-BFGS: the Cartesian product of these coordinate values.
#[derive(Debug, Clone, PartialEq)]
pub struct StartGrid {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub e: Vec<f64>,
    pub alpha: Vec<f64>,
    pub beta: Vec<f64>,
}

impl StartGrid {
    /// The full grid of Hoffmann et al. / Besiroglu et al.: a, b ∈ {0, 5, …, 25},
    /// e ∈ {−1, −0.5, …, 1}, α, β ∈ {0, 0.5, …, 2}; 4500 starts.
    pub fn full() -> Self {
        Self {
            a: vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
            b: vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
            e: vec![-1.0, -0.5, 0.0, 0.5, 1.0],
            alpha: vec![0.0, 0.5, 1.0, 1.5, 2.0],
            beta: vec![0.0, 0.5, 1.0, 1.5, 2.0],
        }
    }

    /// A 3·3·3·2·2 = 108-start subsample of [`Self::full`], for quick fits and tests.
    pub fn coarse() -> Self {
        Self {
            a: vec![0.0, 10.0, 20.0],
            b: vec![0.0, 10.0, 20.0],
            e: vec![-1.0, 0.0, 1.0],
            alpha: vec![0.5, 1.5],
            beta: vec![0.5, 1.5],
        }
    }

    /// Every start, as `[a, b, e, α, β]`.
    pub fn points(&self) -> Vec<[f64; 5]> {
        let mut out = Vec::new();
        for &a in &self.a {
            for &b in &self.b {
                for &e in &self.e {
                    for &alpha in &self.alpha {
                        for &beta in &self.beta {
                            out.push([a, b, e, alpha, beta]);
                        }
                    }
                }
            }
        }
        out
    }
}

/// Settings of the approach-3 fit.
#[derive(Debug, Clone, PartialEq)]
pub struct ChinchillaConfig {
    /// Huber threshold δ on log-loss residuals (1e-3 as in Hoffmann et al.).
    pub huber_delta: f64,
    pub grid: StartGrid,
    /// L-BFGS iteration cap per start.
    pub max_iters: u64,
    pub bootstrap: BootstrapConfig,
    /// Besides the full fit's optimum, each bootstrap refit also starts from this many
    /// of the grid starts that ended best in the full fit.
    pub bootstrap_grid_starts: usize,
}

impl Default for ChinchillaConfig {
    fn default() -> Self {
        Self {
            huber_delta: 1e-3,
            grid: StartGrid::full(),
            max_iters: 500,
            bootstrap: BootstrapConfig::default(),
            bootstrap_grid_starts: 4,
        }
    }
}

/// Why approach 3 produced no fit.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
pub enum FitError {
    #[error("need at least {needed} runs with distinct (N, D) to fit 5 parameters, got {got}")]
    TooFewRuns { needed: usize, got: usize },
    #[error("no L-BFGS start reached a finite objective")]
    NoConvergence,
}

/// 5th–95th percentile bootstrap intervals of the fitted constants.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChinchillaIntervals {
    pub e: Option<Interval>,
    pub a: Option<Interval>,
    pub b: Option<Interval>,
    pub alpha: Option<Interval>,
    pub beta: Option<Interval>,
}

/// The result of [`fit_chinchilla`].
#[derive(Debug, Clone, Serialize)]
pub struct ChinchillaFit {
    pub params: ChinchillaParams,
    /// Objective value at `params`.
    pub objective: f64,
    pub n_runs: usize,
    /// Fits to the bootstrap resamples (empty when the bootstrap is off).
    #[serde(skip)]
    pub bootstrap_samples: Vec<ChinchillaParams>,
    pub intervals: Option<ChinchillaIntervals>,
}

impl ChinchillaFit {
    /// Allocation and tokens-per-parameter ratio at `flops`, intervals from the bootstrap fits.
    pub fn compute_optimal(&self, flops: f64) -> ComputeOptimal {
        let samples: Vec<(f64, f64)> = self
            .bootstrap_samples
            .iter()
            .map(|p| p.optimal_allocation(flops))
            .collect();
        let loss = self.params.optimal_loss(flops);
        ComputeOptimal::new(
            flops,
            self.params.optimal_allocation(flops),
            Some(loss),
            &samples,
        )
    }
}

/// Fits the parametric law to `runs` and bootstraps intervals as configured.
pub fn fit_chinchilla(
    runs: &[RunResult],
    config: &ChinchillaConfig,
) -> Result<ChinchillaFit, FitError> {
    let mut distinct: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r.n_params.to_bits(), r.tokens.to_bits()))
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return Err(FitError::TooFewRuns {
            needed: 5,
            got: distinct.len(),
        });
    }

    let objective = ChinchillaObjective::new(runs, config.huber_delta);
    let starts = config.grid.points();
    let ends: Vec<Option<(Vec<f64>, f64)>> = starts
        .par_iter()
        .map(|s| minimise(&objective, s.to_vec(), config.max_iters))
        .collect();
    let (best_x, best_value) = ends
        .iter()
        .flatten()
        .min_by(|p, q| p.1.total_cmp(&q.1))
        .cloned()
        .ok_or(FitError::NoConvergence)?;

    // Bootstrap refits start from the optimum and from the grid starts that ended best.
    let mut ranked: Vec<(usize, f64)> = ends
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.1)))
        .collect();
    ranked.sort_by(|p, q| p.1.total_cmp(&q.1));
    let mut refit_starts = vec![best_x.clone()];
    refit_starts.extend(
        ranked
            .iter()
            .take(config.bootstrap_grid_starts)
            .map(|&(i, _)| starts[i].to_vec()),
    );

    let bootstrap_samples = bootstrap(runs, config, &refit_starts);
    let intervals = (!bootstrap_samples.is_empty()).then(|| {
        let ci = |f: fn(&ChinchillaParams) -> f64| {
            Interval::from_samples(bootstrap_samples.iter().map(f))
        };
        ChinchillaIntervals {
            e: ci(|p| p.e),
            a: ci(|p| p.a),
            b: ci(|p| p.b),
            alpha: ci(|p| p.alpha),
            beta: ci(|p| p.beta),
        }
    });
    Ok(ChinchillaFit {
        params: ChinchillaParams::from_log_vector(&best_x),
        objective: best_value,
        n_runs: runs.len(),
        bootstrap_samples,
        intervals,
    })
}

/// Refits on `config.bootstrap.resamples` resamples of the runs, each from `starts`.
fn bootstrap(
    runs: &[RunResult],
    config: &ChinchillaConfig,
    starts: &[Vec<f64>],
) -> Vec<ChinchillaParams> {
    // Draw every resample up front so the result does not depend on thread scheduling.
    let mut rng = config.bootstrap.rng();
    let resamples: Vec<Vec<RunResult>> = (0..config.bootstrap.resamples)
        .map(|_| resample(runs, &mut rng))
        .collect();
    resamples
        .par_iter()
        .filter_map(|sample| {
            let objective = ChinchillaObjective::new(sample, config.huber_delta);
            starts
                .iter()
                .filter_map(|s| minimise(&objective, s.clone(), config.max_iters))
                .min_by(|p, q| p.1.total_cmp(&q.1))
                .map(|(x, _)| ChinchillaParams::from_log_vector(&x))
        })
        .collect()
}

/// One L-BFGS run (More–Thuente line search); `None` if it never reached a finite value.
fn minimise(
    objective: &ChinchillaObjective,
    start: Vec<f64>,
    max_iters: u64,
) -> Option<(Vec<f64>, f64)> {
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10);
    let result = Executor::new(objective, solver)
        .configure(|state| state.param(start).max_iters(max_iters))
        .timer(false)
        .run()
        .ok()?;
    let state = result.state();
    let x = state.get_best_param()?.clone();
    let value = state.get_best_cost();
    value.is_finite().then_some((x, value))
}
