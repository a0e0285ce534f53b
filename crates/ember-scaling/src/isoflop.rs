//! Approach 2 of Hoffmann et al. (2022): isoFLOP profiles.
//!
//! Runs that share a compute budget trace loss against model size; a parabola in log N
//! locates the loss-minimising size N* for that budget, and power laws through the
//! per-budget minima give how N* and D* = C/(6N*) grow with compute.

use rayon::prelude::*;
use serde::Serialize;

use crate::bootstrap::{resample, BootstrapConfig, Interval};
use crate::data::RunResult;
use crate::lsq::polyfit;
use crate::optimal::ComputeOptimal;

/// Settings of the isoFLOP analysis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IsoFlopConfig {
    /// Runs without a `budget` label share a budget when their FLOPs are within this
    /// relative distance of the smallest run in the group. 0.15 leaves room for rounded
    /// N and D while keeping the usual ×1.5–×3 budget spacing apart.
    pub flops_rel_tol: f64,
    pub bootstrap: BootstrapConfig,
}

impl Default for IsoFlopConfig {
    fn default() -> Self {
        Self {
            flops_rel_tol: 0.15,
            bootstrap: BootstrapConfig::default(),
        }
    }
}

/// `loss = a·x² + b·x + c` with `x = ln N`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Parabola {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl Parabola {
    pub fn eval(&self, ln_n: f64) -> f64 {
        (self.a * ln_n + self.b) * ln_n + self.c
    }
}

/// The loss-minimising allocation of one budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IsoFlopMinimum {
    pub n_opt: f64,
    pub d_opt: f64,
    /// Parabola value at the minimum.
    pub loss: f64,
}

/// Why a budget yields no minimum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, thiserror::Error)]
pub enum SkipReason {
    #[error("only {distinct} distinct model size(s); a parabola needs at least 3")]
    TooFewSizes { distinct: usize },
    #[error("the fitted parabola opens downwards or is flat (curvature {curvature:.3e}), so there is no interior minimum")]
    NoInteriorMinimum { curvature: f64 },
    /// The vertex is an extrapolation: the sizes sampled do not bracket it.
    #[error("the fitted parabola's minimum (N = {n_opt:.3e}) lies outside the sizes trained ({smallest:.3e} to {largest:.3e}), so it is an extrapolation")]
    MinimumOutsideSizes { n_opt: f64, smallest: f64, largest: f64 },
}

/// One compute budget: its runs, the fitted parabola and the minimum (or why there is none).
#[derive(Debug, Clone, Serialize)]
pub struct BudgetFit {
    /// The budget's compute: its label, or the geometric mean of its runs' FLOPs.
    pub flops: f64,
    #[serde(skip)]
    pub runs: Vec<RunResult>,
    pub parabola: Option<Parabola>,
    pub minimum: Result<IsoFlopMinimum, SkipReason>,
}

/// `y = coefficient · x^exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PowerLaw {
    pub coefficient: f64,
    pub exponent: f64,
}

impl PowerLaw {
    pub fn eval(&self, x: f64) -> f64 {
        self.coefficient * x.powf(self.exponent)
    }

    /// Least squares in log-log space; `None` with fewer than two distinct x.
    pub fn fit(xs: &[f64], ys: &[f64]) -> Option<Self> {
        let lx: Vec<f64> = xs.iter().map(|x| x.ln()).collect();
        let ly: Vec<f64> = ys.iter().map(|y| y.ln()).collect();
        let c = polyfit(&lx, &ly, 1)?;
        Some(Self {
            coefficient: c[0].exp(),
            exponent: c[1],
        })
    }
}

/// Bootstrap intervals of the power-law constants.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IsoFlopIntervals {
    pub n_exponent: Option<Interval>,
    pub n_coefficient: Option<Interval>,
    pub d_exponent: Option<Interval>,
    pub d_coefficient: Option<Interval>,
}

/// The result of [`fit_isoflop`].
#[derive(Debug, Clone, Serialize)]
pub struct IsoFlopFit {
    pub budgets: Vec<BudgetFit>,
    /// `N*(C) = k_N C^{a_N}`; `None` with fewer than two budgets that have a minimum.
    pub n_law: Option<PowerLaw>,
    /// `D*(C) = k_D C^{a_D}`.
    pub d_law: Option<PowerLaw>,
    /// `(N law, D law)` fitted to each bootstrap resample.
    #[serde(skip)]
    pub bootstrap_laws: Vec<(PowerLaw, PowerLaw)>,
    pub intervals: Option<IsoFlopIntervals>,
}

impl IsoFlopFit {
    /// `(budget FLOPs, minimum)` of every budget that has one.
    pub fn minima(&self) -> impl Iterator<Item = (f64, &IsoFlopMinimum)> {
        self.budgets
            .iter()
            .filter_map(|b| b.minimum.as_ref().ok().map(|m| (b.flops, m)))
    }

    /// N*, D* and their ratio from the power laws at `flops`; `None` without laws.
    pub fn compute_optimal(&self, flops: f64) -> Option<ComputeOptimal> {
        let (n_law, d_law) = (self.n_law?, self.d_law?);
        let samples: Vec<(f64, f64)> = self
            .bootstrap_laws
            .iter()
            .map(|(n, d)| (n.eval(flops), d.eval(flops)))
            .collect();
        Some(ComputeOptimal::new(
            flops,
            (n_law.eval(flops), d_law.eval(flops)),
            None,
            &samples,
        ))
    }
}

