//! Gathering a sweep's results from its run directories: the final validation loss of each run
//! (one table, `results.csv` / `results.jsonl`, the input of the fits) and every evaluation on
//! the way (`evals.csv`, loss against tokens and compute per run).
use super::{PlannedRun, Sweep};
use crate::checkpoint;
use crate::runs::read_state;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One run's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepResult {
    pub name: String,
    pub arch: String,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_params: usize,
    pub total_params: usize,
    /// Planned training tokens.
    pub tokens: f64,
    /// `6·N·D` with the planned tokens.
    pub flops: f64,
    pub budget: Option<f64>,
    pub lr: f64,
    /// Steps done so far, of `steps`.
    pub steps_done: usize,
    pub steps: usize,
    pub finished: bool,
    /// Validation loss at the last evaluation (the final one when `finished`).
    pub loss: Option<f64>,
}

/// One validation point of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalPoint {
    pub name: String,
    pub arch: String,
    pub n_params: usize,
    pub step: usize,
    pub tokens: f64,
    pub flops: f64,
    pub loss: f64,
}

/// The validation losses logged by a run, as `(step, loss)`; none if it has not evaluated yet.
pub fn read_evals(run_dir: &Path) -> Result<Vec<(usize, f64)>> {
    let path = run_dir.join("metrics.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let mut evals: Vec<(usize, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}, line {}: not JSON", path.display(), i + 1))?;
        if let (Some(step), Some(loss)) = (value["step"].as_u64(), value["valid/loss"].as_f64()) {
            // A resumed run logs the steps after its checkpoint again: the later line wins.
            evals.retain(|&(s, _)| s != step as usize);
            evals.push((step as usize, loss));
        }
    }
    evals.sort_by_key(|&(s, _)| s);
    Ok(evals)
}

/// The results of every planned run (finished or not) and all their evaluation points.
pub fn collect(runs: &[PlannedRun]) -> Result<(Vec<SweepResult>, Vec<EvalPoint>)> {
    let mut results = Vec::new();
    let mut points = Vec::new();
    for run in runs {
        let dir = &run.recipe.train.out_dir;
        let state = match checkpoint::list(&dir.join("checkpoints"))?.pop() {
            Some((_, ckpt)) => Some(read_state(&ckpt)?),
            None => None,
        };
        let steps = run.recipe.steps();
        // Evaluations past the newest checkpoint belong to an interrupted attempt that will be redone.
        let done = state.as_ref().map_or(0, |s| s.step);
        let evals: Vec<(usize, f64)> = read_evals(dir)?.into_iter().filter(|&(s, _)| s <= done).collect();
        let per_step = run.tokens / steps as f64;
        for &(step, loss) in &evals {
            let tokens = per_step * step as f64;
            points.push(EvalPoint {
                name: run.name.clone(),
                arch: run.arch.clone(),
                n_params: run.n_params,
                step,
                tokens,
                flops: 6.0 * run.n_params as f64 * tokens,
                loss,
            });
        }
        results.push(SweepResult {
            name: run.name.clone(),
            arch: run.arch.clone(),
            d_model: run.shape.d_model,
            n_layers: run.shape.n_layers,
            n_params: run.n_params,
            total_params: run.total_params,
            tokens: run.tokens,
            flops: run.flops,
            budget: run.budget,
            lr: run.lr,
            steps_done: done,
            steps,
            finished: state.as_ref().is_some_and(|s| s.finished),
            loss: evals.last().map(|&(_, l)| l),
        });
    }
    Ok((results, points))
}

/// Writes `results.csv`, `results.jsonl` and `evals.csv` into the sweep's output directory.
/// `results.csv` has the columns ember-scaling reads (`name, arch, n_params, tokens, flops,
/// loss`, and `budget`) and holds finished runs only; the JSONL has every run with its status.
pub fn write(sweep: &Sweep, results: &[SweepResult], points: &[EvalPoint]) -> Result<Vec<PathBuf>> {
    let out = &sweep.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut csv = String::from("name,arch,n_params,tokens,flops,loss,budget,total_params,d_model,n_layers,lr\n");
    for r in results.iter().filter(|r| r.finished) {
        let Some(loss) = r.loss else { continue };
        let budget = r.budget.map_or(String::new(), |b| format!("{b:e}"));
        let _ = writeln!(
            csv,
            "{},{},{},{:e},{:e},{loss},{budget},{},{},{},{:e}",
            r.name, r.arch, r.n_params, r.tokens, r.flops, r.total_params, r.d_model, r.n_layers, r.lr
        );
    }
    let mut evals = String::from("name,arch,n_params,step,tokens,flops,loss\n");
    for p in points {
        let _ = writeln!(evals, "{},{},{},{},{:e},{:e},{}", p.name, p.arch, p.n_params, p.step, p.tokens, p.flops, p.loss);
    }
    let jsonl: String = results.iter().map(|r| serde_json::to_string(r).expect("serializes") + "\n").collect();
    let files = [("results.csv", csv), ("results.jsonl", jsonl), ("evals.csv", evals)];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
