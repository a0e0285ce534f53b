#!/usr/bin/env bash
# Fit scaling laws (Chinchilla approach 3 and isoFLOP approach 2, bootstrap intervals) to a
# sweep's results and write plots and report.md. Collects first, so the table is current.
#
#   scripts/sweep-fit.sh recipes/sweeps/tiny-chinchilla.toml
#   scripts/sweep-fit.sh --results my-results.csv --out my-report     # any table of runs
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 SWEEP.toml | --results FILE [--out DIR]" >&2; exit 2; }
source "$(dirname "$0")/ember-bin.sh"
if [ "$1" = "--results" ]; then
  "$ember" sweep fit "$@"
else
  "$ember" sweep collect --recipe "$1"
  "$ember" sweep fit --recipe "$1" "${@:2}"
fi
