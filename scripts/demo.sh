#!/usr/bin/env bash
# Set up and run the main job locally: fine-tune the built-in SmolLM2-135M-Instruct on the
# example dataset, evaluate it against the base model and write the artifacts to ./runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh trainer
exec .venv/bin/kubetune run "${1:-examples/support-tickets.yaml}" --output-dir runs
