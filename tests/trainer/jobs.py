"""Small FineTuneJob manifests on the tiny model, for tests that run the real entry points."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def write_dataset(path: Path, count: int = 64) -> Path:
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Classify ticket {i}: my order {i * 37} is {'late' if i % 2 else 'broken'}",
                },
                {"role": "assistant", "content": "shipping" if i % 2 else "returns"},
            ]
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


COLOURS = ["red", "blue", "green", "amber", "violet", "teal", "gray", "pink"]


def write_pairs(path: Path, count: int = 96) -> Path:
    """A concise one-word colour preferred over a hedging sentence naming the same colour."""
    rng = random.Random(3)
    rows = []
    for i in range(count):
        colour = rng.choice(COLOURS)
        rows.append(
            {
                "prompt": f"Name the colour of item {i * 13} in one word.",
                "chosen": colour,
                "rejected": f"I think the colour of item {i * 13} could be {colour}, but I am not sure about it.",
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_job(
    path: Path, *, model_dir: Path, data: Path, output: str, s3_endpoint: str | None = None, **spec: Any
) -> Path:
    manifest: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tiny-job", "namespace": "default"},
        "spec": {
            "baseModel": {"uri": f"file://{model_dir}"},
            # These jobs test the trainer's mechanics (resuming, reporting, methods, the CLI); the
            # protections against forgetting have tests of their own and the README demo, so here
            # they are off: no replay rows to train on, no general prompts to answer.
            "dataset": {
                "sources": [{"uri": f"file://{data}"}],
                "split": {"validation": 0.1, "test": 0.1},
                "replay": {"enabled": False},
            },
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {
                "epochs": 1,
                "learningRate": 0.001,
                "batchSize": 2,
                "gradientAccumulationSteps": 2,
                "sequenceLength": 64,
                "seed": 7,
            },
            "evaluation": {"metrics": ["perplexity"], "maxNewTokens": 4, "forgetting": False},
            "output": {"uri": output, "formats": ["adapter"]},
            "checkpoint": {"everySteps": 2},
            "resources": {"gpus": 0},
        },
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(manifest["spec"].get(key), dict):
            manifest["spec"][key] = {**manifest["spec"][key], **value}
        else:
            manifest["spec"][key] = value
    if s3_endpoint:
        manifest["spec"]["s3"] = {"endpoint": s3_endpoint, "region": "us-east-1"}
    path.write_text(yaml.safe_dump(manifest))
    return path


def multiprocess_job(folder: Path, model_dir: Path, **spec: Any) -> Path:
    """48 rows, one epoch, published under ``folder/out``: the job the runs of several processes train."""
    data = write_dataset(folder / "data.jsonl", 48)
    return write_job(
        folder / "job.yaml",
        model_dir=model_dir,
        data=data,
        output=f"file://{folder}/out/",
        **{"hyperparameters": {"epochs": 1}, **spec},
    )


def kubetune_process(command: str, target: str, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``kubetune <command> <target> --output-dir folder/runs --workdir folder/work [options]`` as a user
    runs it (one thread)."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "kubetune"),
            command,
            target,
            "--output-dir",
            str(folder / "runs"),
            "--workdir",
            str(folder / "work"),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def run_locally(job: Path, folder: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``kubetune run`` of ``job`` into ``folder`` (one thread), as a user runs it: the process's result
    and, when it published, the version's lineage manifest."""
    result = kubetune_process("run", str(job), folder)
    assert result.returncode == 0, result.stderr[-3000:]
    (manifest_path,) = (folder / "runs").glob("*/v*/manifest.json")
    return result, manifest_path


# The tiny model's answers to general prompts are noise, so a job that measures forgetting on it
# tests the measurement's plumbing (it runs, it is published, a challenger is compared on it) with
# any change of likelihood tolerated; the thresholds themselves are tested on SmolLM2.
MEASURED_FORGETTING = {"forgetting": True, "maxRegression": 1.0}


