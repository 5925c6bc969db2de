#!/usr/bin/env bash
# Run main.py on every worker of a TPU VM pod slice; jax.distributed discovers the pod by itself (--distributed).
#   scripts/tpu_vm.sh [--setup] TPU_NAME ZONE --config=configs/llama1b.py --workdir=gs://BUCKET/runs/x
# --setup first copies this checkout's tracked files (as they are in the work tree) to ~/ringlm on every worker and
# runs `make setup ACCEL=tpu` there (jax, libtpu and the rest at requirements-tpu.txt's pins; PYTHON=python3.11
# picks the interpreter: the pins need Python >= 3.11), so a fresh slice goes to training in one command. Without
# --setup the workers must already have ~/ringlm set up; without main.py flags nothing is launched.
set -euo pipefail
usage='usage: scripts/tpu_vm.sh [--setup] TPU_NAME ZONE [main.py flags ...]'
setup=false
if [[ ${1:-} == --setup ]]; then
  setup=true
  shift
fi
name=${1:?$usage}
zone=${2:?$usage}
shift 2
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"
}
if $setup; then
  archive=$(mktemp --suffix=.tar.gz)
  trap 'rm -f "$archive"' EXIT
  git -C "$(dirname "$0")/.." ls-files -z | tar -C "$(dirname "$0")/.." --null -T - -czf "$archive"
  gcloud compute tpus tpu-vm scp "$archive" "$name":ringlm.tar.gz --zone="$zone" --worker=all
  on_all_workers "mkdir -p ~/ringlm && tar -xzf ~/ringlm.tar.gz -C ~/ringlm && cd ~/ringlm && make setup ACCEL=tpu PYTHON=${PYTHON:-python3}"
fi
if (($#)); then
  printf -v args '%q ' "$@"
  on_all_workers "cd ~/ringlm && .venv/bin/python main.py --distributed ${args}"
fi
