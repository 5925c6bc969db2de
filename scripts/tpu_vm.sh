#!/usr/bin/env bash
# Run main.py on every worker of a TPU VM pod slice; jax.distributed discovers the pod by itself (--distributed).
#   scripts/tpu_vm.sh TPU_NAME ZONE --config=configs/llama1b.py --workdir=gs://BUCKET/runs/x
# Assumes the repo is checked out at ~/ringlm on every worker and `make setup` was run there (e.g. with the same
# command through --command='cd ringlm && make setup').
set -euo pipefail
name=${1:?usage: scripts/tpu_vm.sh TPU_NAME ZONE [main.py flags ...]}
zone=${2:?usage: scripts/tpu_vm.sh TPU_NAME ZONE [main.py flags ...]}
shift 2
printf -v args '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
  --command="cd ~/ringlm && .venv/bin/python main.py --distributed ${args}"
