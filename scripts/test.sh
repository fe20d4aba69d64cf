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
mypy api/kubetune operator/kubetune trainer_image/kubetune_trainer scripts/dashboard.py scripts/measure_forgetting.py scripts/measure_methods.py scripts/measure_drift.py scripts/measure_continual.py scripts/measure_privacy.py scripts/measure_distill.py scripts/lock_images.py bench/train.py bench/curation.py bench/evaluate.py bench/estimate.py bench/operator.py scripts/measurement.py scripts/measure_sharding.py
python -m kubetune.api.crd --check
echo "== tests"
# Two workers (pytest-xdist): much of the suite waits on servers, subprocesses and the operator's watch.
# A test file goes to one worker whole, so a module's fixture runs once (docs/testing.md). README's demo,
# the one test that trains SmolLM2 for long, runs afterwards alone on every core, as a user runs it.
# --no-loadscope-reorder keeps the collection's order (tests/conftest.py: long files first; the RBAC
# comparison, which waits for every other operator test, last): xdist otherwise sorts files by test count.
# KUBETUNE_TEST_WORKERS=0 runs the rest in this one process.
demo=tests/test_demo_slow.py
if [ $# -eq 0 ]; then
  pytest -n "${KUBETUNE_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --ignore="$demo"
  pytest "$demo"
else
  pytest -n "${KUBETUNE_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
fi