/// Splits runs into compute budgets: by `budget` label where present, otherwise by
/// FLOPs within `rel_tol` of the group's smallest run. Returns `(budget FLOPs, runs)`
/// sorted by FLOPs.
pub fn group_budgets(runs: &[RunResult], rel_tol: f64) -> Vec<(f64, Vec<RunResult>)> {
    let mut groups: Vec<(f64, Vec<RunResult>)> = Vec::new();
    let (labelled, mut unlabelled): (Vec<&RunResult>, Vec<&RunResult>) =
        runs.iter().partition(|r| r.budget.is_some());
    for run in labelled {
        let budget = run.budget.expect("partitioned on budget");
        match groups.iter_mut().find(|(c, _)| *c == budget) {
            Some((_, members)) => members.push(run.clone()),
            None => groups.push((budget, vec![run.clone()])),
        }
    }
    unlabelled.sort_by(|p, q| p.flops.total_cmp(&q.flops));
    let mut current: Vec<RunResult> = Vec::new();
    for run in unlabelled {
        if current
            .first()
            .is_some_and(|first| run.flops > first.flops * (1.0 + rel_tol))
        {
            groups.push((geometric_mean_flops(&current), std::mem::take(&mut current)));
        }
        current.push(run.clone());
    }
    if !current.is_empty() {
        groups.push((geometric_mean_flops(&current), current));
    }
    groups.sort_by(|p, q| p.0.total_cmp(&q.0));
    groups
}

fn geometric_mean_flops(runs: &[RunResult]) -> f64 {
    (runs.iter().map(|r| r.flops.ln()).sum::<f64>() / runs.len() as f64).exp()
}

/// Fits `loss` against `ln N` for one budget and locates the minimum.
pub fn fit_budget(flops: f64, runs: Vec<RunResult>) -> BudgetFit {
    let xs: Vec<f64> = runs.iter().map(|r| r.n_params.ln()).collect();
    let ys: Vec<f64> = runs.iter().map(|r| r.loss).collect();
    let mut sizes = xs.clone();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let parabola = (sizes.len() >= 3)
        .then(|| polyfit(&xs, &ys, 2))
        .flatten()
        .map(|c| Parabola {
            a: c[2],
            b: c[1],
            c: c[0],
        });
    let minimum = match parabola {
        None => Err(SkipReason::TooFewSizes {
            distinct: sizes.len(),
        }),
        Some(p) if p.a <= 0.0 => Err(SkipReason::NoInteriorMinimum { curvature: p.a }),
        Some(p) if !(sizes[0]..=sizes[sizes.len() - 1]).contains(&(-p.b / (2.0 * p.a))) => Err(SkipReason::MinimumOutsideSizes {
            n_opt: (-p.b / (2.0 * p.a)).exp(),
            smallest: sizes[0].exp(),
            largest: sizes[sizes.len() - 1].exp(),
        }),
        Some(p) => {
            let ln_n = -p.b / (2.0 * p.a);
            let n_opt = ln_n.exp();
            Ok(IsoFlopMinimum {
                n_opt,
                d_opt: flops / (6.0 * n_opt),
                loss: p.eval(ln_n),
            })
        }
    };
    BudgetFit {
        flops,
        runs,
        parabola,
        minimum,
    }
}

/// Power laws for N* and D* through the budgets' minima.
fn fit_laws(budgets: &[BudgetFit]) -> Option<(PowerLaw, PowerLaw)> {
    let (mut c, mut n, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for budget in budgets {
        if let Ok(m) = &budget.minimum {
            c.push(budget.flops);
            n.push(m.n_opt);
            d.push(m.d_opt);
        }
    }
    Some((PowerLaw::fit(&c, &n)?, PowerLaw::fit(&c, &d)?))
}

/// Runs approach 2 on `runs`, with bootstrap intervals from resampling runs within budgets.
pub fn fit_isoflop(runs: &[RunResult], config: &IsoFlopConfig) -> IsoFlopFit {
    let budgets: Vec<BudgetFit> = group_budgets(runs, config.flops_rel_tol)
        .into_iter()
        .map(|(flops, members)| fit_budget(flops, members))
        .collect();
    let laws = fit_laws(&budgets);

    let mut rng = config.bootstrap.rng();
    let resamples: Vec<Vec<(f64, Vec<RunResult>)>> = if laws.is_some() {
        (0..config.bootstrap.resamples)
            .map(|_| {
                budgets
                    .iter()
                    .map(|b| (b.flops, resample(&b.runs, &mut rng)))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let bootstrap_laws: Vec<(PowerLaw, PowerLaw)> = resamples
        .into_par_iter()
        .filter_map(|sample| {
            let refits: Vec<BudgetFit> = sample
                .into_iter()
                .map(|(flops, members)| fit_budget(flops, members))
                .collect();
            fit_laws(&refits)
        })
        .collect();
    let intervals = (!bootstrap_laws.is_empty()).then(|| {
        let ci = |f: fn(&(PowerLaw, PowerLaw)) -> f64| {
            Interval::from_samples(bootstrap_laws.iter().map(f))
        };
        IsoFlopIntervals {
            n_exponent: ci(|l| l.0.exponent),
            n_coefficient: ci(|l| l.0.coefficient),
            d_exponent: ci(|l| l.1.exponent),
            d_coefficient: ci(|l| l.1.coefficient),
        }
    });
    IsoFlopFit {
        budgets,
        n_law: laws.map(|l| l.0),
        d_law: laws.map(|l| l.1),
        bootstrap_laws,
        intervals,
    }
}
