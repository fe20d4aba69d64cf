"""The operator→pod contract is named once (``kubetune.api.contract``) and read once on each side."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kubetune.api import contract
from kubetune.operator.children import Owner, build_preflight_job, build_spec_configmap, build_training_job
from kubetune.operator.config import OperatorConfig
from kubetune_trainer.environment import TrainerEnvironment
from tests import builders

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "operator").rglob("*.py")), *sorted((ROOT / "trainer_image").rglob("*.py"))]
# The operator's own settings (Helm values -> the operator's Deployment) are a different boundary,
# read once by OperatorConfig.from_env.
OPERATOR_SETTINGS = ROOT / "operator" / "kubetune" / "operator" / "config.py"
ENVIRONMENT_READER = ROOT / "trainer_image" / "kubetune_trainer" / "environment.py"
TORCHRUN_NAMES = {"RANK", "LOCAL_RANK", "WORLD_SIZE"}


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_plane_spells_a_pod_environment_name_or_torchrun_variable_itself() -> None:
    spelled = []
    for path in SOURCES:
        if path in (OPERATOR_SETTINGS, ENVIRONMENT_READER):
            continue
        for line, value in _string_literals(path):
            if re.fullmatch(r"KUBETUNE_[A-Z_]+", value) or value in TORCHRUN_NAMES:
                spelled.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not spelled, "use kubetune.api.contract / TrainerEnvironment:\n" + "\n".join(spelled)


def test_only_the_environment_reader_reads_the_trainer_environment() -> None:
    readers = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        if path.is_relative_to(ROOT / "trainer_image") and path != ENVIRONMENT_READER
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"os\.environ(\.get)?\(?\[?[\"'](KUBETUNE_|RANK|LOCAL_RANK|WORLD_SIZE)", line)
    ]
    assert not readers, readers


def test_every_variable_the_operator_sets_is_one_the_trainer_reads() -> None:
    spec = builders.spec(
        s3={"caBundle": {"name": "ca", "key": "bundle.pem"}, "endpoint": "https://s3.example.com"},
        resources={"gpus": 1, "gpuMemory": "24Gi"},
    )
    config = OperatorConfig.from_env({"KUBETUNE_PUSHGATEWAY_URL": "http://pushgateway:9091"})
    owner = Owner("tickets", "ml", "uid-1")
    pods = [build_preflight_job(owner, spec, config), build_training_job(owner, spec, config)]
    for job in pods:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"] if "value" in e}
        ours = {name: value for name, value in env.items() if name.startswith("KUBETUNE_")}
        read = TrainerEnvironment.from_env(ours)
        assert read.job_name == "tickets" and read.job_namespace == "ml" and read.report_status
        assert read.scratch == Path(contract.SCRATCH) and read.cache == Path(contract.CACHE)
        assert read.termination_log == Path(container["terminationMessagePath"])
        assert read.s3_ca_bundle is not None and read.s3_ca_bundle.name == "bundle.pem"
        assert read.s3_public_endpoint_only, "an endpoint admitted by '*' is re-checked at connection time"
        contract_names = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
        assert set(ours) <= contract_names, set(ours) - contract_names
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[contract.JOB_FILE]["subPath"] == contract.JOB_FILE_KEY
        assert contract.JOB_FILE in container["command"] + container.get("args", [])
    configmap = build_spec_configmap(owner, spec, config)
    assert set(configmap["data"]) == {contract.JOB_FILE_KEY}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"rank": 0, "world_size": 1, "local_rank": 0, "metrics_port": None, "push_interval_seconds": 15}),
        ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}, {"rank": 3, "local_rank": 1, "world_size": 4}),
        ({"KUBETUNE_METRICS_PORT": "9090", "KUBETUNE_PUSH_INTERVAL_SECONDS": "30"}, {"metrics_port": 9090}),
        ({"KUBETUNE_METRICS_PORT": "http"}, {"metrics_port": None}),  # logged and ignored, never fatal
        ({"KUBETUNE_REPORT_STATUS": "TRUE", "KUBETUNE_SCRATCH": "/data"}, {"report_status": True}),
    ],
)
def test_the_trainer_environment_is_parsed_in_one_place(env: dict[str, str], expected: dict[str, object]) -> None:
    read = TrainerEnvironment.from_env(env)
    for name, value in expected.items():
        assert getattr(read, name) == value
    assert read.is_main_process == (read.rank == 0)
    assert read.scratch == Path(env.get("KUBETUNE_SCRATCH", contract.SCRATCH))
