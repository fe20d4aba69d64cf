"""README's first command, for real: the built-in SmolLM2-135M-Instruct on the example tickets.

The manifest is minimal (the data and the output): everything else is kubetune's defaults. Slow
(minutes on 2 cores) and run on every landing: it checks the quality claims (the tuned model beats
the base on the held-out split, measures its general ability on the built-in regression prompts, and the
default gate's verdict follows its checks) and that everything is published. The example is run
with one line added, ``output.channel: prod``: a promoted run joins the channel, one that is not does
not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


KUBETUNE = Path(sys.executable).parent / "kubetune"
MAP = ["--map", f"/opt/kubetune/examples={ROOT / 'examples'}"]


@dataclass(frozen=True)
class Demo:
    root: Path
    result: subprocess.CompletedProcess[str]

    @property
    def output(self) -> Path:
        return self.root / "runs" / "support-tickets"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """README's first command, run once for this module's tests."""
    tmp_path = tmp_path_factory.mktemp("demo")
    example = yaml.safe_load((ROOT / "examples" / "support-tickets.yaml").read_text())
    example["spec"]["output"]["channel"] = "prod"
    (tmp_path / "support-tickets.yaml").write_text(yaml.safe_dump(example))
    result = subprocess.run(
        [
            str(KUBETUNE),
            "run",
            str(tmp_path / "support-tickets.yaml"),
            *MAP,
            "--output-dir",
            str(tmp_path / "runs"),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=2300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return Demo(tmp_path, result)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_kubetune_run_example_improves_the_default_model(demo: Demo) -> None:
    result, tmp_path = demo.result, demo.root
    assert result.returncode == 0, result.stderr[-4000:]
    (version,) = [p for p in demo.output.iterdir() if p.name.startswith("v")]
    manifest = json.loads((version / "manifest.json").read_text())
    evaluation = manifest["evaluation"]
    accuracy = next(m for m in evaluation["metrics"] if m["name"] == "accuracy")
    perplexity = next(m for m in evaluation["metrics"] if m["name"] == "perplexity")
    assert accuracy["tuned"] > accuracy["base"] and accuracy["ciLow" if "ciLow" in accuracy else "ci_low"] > 0, accuracy
    assert perplexity["tuned"] < perplexity["base"], perplexity
    assert evaluation["primaryMetric"] == "accuracy"  # six labels: chosen automatically, not asked for
    # Forgetting, measured on the built-in regression pool with nothing asked: within 5% on both measures.
    forgetting = evaluation["forgetting"]
    assert forgetting["likelihood"]["examples"] == 188 and forgetting["likelihood"]["passed"], forgetting
    assert forgetting["knownAnswers"]["examples"] >= 100, forgetting
    # The default gate ran every check and its verdict follows them. Recorded on 2 cores
    # (docs/measurements/forgetting.md, the frozen defaults): promoted, with known answers
    # 41.5% -> 41.5%, two prompts to spare within the 5% tolerance; three answered differently on
    # another CPU would flip it, so the test holds the verdict to the checks, not to the recording.
    checks = {c["name"]: c["passed"] for c in evaluation["gate"]["checks"]}
    assert {"task", "forgetting.likelihood", "forgetting.knownAnswers"} <= set(checks), evaluation["gate"]
    assert checks["task"] is True and evaluation["gate"]["default_gate"], evaluation["gate"]
    gated = [passed for passed in checks.values() if passed is not None]
    assert manifest["promoted"] is all(gated), evaluation["gate"]
    # Within 2 points of what auto reached before the protections (0.948), at the strength chosen on
    # the validation split.
    assert accuracy["tuned"] >= 0.928, accuracy
    # Recorded: 0.9 (0.8 lost one validation row); another CPU may choose a neighbour.
    strength = manifest["training"]["adapterStrength"]
    assert strength["how"] == "validation" and 0.5 <= strength["scale"] <= 1.0, strength
    # Replay by default, from the base answers shipped for the built-in model: nothing was generated.
    replay = manifest["dataset"]["replay"]
    assert replay["examples"] > 0 and replay["answers"] == "shipped", replay
    assert replay["withheldWrongAnswers"] > 0, "the base model's wrong answers are not replayed"
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {
        "adapter/adapter_model.safetensors",
        "merged/model.safetensors",
        "reports/evaluation.md",
        "reports/loss_curve.png",
    } <= paths
    verdict = "quality gate: promoted" if manifest["promoted"] else "quality gate: not promoted"
    assert verdict in result.stdout and "stage times" in result.stderr
    entries = sorted((tmp_path / "runs" / "support-tickets" / "channels" / "prod").glob("*.json"))
    if manifest["promoted"]:
        (entry,) = entries
        assert json.loads(entry.read_text())["version"] == version.name and entry.name == "000001.json"
    else:
        assert entries == [], "a run its gate did not promote stays off the channel"


# The loop on the real model: French tickets reach the demo's champion. Templates per label, with the
# example's six English labels (the task stays; the language moves).
FRENCH = {
    "billing": ["J'ai été débité deux fois de {n} euros pour la commande {n}.", "Ma facture {n} est fausse."],
    "technical": ["L'application plante dès que j'ouvre {p}.", "Le {p} ne se connecte plus au wifi depuis {n} jours."],
    "account": [
        "Je n'arrive plus à me connecter à mon compte {n}.",
        "Comment changer l'adresse e-mail du compte {n} ?",
    ],
    "shipping": ["Ma commande {n} n'est toujours pas arrivée.", "Le colis {n} avec mon {p} est bloqué."],
    "returns": ["Je veux renvoyer le {p} de la commande {n}.", "Le {p} reçu est abîmé, je souhaite le retourner."],
    "feature_request": [
        "Pourriez-vous ajouter un mode sombre pour {p} ?",
        "Ce serait bien d'exporter mes {n} commandes.",
    ],
}
PRODUCTS_FR = ["casque sans fil", "bureau assis-debout", "machine à espresso", "tapis de yoga", "moniteur 4K"]


def french_requests(count: int, seed: int) -> list[dict[str, object]]:
    """Logged requests in French with the label a person confirmed, the example's system prompt kept."""
    # Loaded by its path: Opacus installs a top-level ``examples`` package that shadows this repository's.
    spec = importlib.util.spec_from_file_location("make_tickets", ROOT / "examples" / "tools" / "make_tickets.py")
    assert spec is not None and spec.loader is not None
    make_tickets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tickets)
    SYSTEM = make_tickets.SYSTEM
    rng, labels, rows = random.Random(seed), sorted(FRENCH), []
    for i in range(count):
        label = labels[i % len(labels)]
        text = rng.choice(FRENCH[label]).format(n=rng.randint(100, 99999), p=rng.choice(PRODUCTS_FR))
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        rows.append({"messages": messages, "label": label})
    return rows


