#!/usr/bin/env bash
# Gather a sweep's run directories (e.g. after a Slurm job array) into results.csv,
# results.jsonl and evals.csv in its output directory.
#
#   scripts/sweep-collect.sh recipes/sweeps/tiny-chinchilla.toml
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 SWEEP.toml" >&2; exit 2; }
source "$(dirname "$0")/ember-bin.sh"
"$ember" sweep collect --recipe "$1"