def publish_champion(
    root: Path,
    model_dir: Path,
    *,
    output: str,
    channel: str = "prod",
    s3_endpoint: str | None = None,
    measure_forgetting: bool = False,
    output_dir: Path | None = None,
) -> Path:
    """One short real ``kubetune run`` on the tiny model (its job at ``root/job.yaml``) publishing under
    ``output`` (or ``output_dir``, as ``--output-dir``) and, its perplexity gate passed, put on
    ``channel``; with ``measure_forgetting``, its forgetting measured on the built-in general prompts
    (MEASURED_FORGETTING). Returns its training data."""
    from kubetune.api.contract import EXIT_OK
    from kubetune_trainer.cli import main as kubetune

    data = write_dataset(root / "data.jsonl", 64)
    evaluation: dict[str, Any] = {"gate": {"metric": "perplexity"}}
    if measure_forgetting:
        evaluation |= MEASURED_FORGETTING
    job = write_job(
        root / "job.yaml", model_dir=model_dir, data=data, output=output, s3_endpoint=s3_endpoint, evaluation=evaluation
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["channel"] = channel
    job.write_text(yaml.safe_dump(manifest))
    where = ["--output-dir", str(output_dir)] if output_dir is not None else []
    code = kubetune(["run", str(job), *where, "--workdir", str(root / "work"), "--max-steps", "2"])
    assert code == EXIT_OK
    return data


def publish_on_channel(
    root: Path, model_dir: Path, channel: str = "prod", *, measure_forgetting: bool = False
) -> tuple[Path, Path]:
    """(the version's folder, its training data) of :func:`publish_champion` under ``root/runs/tiny-job/``."""
    data = publish_champion(
        root,
        model_dir,
        output=f"file://{root}/out/",
        channel=channel,
        measure_forgetting=measure_forgetting,
        output_dir=root / "runs",
    )
    (version,) = (root / "runs" / "tiny-job").glob("v*")
    return version, data


def run_unmergeable_adapter(
    folder: Path, model_dir: Path, method: dict[str, Any], **spec: Any
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """``kubetune run`` of a small job training ``method`` (an adapter with its own block) with
    ``output.formats`` unset, as a user writes it: (the plan it logged, its lineage manifest, the
    published version's folder)."""
    job = write_job(
        folder / "job.yaml",
        model_dir=model_dir,
        data=write_dataset(folder / "data.jsonl", 40),
        output=f"file://{folder}/out/",
        method={"type": "lora", **method},
        **spec,
    )
    manifest = yaml.safe_load(job.read_text())
    del manifest["spec"]["method"]["lora"], manifest["spec"]["output"]["formats"]  # the defaults
    job.write_text(yaml.safe_dump(manifest))
    result, manifest_path = run_locally(job, folder)
    (plan_line,) = [line for line in result.stderr.splitlines() if "kubetune: plan: {" in line]
    plan, lineage = json.loads(plan_line.split("plan: ", 1)[1]), json.loads(manifest_path.read_text())
    return plan, lineage, manifest_path.parent


def preflight_dataset(folder: Path, dataset: dict[str, Any]) -> tuple[Path, int, str]:
    """``kubetune preflight`` in process (the built-in tokenizer, no weights: the data stage and the plan)
    of a job on ``dataset``, as the pre-flight pod runs it: (the manifest, the exit code, what it said).
    Its reports are under ``folder/work/artifacts/reports``."""
    import contextlib
    import io

    from kubetune.api.v1alpha1 import BUILTIN_MODEL_URI
    from kubetune_trainer.cli import main as kubetune

    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tickets"},
        "spec": {
            "baseModel": {"uri": BUILTIN_MODEL_URI},
            "dataset": dataset,
            "output": {"uri": f"file://{folder}/out/"},
            "resources": {"gpus": 0},
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = kubetune(["preflight", "--job", str(path), "--workdir", str(folder / "work")])
    return path, code, output.getvalue()
