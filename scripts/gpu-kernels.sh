#!/usr/bin/env bash
# The GPU checks of the kernels issue, as one script for a lent NVIDIA machine (no Rust there):
# build here with
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p ember-cli --features cuda
# carry the binary (and ../shared/fixtures), then run
#   EMBER=path/to/ember FIXTURES=path/to/fixtures bash scripts/gpu-kernels.sh OUT_DIR
# It writes conformance reports and benchmark JSONL under OUT_DIR for docs/BENCHMARKS.md.
set -euo pipefail
out="${1:?usage: gpu-kernels.sh OUT_DIR}"
ember="${EMBER:?set EMBER to a --features cuda ember binary}"
fixtures="${FIXTURES:?set FIXTURES to the shared fixtures directory}"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" || true

# 1. Conformance of the composed and kernel paths on CUDA, f32 and bf16.
for dtype in f32 bf16; do
  "$ember" conformance --fixtures "$fixtures" --device cuda --dtype "$dtype" | tee "$out/conformance-$dtype.txt"
done

# 2. bf16 against f32 matmul: Burn's fixed kernel (the old default) and the autotuned one.
"$ember" bench matmul --device cuda --size 4096,8192 --dtype f32,bf16 | tee "$out/matmul.txt"

# 3. The chunked ops, composed and on the kernels, at fla's 65,536 tokens per call. One run per
#    T: after a point fails on the device (a composed form out of memory), bench ops reports the
#    rest of its run as not run, so a failure at one T does not cost the others.
for t in 1024 2048 4096 8192 16384 32768; do
  "$ember" bench ops --level op --grid fla --seq "$t" --form chunked --compare --dtype bf16 --device cuda \
    --kinds linear_attention,gla,decay_per_head,based_taylor --json "$out/ops-compare-$t.jsonl" \
    | tee "$out/ops-compare-$t.txt"
done

# 3b. The same kernels in bf16 without tensor cores (f32 FMAs), against step 3's "kernels-tc" rows.
for t in 1024 8192 32768; do
  EMBER_TENSOR_CORES=off "$ember" bench ops --level op --grid fla --seq "$t" --form chunked --kernels on --dtype bf16 \
    --device cuda --kinds linear_attention,gla,decay_per_head,based_taylor --json "$out/ops-fma-$t.jsonl" \
    | tee "$out/ops-fma-$t.txt"
done

# 4. Training tokens/s and MFU of the models the issue names, bf16, with the kernels as "auto"
#    chooses and with every chunked form on them (run from the repository root: the recipes'
#    data paths are relative to it).
for recipe in based-360m gla-340m; do
  for kernels in auto on; do
    "$ember" bench train --recipe "$recipe.toml" --device cuda --dtype bf16 --steps 10 --warmup 3 \
      --set "train.kernels=\"$kernels\"" --json "$out/train-$recipe-kernels-$kernels.jsonl" \
      | tee "$out/train-$recipe-kernels-$kernels.txt"
  done
done
