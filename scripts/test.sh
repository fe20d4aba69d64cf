#!/usr/bin/env bash
# The whole test suite, slow real-model tests included, plus the static checks. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
export PATH="$PWD/.venv/bin:$PATH"
echo "== static checks"
ruff check api operator trainer_image tests scripts bench
ruff format --check api operator trainer_image tests scripts bench
lint-imports
mypy api/kubetune operator/kubetune trainer_image/kubetune_trainer scripts/dashboard.py scripts/measure_forgetting.py scripts/measure_methods.py scripts/measure_drift.py scripts/measure_continual.py scripts/measure_privacy.py scripts/measure_distill.py scripts/lock_images.py bench/train.py bench/curation.py bench/evaluate.py bench/estimate.py bench/operator.py scripts/measurement.py
python -m kubetune.api.crd --check
echo "== tests"
pytest "$@"
