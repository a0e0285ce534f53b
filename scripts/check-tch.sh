#!/usr/bin/env bash
# The libtorch backend (`--device tch-cpu`), checked the way .ci/run checks cpu, flex and wgpu:
# the reference fixtures in f32 and bf16, the same tiny training curve as the CPU backend, and
# bf16 autodiff on LibTorch. Run from anywhere: `bash scripts/check-tch.sh`.
#
# It installs PyTorch from PyPI into a virtualenv (default ~/.cache/ember-torch) and builds
# ember's tests with `--features tch` against it (LIBTORCH_USE_PYTORCH=1). burn-tch 0.21 uses
# tch 0.22, which is made for PyTorch 2.9.0; TORCH_VERSION=2.x.y picks another one (tch's
# version check is then bypassed, and torch-sys must still compile against its headers).
#
# Not part of .ci/run: PyPI's Linux torch wheel is the CUDA build, and libtorch.so links the
# nvidia-* libraries even on a CPU, so the install is ~4 GB, plus another build of Burn.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}"
venv="${EMBER_TORCH_VENV:-$HOME/.cache/ember-torch}"
version="${TORCH_VERSION:-2.9.0}"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
  "$venv/bin/pip" install --quiet "torch==$version"
fi
if [ "$version" != "2.9.0" ]; then
  export LIBTORCH_BYPASS_VERSION_CHECK=1
fi
export LIBTORCH_USE_PYTORCH=1
export PATH="$venv/bin:$PATH"   # torch-sys asks `python3` where torch is
torch_lib="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "libtorch from PyTorch $version at $torch_lib"
cargo test -p ember-cli --features tch --test it backends:: -- --nocapture
