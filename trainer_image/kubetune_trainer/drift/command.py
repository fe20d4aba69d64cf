"""``kubetune drift check --reference VERSION_URI --samples URI``: is a window of production requests
still what a published version was trained on? The same check a DriftMonitor's Job runs.

It reads the version's reference profile (``reports/drift-profile/``) and manifest, loads the base
model the profile was made with (its SHA-256 must match: another base model's embeddings mean
something else) and the version's adapter for the losses, measures the window the same way, and runs
the detectors. Exit 0: no drift; 1: drift; 2: the check could not be made (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune.api.manifest import ManifestError
from kubetune.api.v1alpha1 import MethodType, S3Spec
from kubetune_trainer.drift.detectors import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, Decision, Sample, check
from kubetune_trainer.drift.profile import MAX_ROWS, ReferenceProfile, embed, prompt_losses, prompt_text, token_lengths
from kubetune_trainer.drift.window import Window, read_window
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri

EXIT_DRIFT = 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    drift = sub.add_parser("drift", help="drift checks of production requests against a published version")
    verbs = drift.add_subparsers(dest="drift_command", required=True)
    checking = verbs.add_parser("check", help="compare a window of request logs with a version's reference profile")
    checking.add_argument("--reference", required=True, metavar="VERSION_URI", help="the published version")
    checking.add_argument("--samples", required=True, metavar="URI", help="a request-log file or a prefix of them")
    checking.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)")
    checking.add_argument("--region", default=None, help="S3 region (default: AWS_REGION, else us-east-1)")
    checking.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="the decision's significance level")
    checking.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS)
    checking.add_argument("--window", type=int, default=MAX_ROWS, help="at most this many of the newest requests")
    checking.add_argument("--seed", type=int, default=0)
    checking.add_argument("--json", action="store_true", help="the decision as JSON")
    checking.set_defaults(handler=check_command)


def check_command(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1 or args.permutations < 19 or args.window < 2:
        print("cannot check: --alpha in (0, 1), --permutations at least 19, --window at least 2", file=sys.stderr)
        return EXIT_CONFIG
    try:
        store = ObjectStore(S3Spec(endpoint=args.endpoint, region=args.region))
        with tempfile.TemporaryDirectory(prefix="kubetune-drift-") as scratch:
            decision, window = run_check(store, args, Path(scratch))
    except (StorageError, ConfigurationError, ManifestError, ValueError) as err:
        print(f"cannot check: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(to_json(decision, window), indent=2))
    else:
        print(
            f"{len(window.examples)} requests ({window.labelled} labelled, {window.skipped} skipped): {decision.explain()}"
        )
    return EXIT_DRIFT if decision.drifted else EXIT_OK


def run_check(store: ObjectStore, args: argparse.Namespace, scratch: Path) -> tuple[Decision, Window]:
    from kubetune_trainer.evaluation.metrics import as_label
    from kubetune_trainer.models.loading import model_checksum, resolve_model_dir
    from kubetune_trainer.publish import read_manifest
    from kubetune_trainer.training.model import load_tokenizer

    version_uri = args.reference.rstrip("/")
    manifest = read_manifest(version_uri, store)
    folder = manifest.get("driftProfile")
    if not folder:
        raise ConfigurationError(f"{version_uri}: published without a drift reference profile (before kubetune 0.2)")
    profile = ReferenceProfile.load(store.download_tree(join_uri(version_uri, folder), scratch / "profile"))
    base_dir = resolve_model_dir(str(manifest["baseModel"]["uri"]), store)
    if profile.base_model_sha256 and model_checksum(base_dir) != profile.base_model_sha256:
        raise ConfigurationError(f"{manifest['baseModel']['uri']}: not the base model the profile was made with")
    window = read_window(store, args.samples, limit=args.window)
    texts = [prompt_text(e) for e in window.examples]
    tokenizer = load_tokenizer(base_dir)
    base, tuned = _models(store, manifest, version_uri, base_dir, scratch)
    confirmed = [as_label(e.reference()) for e in window.examples if e.reference()] if profile.labels else None
    measured = Sample(
        embeddings=embed(base, tokenizer, texts),
        lengths=[float(n) for n in token_lengths(tokenizer, texts)],
        labels=confirmed if confirmed and window.labelled else None,
        losses=prompt_losses(tuned, tokenizer, texts) if tuned is not None and profile.losses else None,
    )
    decision = check(profile.as_sample(), measured, alpha=args.alpha, permutations=args.permutations, seed=args.seed)
    return decision, window


def _models(
    store: ObjectStore, manifest: dict[str, Any], version_uri: str, base_dir: Path, scratch: Path
) -> tuple[Any, Any]:
    """(the base model, the tuned one) on the CPU in float32; the tuned one is None where it cannot be
    rebuilt here as it was evaluated (QLoRA's 4-bit base needs CUDA), and the loss method is skipped."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method = MethodType(manifest.get("resolved", {}).get("method", "lora"))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True).eval()
    paths = {str(a["path"]) for a in manifest.get("artifacts") or []}
    if method == MethodType.QLORA and not torch.cuda.is_available():
        return base, None
    if method in (MethodType.LORA, MethodType.QLORA) and any(p.startswith("adapter/") for p in paths):
        adapter = store.download_tree(join_uri(version_uri, "adapter"), scratch / "adapter")
        # A second copy of the base for the adapter: the first stays plain for the embeddings.
        plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
        return base, PeftModel.from_pretrained(plain, adapter).eval()
    if any(p.startswith("merged/") for p in paths):
        merged = store.download_tree(join_uri(version_uri, "merged"), scratch / "merged")
        return base, AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True).eval()
    return base, None


def to_json(decision: Decision, window: Window) -> dict[str, Any]:
    return {
        "drifted": decision.drifted,
        "alpha": decision.alpha,
        "requests": len(window.examples),
        "labelled": window.labelled,
        "skipped": window.skipped,
        "methods": [
            {
                "method": r.method,
                "statistic": r.statistic,
                "pValue": r.p_value,
                "adjustedPValue": decision.adjusted[r.method],
                "referenceSize": r.reference_size,
                "windowSize": r.window_size,
            }
            for r in decision.results
        ],
        "explanation": decision.explain(),
    }
