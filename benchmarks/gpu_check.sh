#!/usr/bin/env bash
# One prepared device check on a lent NVIDIA GPU (sized for an H200, well under 8 minutes): attention equivalence
# tests on the GPU, then the attention and layer benchmarks in bfloat16 at long lengths. Results go to $OUT.
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

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/log.txt, keep going on failure
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit}s)" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
  echo "=== $name: rc=${PIPESTATUS[0]} in $((SECONDS - start))s" | tee -a "$OUT/log.txt"
}

step devices 45 "$PY" -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/log.txt"

# Every attention path against the [S, S]-mask reference, on the GPU. Full float32 matmuls (no TF32) so the
# CPU tolerances hold. Ring needs a sequence axis of several devices, which one GPU cannot form: it stays a CPU test.
JAX_DEFAULT_MATMUL_PRECISION=highest step attention_tests 100 \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_attention.py

# Causal fwd+bwd, 8 heads of 64, bfloat16, 512-blocks (fewer, larger blocks suit the GPU). Vanilla only where its
# [S, S] logits leave room; lengths whose temp memory is over --run_cap_gb are compiled, not run.
BENCH=(--dtype=bfloat16 --q_block=512 --kv_block=512 --run_cap_gb=80)
step attention_blockwise 120 "$PY" benchmarks/attention.py "${BENCH[@]}" --paths=blockwise \
  --seq_lens=8192,16384,32768,65536 --runs=3 | grep '^{' >"$OUT/attention.jsonl"
step attention_vanilla 60 "$PY" benchmarks/attention.py "${BENCH[@]}" --paths=vanilla \
  --seq_lens=8192,16384,32768 --runs=3 | grep '^{' >>"$OUT/attention.jsonl"
step attention_max_len 75 "$PY" benchmarks/attention.py "${BENCH[@]}" --paths=vanilla,blockwise --seq_lens=8192 \
  --runs=0 --memory_cap_gb=100 --max_search_len=262144 | grep '^{' >"$OUT/attention_max_len.jsonl"

step layer 90 "$PY" benchmarks/layer.py --dtype=bfloat16 --q_block=512 --kv_block=512 --ffn_block=1024 \
  --run_cap_gb=80 --seq_lens=8192,32768 --ffn_mults=4,16 --runs=3 | grep '^{' >"$OUT/layer.jsonl"
