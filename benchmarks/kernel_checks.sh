# Sourced by benchmarks/gpu_check.sh and benchmarks/tpu_check.sh: the step runner and the checks both devices run.
# Needs $OUT (the output folder) and $PY (the interpreter); run from the repository root.

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/log.txt, keep going on failure
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit}s)" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
  echo "=== $name: rc=${PIPESTATUS[0]} in $((SECONDS - start))s" | tee -a "$OUT/log.txt"
}

# The pure-JAX blockwise kernel against the platform's fused one (model.attention_kernel=jax|pallas): causal
# fwd+bwd, 8 heads of 64, bfloat16, 512-blocks, at 4K-32K tokens; then the whole train step of a llama1b-shaped
# model (configs/llama1b.py's widths, 4 of its 20 layers, 4K context, remat) with each kernel: tokens/s and the
# fraction of a bfloat16 matmul's peak measured in the same process.
kernel_checks() {
  local kernel
  for kernel in jax pallas; do
    step "attention_$kernel" 60 "$PY" benchmarks/attention.py --dtype=bfloat16 --q_block=512 --kv_block=512 \
      --run_cap_gb=60 --paths=blockwise --kernel="$kernel" --seq_lens=4096,8192,16384,32768 --runs=3 \
      | grep '^{' >>"$OUT/attention.jsonl"
  done
  for kernel in jax pallas; do
    step "train_step_$kernel" 75 "$PY" benchmarks/train_step.py --kernel="$kernel" --dtype=bfloat16 --remat \
      --num_layers=4 --d_model=2048 --num_heads=16 --num_kv_heads=8 --d_ff=5632 --vocab_size=32000 --seq_len=4096 \
      --batch="${TRAIN_BATCH:-8}" --block=512 --steps=5 | grep '^{' >>"$OUT/train_step.jsonl"
  done
}
