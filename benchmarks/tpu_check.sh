#!/usr/bin/env bash
# One prepared device check on a TPU VM (one host; after `make setup ACCEL=tpu`; its steps' limits add up to 9.25
# minutes): attention equivalence tests on the TPU, then the pure-JAX against the fused (splash) attention kernel at
# 4K-32K and in a llama1b-shaped train step (benchmarks/kernel_checks.sh), and ring attention over every chip with
# pure-JAX against splash hops. Results go to $OUT.
#   OUT=/tmp/tpu_check bash benchmarks/tpu_check.sh
set -uo pipefail

OUT=${OUT:-/tmp/tpu_check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=tpu TF_CPP_MIN_LOG_LEVEL=2

source benchmarks/kernel_checks.sh

step devices 60 "$PY" -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())'

# Every attention path against the [S, S]-mask reference, on the TPU, at full float32 matmul precision so the CPU
# tolerances hold (the ring's tests assume 8 fake CPU devices: they stay CPU tests).
JAX_DEFAULT_MATMUL_PRECISION=highest step attention_tests 120 \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_attention.py

TRAIN_BATCH=$("$PY" -c 'import jax; print(2 * jax.device_count())') kernel_checks

# Ring attention over all the host's chips (zig-zag layout, causal, bfloat16): pure-JAX hops against splash hops.
for kernel in jax pallas; do
  step "ring_$kernel" 60 "$PY" benchmarks/attention.py --dtype=bfloat16 --q_block=512 --kv_block=512 --paths=ring \
    --kernel="$kernel" --seq_lens=32768,131072 --runs=3 --run_cap_gb=12 | grep '^{' >>"$OUT/attention.jsonl"
done
