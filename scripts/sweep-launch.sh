#!/usr/bin/env bash
# Launch a scaling sweep: print its plan, then run it here, or on a Slurm cluster.
#
#   scripts/sweep-launch.sh recipes/sweeps/tiny-chinchilla.toml                # here, 2 runs at once
#   JOBS=4 DEVICE=cuda scripts/sweep-launch.sh my-sweep.toml                    # 4 at once on a GPU
#   SLURM=1 scripts/sweep-launch.sh my-sweep.toml --sbatch "--gres=gpu:1"       # write + sbatch a job array
#
# Finished runs are skipped and interrupted ones resumed, so it is safe to launch again. Extra
# arguments go to `ember sweep`. Then: scripts/sweep-collect.sh and scripts/sweep-fit.sh (a local
# run already collects and fits at its end). EMBER=path/to/ember picks the binary.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 SWEEP.toml [ember sweep options]" >&2; exit 2; }
source "$(dirname "$0")/ember-bin.sh"
recipe="$1"; shift
"$ember" sweep --recipe "$recipe" --plan --device "${DEVICE:-auto}"
if [ -n "${SLURM:-}" ]; then
  script="${SCRIPT:-$(mktemp --suffix=.slurm)}"
  "$ember" sweep --recipe "$recipe" --emit slurm --script "$script" --device "${DEVICE:-auto}" "$@"
  sbatch "$script"
else
  "$ember" sweep --recipe "$recipe" --jobs "${JOBS:-2}" --device "${DEVICE:-auto}" "$@"
fi
