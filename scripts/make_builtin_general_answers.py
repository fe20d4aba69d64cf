"""Precompute the built-in model's answers to kubetune's general prompts, shipped with the trainer,
and its likelihood of its own answers to the regression pool.

Replay and the forgetting measure need the base model's own answers to the general prompts, and the
likelihood measure the base model's score of them. For ``builtin://smollm2-135m-instruct`` both ship
with the trainer, so the demo, CI and a first run on a laptop compute neither; any other base model
gets them computed once in its training pod and cached (kubetune_trainer/general_answers.py). The
files are named by the same cache key the trainer computes, so a prompt-set or model change leaves
them unused (and `--check` fails) until rerun.

Run: .venv/bin/python scripts/make_builtin_general_answers.py   (a few minutes on 2 CPU cores)
     .venv/bin/python scripts/make_builtin_general_answers.py --check
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from kubetune.api.v1alpha1 import BUILTIN_MODEL_URI, MethodType
from kubetune_trainer.evaluation.forgetting import FORGETTING_MAX_LENGTH
from kubetune_trainer.general_answers import (
    SHIPPED,
    AnswerKey,
    as_examples,
    base_answers,
    base_likelihoods,
    generate_with,
    likelihoods_file,
)
from kubetune_trainer.general_prompts import load_general_prompts
from kubetune_trainer.models.loading import model_checksum, resolve_model_dir
from kubetune_trainer.storage import ObjectStore


def builtin_key() -> tuple[AnswerKey, object]:
    path = resolve_model_dir(BUILTIN_MODEL_URI, ObjectStore())
    prompts = load_general_prompts()
    # What a run on the CPU compares against: LoRA's full-precision base, with no chat template override.
    return AnswerKey(model_checksum(path), prompts.version, None, weights="full"), path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 unless the shipped answers match the key")
    args = parser.parse_args()
    key, path = builtin_key()
    shipped = SHIPPED / f"{key.digest}.jsonl"
    # Scored as a CPU run scores its base: in full precision (load_base(..., bf16=False) below).
    precision = "fp32"
    likelihoods = SHIPPED / likelihoods_file(key, FORGETTING_MAX_LENGTH, precision)
    if args.check:
        stale = sorted(p.name for p in SHIPPED.glob("*.jsonl") if p not in (shipped, likelihoods))
        if not shipped.is_file() or not likelihoods.is_file() or stale:
            print(
                f"shipped answers out of date: want {shipped.name} and {likelihoods.name}, found {stale}; "
                f"rerun {sys.argv[0]}"
            )
            return 1
        return 0
    from kubetune_trainer.evaluation.scoring import score_examples
    from kubetune_trainer.training.model import load_base, load_tokenizer

    prompts = load_general_prompts()
    model = load_base(path, MethodType.LORA, device="cpu", bf16=False).eval()  # type: ignore[arg-type]
    tokenizer = load_tokenizer(path)  # type: ignore[arg-type]
    for old in SHIPPED.glob("*.jsonl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as build:
        answers = base_answers(
            key,
            [*prompts.regression, *prompts.replay],
            generate_with(model, tokenizer, None),
            cache_dir=Path(build),
            store=ObjectStore(),
            output_uri=Path(build, "storage").as_uri() + "/",
        )
        # Scored as evaluation scores the base (evaluation/runner.py): the base model's own answers to
        # the regression pool, at the fixed forgetting length.
        regression = as_examples(prompts.regression, answers)
        scores, origin = base_likelihoods(
            key,
            prompts.regression,
            lambda: [
                (loss.nll_sum, loss.tokens)
                for loss in score_examples(model, tokenizer, regression, max_length=FORGETTING_MAX_LENGTH)[0]
            ],
            max_length=FORGETTING_MAX_LENGTH,
            precision=precision,
            cache_dir=Path(build),
            store=ObjectStore(),
            output_uri=Path(build, "storage").as_uri() + "/",
        )
        SHIPPED.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(build, "general-answers", shipped.name), shipped)
        shutil.move(Path(build, "general-answers", likelihoods.name), likelihoods)
    print(f"{len(answers.answers)} answers ({answers.origin}) -> {shipped}")
    print(f"{len(scores)} likelihoods ({origin}) -> {likelihoods}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
