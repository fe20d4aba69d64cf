#!/usr/bin/env bash
# Puts a real MLflow server (with its basic-auth app) into .venv-mlflow, for the tests of spec.tracking.mlflow (a tracking and
# registry server started on loopback). Its own venv: kubetune never imports mlflow (the trainer talks
# to it over its REST API), and mlflow's dependencies must not move the project's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-mlflow
stamp="$venv/.kubetune-$(sha256sum constraints-mlflow.txt | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
python3 -m venv "$venv"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$venv/bin/python" -m pip --disable-pip-version-check install --quiet -c constraints-mlflow.txt "mlflow[auth]" >"$log" 2>&1 || {
  grep -v '^WARNING: Location' "$log" >&2
  exit 1
}
"$venv/bin/mlflow" --version
touch "$stamp"
