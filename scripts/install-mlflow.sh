#!/usr/bin/env bash
# Puts a real MLflow server (with its basic-auth app) into .venv-mlflow, for the tests of spec.tracking.mlflow (a tracking and
# registry server started on loopback). Its own venv: kubetune never imports mlflow (the trainer talks
# to it over its REST API), and mlflow's dependencies must not move the project's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-mlflow
stamp="$venv/.kubetune-$(sha256sum constraints-mlflow.txt | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
# With the uv that scripts/bootstrap.sh puts into .venv (it runs this script after that).
uv=.venv/bin/uv
if [ ! -x "$uv" ]; then
  echo "$uv is missing: run scripts/bootstrap.sh dev (it installs uv, then runs this script)" >&2
  exit 1
fi
python3 -m venv "$venv"
"$uv" pip install --quiet --python "$venv/bin/python" --compile-bytecode -c constraints-mlflow.txt "mlflow[auth]"
"$venv/bin/mlflow" --version
touch "$stamp"
