//! Both approaches run per architecture: the entry point a `sweep fit` command calls.

use serde::Serialize;

use crate::chinchilla::{fit_chinchilla, ChinchillaConfig, ChinchillaFit, FitError};
use crate::data::RunResult;
use crate::isoflop::{fit_isoflop, IsoFlopConfig, IsoFlopFit};

/// Settings for [`analyse`].
#[derive(Debug, Clone, Default)]
pub struct AnalysisConfig {
    pub chinchilla: ChinchillaConfig,
    pub isoflop: IsoFlopConfig,
    /// Compute budgets at which to tabulate the compute-optimal allocation; by default
    /// every power of ten from the smallest run's FLOPs up to 100× the largest.
    pub report_flops: Option<Vec<f64>>,
}

/// Approaches 2 and 3 fitted to the runs of one architecture.
#[derive(Debug, Clone, Serialize)]
pub struct ArchAnalysis {
    /// Architecture label as given in the runs (possibly empty).
    pub arch: String,
    pub runs: Vec<RunResult>,
    pub chinchilla: Result<ChinchillaFit, FitError>,
    pub isoflop: IsoFlopFit,
    /// Budgets at which reports tabulate the compute-optimal allocation.
    pub report_flops: Vec<f64>,
}

impl ArchAnalysis {
    /// Label for titles: the architecture, or "all runs" when unlabelled.
    pub fn title(&self) -> &str {
        if self.arch.is_empty() {
            "all runs"
        } else {
            &self.arch
        }
    }

    /// File-name-safe form of the architecture label.
    pub fn slug(&self) -> String {
        self.title()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Smallest and largest FLOPs among the runs.
    pub fn flops_range(&self) -> (f64, f64) {
        let flops = self.runs.iter().map(|r| r.flops);
        (
            flops.clone().fold(f64::INFINITY, f64::min),
            flops.fold(0.0, f64::max),
        )
    }
}

/// Fits both approaches separately for each architecture label, in order of first appearance.
pub fn analyse(runs: &[RunResult], config: &AnalysisConfig) -> Vec<ArchAnalysis> {
    let mut archs: Vec<&str> = Vec::new();
    for run in runs {
        if !archs.contains(&run.arch.as_str()) {
            archs.push(&run.arch);
        }
    }
    archs
        .into_iter()
        .map(|arch| {
            let runs: Vec<RunResult> = runs.iter().filter(|r| r.arch == arch).cloned().collect();
            let mut analysis = ArchAnalysis {
                arch: arch.to_owned(),
                chinchilla: fit_chinchilla(&runs, &config.chinchilla),
                isoflop: fit_isoflop(&runs, &config.isoflop),
                runs,
                report_flops: Vec::new(),
            };
            analysis.report_flops = config.report_flops.clone().unwrap_or_else(|| {
                let (lo, hi) = analysis.flops_range();
                decades(lo, hi * 100.0)
            });
            analysis
        })
        .collect()
}

/// The powers of ten within `lo..=hi`.
fn decades(lo: f64, hi: f64) -> Vec<f64> {
    let (first, last) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
    (first..=last).map(|k| 10f64.powi(k)).collect()
}
