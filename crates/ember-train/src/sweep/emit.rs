//! Scripts that run a sweep elsewhere: a Slurm job array (one task per run) or a plain shell
//! script (one run after another). Each run trains from its recipe under `<out>/recipes/`, or
//! resumes from its run directory when a checkpoint is already there, so a requeued or
//! restarted script continues where it stopped; collect and fit afterwards with
//! `ember sweep collect` / `ember sweep fit`.
use super::{PlannedRun, Sweep};
use std::fmt::Write as _;
use std::path::Path;

/// Which script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    Slurm,
    Shell,
}

impl std::str::FromStr for Emit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "slurm" => Ok(Emit::Slurm),
            "shell" => Ok(Emit::Shell),
            other => Err(format!("unknown script kind {other:?} (known: slurm, shell)")),
        }
    }
}

/// Single-quotes `s` for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script text. `workdir` is where the paths in the sweep are relative to (the directory
/// `ember sweep` ran in); `sbatch` lines are added verbatim as `#SBATCH` options.
pub fn script(kind: Emit, sweep: &Sweep, runs: &[PlannedRun], workdir: &Path, sbatch: &[String]) -> String {
    let name = &sweep.config.name;
    let out = sweep.out_dir.display().to_string();
    let mut s = String::from("#!/usr/bin/env bash\n");
    let _ = writeln!(s, "# Sweep {name}: {} runs, written by `ember sweep --recipe {} --emit {}`.", runs.len(), sweep.path.display(), match kind {
        Emit::Slurm => "slurm",
        Emit::Shell => "shell",
    });
    if kind == Emit::Slurm {
        let _ = writeln!(s, "#SBATCH --job-name=ember-{name}");
        let _ = writeln!(s, "#SBATCH --array=0-{}", runs.len().saturating_sub(1));
        let _ = writeln!(s, "#SBATCH --output={out}/slurm/%x-%A_%a.out");
        for line in sbatch {
            let _ = writeln!(s, "#SBATCH {line}");
        }
    }
    s.push_str("# EMBER names the ember binary (default: the one on PATH).\nset -euo pipefail\n");
    let _ = writeln!(s, "cd {}", quote(&workdir.display().to_string()));
    s.push_str("EMBER=\"${EMBER:-ember}\"\n");
    let _ = writeln!(s, "OUT={}", quote(&out));
    s.push_str("RUNS=(\n");
    for run in runs {
        let _ = writeln!(s, "  {}", quote(&run.name));
    }
    s.push_str(")\n\n");
    s.push_str(
        "run_one() {\n  \
           local run=\"$1\" dir=\"$OUT/runs/$1\"\n  \
           if compgen -G \"$dir/checkpoints/step-*\" > /dev/null; then\n    \
             \"$EMBER\" train --resume \"$dir\" --quiet\n  \
           else\n    \
             \"$EMBER\" train --recipe \"$OUT/recipes/$run.toml\" --quiet\n  \
           fi\n}\n\n",
    );
    match kind {
        Emit::Slurm => s.push_str("run_one \"${RUNS[$SLURM_ARRAY_TASK_ID]}\"\n"),
        Emit::Shell => s.push_str("for run in \"${RUNS[@]}\"; do\n  run_one \"$run\"\ndone\n"),
    }
    s
}
