//! Running many recipes: bring each run to completion (train a new one, resume an interrupted
//! one, leave a finished one alone), several at a time. Used by the MQAR suite and sweeps.
use crate::checkpoint::{self, TrainerState, TRAINER_FILE};
use crate::recipe::Recipe;
use crate::trainer::{train, TrainOptions};
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What [`complete_run`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAction {
    Trained,
    Resumed,
    AlreadyFinished,
}

/// A finished run: its newest checkpoint and that checkpoint's trainer state.
#[derive(Clone, Debug)]
pub struct FinishedRun {
    pub checkpoint: PathBuf,
    pub state: TrainerState,
    pub action: RunAction,
}

/// Trains `recipe` into its `train.out_dir` unless a finished run is already there; resumes from
/// the newest checkpoint of an interrupted one.
pub fn complete_run<B: AutodiffBackend>(recipe: &Recipe, quiet: bool, device: &B::Device) -> Result<FinishedRun> {
    let run_dir = &recipe.train.out_dir;
    let newest = checkpoint::list(&run_dir.join("checkpoints"))?.pop().map(|(_, p)| p);
    let before = newest.as_deref().map(read_state).transpose()?;
    let action = match (&before, &newest) {
        (Some(state), _) if state.finished => RunAction::AlreadyFinished,
        (_, Some(_)) => RunAction::Resumed,
        _ => RunAction::Trained,
    };
    if action != RunAction::AlreadyFinished {
        let opts = TrainOptions { resume: newest, quiet, ..Default::default() };
        train::<B>(recipe, &opts, device).with_context(|| format!("training {}", recipe.source.path.display()))?;
    }
    let checkpoint = checkpoint::resolve(run_dir)?;
    let state = read_state(&checkpoint)?;
    Ok(FinishedRun { checkpoint, state, action })
}

/// The trainer state saved in a checkpoint directory.
pub fn read_state(ckpt: &Path) -> Result<TrainerState> {
    let path = ckpt.join(TRAINER_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a trainer state", path.display()))
}

/// `f` over `items` on `jobs` threads (at least one), results in the order of `items`. The first
/// error stops new items from starting and is returned once the running ones end.
pub fn parallel_map<T: Send, R: Send>(items: Vec<T>, jobs: usize, f: impl Fn(T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            scope.spawn(|| loop {
                if failed.lock().unwrap().is_some() {
                    return;
                }
                let Some((i, item)) = queue.lock().unwrap().next() else { return };
                match f(item) {
                    Ok(r) => results.lock().unwrap()[i] = Some(r),
                    Err(e) => {
                        failed.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap().into_iter().map(|r| r.expect("every item ran")).collect())
}
