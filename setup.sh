#!/usr/bin/env bash
# One-command, idempotent set-up: Debian packages for the demo corpus (when root), a virtual environment in
# .venv with the pinned dependencies, and this package in editable mode with its test extras.
# A second run only checks and finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=".venv"
APT_PACKAGES=(fluidsynth timgm6mb-soundfont fluidr3mono-gm-soundfont espeak-ng ktuberling-data sonic-pi-samples)

say() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages that the offline demo corpus renders from.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "WARNING: the demo corpus needs these Debian packages, which are missing:"
    say "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
    say "continuing without them (stage=prepare will stop with the same message)"
  fi
else
  say "Debian packages present"
fi

# 2. Virtual environment.
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi

# 3. Dependencies, re-installed only when pyproject.toml changes.
stamp="$VENV/.ssondo-setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$VENV/bin/python" -c "import ssondo_train, torch, torchaudio, lightning, hydra" 2>/dev/null; then
  say "Python environment up to date"
else
  say "installing Python dependencies (first run downloads torch: several minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[train,test]"
  echo "$want" >"$stamp"
fi
say "done. Activate with: source $VENV/bin/activate"
