#!/usr/bin/env bash
# One prepared device check on a lent NVIDIA GPU (sized for an H200: its steps' limits add up to 8.25 minutes):
# attention equivalence tests on the GPU, the pure-JAX against the fused (Triton) attention kernel at 4K-32K and in a
# llama1b-shaped train step (benchmarks/kernel_checks.sh), then vanilla attention and one layer. Results go to $OUT.
#
# Run from the repository root; .whl/ holds the ml-collections wheel (models/transformer.py imports it, the device
# image lacks it). Nothing here imports data/ or tensorflow. See benchmarks/README.md for the exact call.
set -uo pipefail

OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda TF_CPP_MIN_LOG_LEVEL=2

if compgen -G '.whl/*.whl' >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

source benchmarks/kernel_checks.sh

step devices 30 "$PY" -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/log.txt"

# Every attention path against the [S, S]-mask reference, on the GPU. Full float32 matmuls (no TF32) so the
# CPU tolerances hold. Ring needs a sequence axis of several devices, which one GPU cannot form: it stays a CPU test.
JAX_DEFAULT_MATMUL_PRECISION=highest step attention_tests 90 \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_attention.py

kernel_checks  # attention and the llama1b-shaped train step, pure JAX against the Triton flash kernel

# Vanilla attention where its [S, S] logits leave room, for the memory the blockwise paths save; then one layer.
step attention_vanilla 45 "$PY" benchmarks/attention.py --dtype=bfloat16 --q_block=512 --kv_block=512 \
  --run_cap_gb=60 --paths=vanilla --seq_lens=8192,16384 --runs=3 | grep '^{' >>"$OUT/attention.jsonl"
step layer 60 "$PY" benchmarks/layer.py --dtype=bfloat16 --q_block=512 --kv_block=512 --ffn_block=1024 \
  --run_cap_gb=60 --seq_lens=8192,32768 --ffn_mults=4,16 --runs=3 | grep '^{' >"$OUT/layer.jsonl"