def write_log(folder: Path, rows: list[dict[str, object]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "0001.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBETUNE), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_demo_models_drift_check_finds_french_tickets(demo: Demo, tmp_path: Path) -> None:
    """The DriftMonitor's check, the command its Job runs, on SmolLM2 and the demo's version on prod: a
    window of 60 French tickets, logged with the label a person confirmed, is drift (windows without
    drift are the calibration test's). The rest of the loop (retraining spec, ``kubetune challenge
    --promote``, the channel) runs end to end through the operator on the tiny model
    (``tests/operator/test_drift_monitor.py``): on SmolLM2 it cost CI 5 minutes and, by design, could
    only show the champion kept."""
    assert demo.result.returncode == 0, "the demo's run failed: see its test"
    (champion,) = [p for p in demo.output.iterdir() if p.name.startswith("v")]
    if not json.loads((champion / "manifest.json").read_text())["promoted"]:
        pytest.fail("the demo's version was not promoted, so no channel names a champion: see the demo's test")
    output = f"file://{demo.output}/"
    # Windows of 60: above the documented minimum (50), where half-moved windows were all found.
    check = ["drift", "check", "--reference", output, "--channel", "prod", "--window", "60", "--json"]

    french = write_log(tmp_path / "french", french_requests(120, 2))
    moved = kubetune(*check, "--samples", f"file://{french}/")
    assert moved.returncode == 1, moved.stdout + moved.stderr[-2000:]
    report = json.loads(moved.stdout)
    assert report["drifted"] and report["labelled"] == 60, report
