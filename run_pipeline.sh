#!/usr/bin/env bash
# The whole S-SONDO pipeline on the offline demo corpus, run name "demo".
# Each stage is skipped if it already finished with the same configuration (add force=true to redo it).
# Extra arguments are passed to every stage, e.g. ./run_pipeline.sh run_name=try2
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-.venv/bin/python}"
export WANDB_MODE="${WANDB_MODE:-offline}"
RUN_ARGS=(run_name=demo "$@")

stage() {
  echo
  echo "=== stage=$1 ==="
  "$PY" -m ssondo_train "stage=$1" "${RUN_ARGS[@]}"
}

stage prepare

echo
echo "Outputs: outputs/demo/ (one folder per stage, each with done.json)"
