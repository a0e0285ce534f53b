//! Scaling-law fitting for training sweeps.
//!
//! A sweep is a table of [`RunResult`]s (model size N, tokens D, compute C, final loss L).
//! [`analyse`] fits, per architecture, the Chinchilla parametric law (approach 3,
//! [`fit_chinchilla`]) and isoFLOP profiles (approach 2, [`fit_isoflop`]), both with
//! bootstrap intervals; [`write_report`] turns the result into plots and `report.md`.
//!
//! ```no_run
//! use ember_scaling::{analyse, load_runs, write_report, AnalysisConfig};
//! let runs = load_runs("sweep.csv".as_ref())?;
//! let analyses = analyse(&runs, &AnalysisConfig::default());
//! let written = write_report("scaling-report".as_ref(), &analyses)?;
//! # Ok::<(), anyhow::Error>(())
//! ```

mod analysis;
mod bootstrap;
mod chinchilla;
mod data;
mod isoflop;
mod lsq;
mod optimal;
mod plot;
mod report;

pub use analysis::{analyse, AnalysisConfig, ArchAnalysis};
pub use bootstrap::{BootstrapConfig, Interval};
pub use chinchilla::{
    fit_chinchilla, ChinchillaConfig, ChinchillaFit, ChinchillaIntervals, ChinchillaObjective,
    ChinchillaParams, FitError, StartGrid,
};
pub use data::{load_csv, load_jsonl, load_runs, write_csv, write_jsonl, DataError, RunResult};
pub use isoflop::{
    fit_budget, fit_isoflop, group_budgets, BudgetFit, IsoFlopConfig, IsoFlopFit, IsoFlopIntervals,
    IsoFlopMinimum, Parabola, PowerLaw, SkipReason,
};
pub use lsq::polyfit;
pub use optimal::ComputeOptimal;
pub use plot::{
    plot_isoflop_curves, plot_lines, plot_loss_vs_compute, plot_optimal_allocation, write_plots, Line, PlotFiles,
};
pub use report::write_report;
