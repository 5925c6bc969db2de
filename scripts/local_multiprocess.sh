#!/usr/bin/env bash
# Run NUM_PROCESSES CPU processes of main.py on this machine, joined by jax.distributed over loopback (gloo
# collectives), each with RINGLM_LOCAL_DEVICES fake CPU devices (default 2). Every process gets the same flags.
#   scripts/local_multiprocess.sh 2 --config=configs/tiny.py --workdir=runs/mp --config.train.steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
num=${1:?usage: scripts/local_multiprocess.sh NUM_PROCESSES [main.py flags ...]}
shift
port=${RINGLM_PORT:-$((20000 + RANDOM % 20000))}
devices=${RINGLM_LOCAL_DEVICES:-2}
python=${PYTHON:-.venv/bin/python}
pids=()
for ((i = 0; i < num; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
    "$python" main.py --coordinator_address="127.0.0.1:${port}" --num_processes="$num" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
