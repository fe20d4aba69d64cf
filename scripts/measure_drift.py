"""Measure the drift detectors on real text: how often they alarm when nothing moved (calibration) and
how often they find a window that did (power), by window size and by the share of moved requests.

    python scripts/measure_drift.py                  # the measurement (outside CI): SmolLM2, 200 checks a setting
    python scripts/measure_drift.py --smoke --base-model file:///path/to/tiny-model   # CI: a few checks, planted shift

The reference is a profile of support tickets (``examples/tools/make_tickets.py``, as the example's
training data). Null windows are drawn from other tickets of the same generator, never in the
reference, out of a pool at least ten times the largest window. Moved windows mix in requests of
other registers and languages, each source measured on its own:

- ``general``: kubetune's built-in general prompts (facts, arithmetic, instructions, several languages);
- ``licenses``: paragraphs of the licence texts a Debian system ships (``/usr/share/common-licenses``);
- ``translations``: messages of Debian's translation catalogues (``*.mo``) in German, French, Spanish
  and Polish.

A source missing on the machine is skipped and recorded as such. Every check uses the same
``drift.detectors.check`` the monitor runs (all methods, Holm-corrected, alpha 0.05), with the base
model for the embeddings and as the model whose loss is measured (the calibration is of the
detector, not of one tuned model). Results go to ``docs/measurements/drift.json`` after each setting,
with the command, commit, machine and seeds; running the same command again resumes.
``--smoke`` fails (exit 1) when the planted shift (every request moved) is found in fewer than 90% of
its windows.
"""

from __future__ import annotations

import argparse
import gettext
import importlib.util
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from measurement import git

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "measurements" / "drift.json"
BUILTIN = "builtin://smollm2-135m-instruct"
ALPHA = 0.05
REFERENCE_ROWS = 256
NULL_POOL_FACTOR = 10  # the null pool holds at least this many times the largest window
SIZES = (50, 100, 200, 500)
MIXTURES = (0.1, 0.25, 0.5, 1.0)
LANGUAGES = ("de", "fr", "es", "pl")
SEED = 20261204


def tickets(count: int, seed: int) -> list[str]:
    """``count`` distinct ticket prompts from the example's generator, as the trainer sees the prompt."""
    spec = importlib.util.spec_from_file_location("make_tickets", ROOT / "examples" / "tools" / "make_tickets.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    rng, labels, seen = random.Random(seed), list(generator.PROBLEMS), list[str]()
    found: set[str] = set()
    while len(seen) < count:
        body = generator.ticket(labels[len(seen) % len(labels)], rng)
        if body not in found:
            found.add(body)
            seen.append(f"system: {generator.SYSTEM}\nuser: {body}")
    return seen


def general_prompts() -> list[str]:
    from kubetune_trainer.general_prompts import load_general_prompts

    prompts = load_general_prompts()
    return [
        "\n".join(f"{m['role']}: {m['content']}" for m in p.messages) for p in [*prompts.regression, *prompts.replay]
    ]


def license_paragraphs(limit: int) -> list[str]:
    folder = Path("/usr/share/common-licenses")
    paragraphs = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.is_file():
            text = path.read_text(errors="ignore")
            paragraphs += [" ".join(p.split()) for p in text.split("\n\n") if 80 <= len(" ".join(p.split())) <= 600]
    unique = sorted(set(paragraphs))
    random.Random(SEED).shuffle(unique)
    return [f"user: {p}" for p in unique[:limit]]


def translations(limit: int) -> list[str]:
    messages: set[str] = set()
    for language in LANGUAGES:
        for path in sorted(Path("/usr/share/locale").glob(f"{language}/LC_MESSAGES/*.mo")):
            try:
                with path.open("rb") as handle:
                    catalog = gettext.GNUTranslations(handle)
            except (OSError, ValueError, UnicodeError):  # a broken catalogue is skipped
                continue
            for text in catalog._catalog.values():  # type: ignore[attr-defined]
                if isinstance(text, str) and 40 <= len(text) <= 400 and " " in text and "%" not in text:
                    messages.add(" ".join(text.split()))
    ordered = sorted(messages)
    random.Random(SEED).shuffle(ordered)
    return [f"user: {m}" for m in ordered[:limit]]


CHUNK = 256  # texts measured between two saves of the cache


def measured(model_uri: str, texts: list[str], cache: Path | None = None, *, losses: bool = True) -> dict[str, Any]:
    """Embeddings, lengths and (base-model) losses of every text, computed once. With ``cache`` (a
    folder), each chunk of texts is saved as it is measured, under a name made from the model and the
    chunk's texts, so an interrupted measurement resumes where it stopped. Without ``losses`` (the
    costly part: a vocabulary's worth of logits per token), the loss method is left out."""
    import hashlib

    import torch
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.drift.profile import embed, prompt_losses, token_lengths
    from kubetune_trainer.models.loading import resolve_model_dir
    from kubetune_trainer.storage import ObjectStore
    from kubetune_trainer.training.model import load_tokenizer

    torch.manual_seed(0)
    folder = resolve_model_dir(model_uri, ObjectStore())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    tokenizer = load_tokenizer(folder)
    parts: list[dict[str, Any]] = []
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        # (A chunk measured without losses is named apart: it cannot stand in for one with them.)
        named = [model_uri, *chunk] if losses else [model_uri, "no-losses", *chunk]
        key = hashlib.sha256("\x00".join(named).encode()).hexdigest()[:24]
        path = cache / f"{key}.npz" if cache is not None else None
        if path is not None and path.exists():
            with np.load(path) as saved:
                parts.append({name: saved[name] for name in ("embeddings", "lengths", "losses")})
            continue
        part = {
            "embeddings": embed(model, tokenizer, chunk),
            "lengths": np.asarray(token_lengths(tokenizer, chunk), dtype=np.float64),
            "losses": np.asarray(prompt_losses(model, tokenizer, chunk) if losses else [], dtype=np.float64),
        }
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path.with_suffix(".tmp.npz"), **part)
            path.with_suffix(".tmp.npz").replace(path)
        parts.append(part)
        print(f"measured {min(start + CHUNK, len(texts))}/{len(texts)} texts", file=sys.stderr)
    found = {name: np.concatenate([part[name] for part in parts]) for name in ("embeddings", "lengths", "losses")}
    return found if losses else {**found, "losses": None}


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def alarm_bound(checks: int, alpha: float = ALPHA) -> int:
    """The most alarms a calibrated test gives in ``checks`` null checks, at the binomial 95% bound."""
    total = 0.0
    for k in range(checks + 1):
        total += math.comb(checks, k) * alpha**k * (1 - alpha) ** (checks - k)
        if total >= 0.95:
            return k
    return checks


def run_setting(
    data: dict[str, Any],
    reference: np.ndarray,
    null_pool: np.ndarray,
    moved_pool: np.ndarray | None,
    size: int,
    mixture: float,
    checks: int,
    seed: int,
    permutations: int,
) -> dict[str, Any]:
    from kubetune_trainer.drift.detectors import Sample, check, persistent

    def rows(index: np.ndarray) -> Sample:
        return Sample(
            embeddings=data["embeddings"][index],
            lengths=list(data["lengths"][index]),
            losses=list(data["losses"][index]) if data["losses"] is not None else None,
        )

    rng = np.random.default_rng(seed)
    profile = rows(reference)
    alarms, per_method, decisions = 0, dict[str, int](), list[bool]()
    started = time.time()
    for i in range(checks):
        moved = round(mixture * size) if moved_pool is not None else 0
        window = np.concatenate(
            [
                rng.choice(null_pool, size=size - moved, replace=False),
                rng.choice(moved_pool, size=moved, replace=moved > len(moved_pool))
                if moved and moved_pool is not None
                else np.array([], dtype=int),
            ]
        ).astype(int)
        decision = check(profile, rows(window), alpha=ALPHA, permutations=permutations, seed=seed * 100_003 + i)
        alarms += decision.drifted
        decisions.append(decision.drifted)
        for method, p in decision.adjusted.items():
            per_method[method] = per_method.get(method, 0) + (p < ALPHA)
    low, high = wilson(alarms, checks)
    twice = sum(persistent(decisions[: j + 1], 2) for j in range(1, len(decisions)))
    return {
        "size": size,
        "mixture": mixture,
        "checks": checks,
        "alarms": alarms,
        "rate": alarms / checks,
        "ci95": [low, high],
        "alarmsByMethod": per_method,
        "twoInARow": twice,
        "seconds": round(time.time() - started, 1),
    }


def minimum_window(results: dict[str, Any], *, mixture: float = 0.5, rate: float = 0.95) -> int | None:
    """The smallest window size at which every measured source's moved windows (at ``mixture``) are
    found at least ``rate`` of the time: the window the docs give as the minimum. None: no size does."""
    measured = [s for s in results.get("settings", []) if s["source"] != "none" and "rate" in s]
    sizes = sorted({s["size"] for s in measured if s["mixture"] == mixture})
    for size in sizes:
        found = [s["rate"] for s in measured if s["size"] == size and s["mixture"] == mixture]
        if found and min(found) >= rate:
            return int(size)
    return None


def quoted_figures(results: dict[str, Any]) -> list[str]:
    """The figures docs/drift.md quotes, as it words them (a test checks the page holds each)."""
    settings = [s for s in results.get("settings", []) if "rate" in s]
    null = [s for s in settings if s["source"] == "none"]
    sources = sorted({s["source"] for s in settings if s["source"] != "none"})

    def rates(size: int, mixture: float) -> str:
        found = {s["source"]: s["rate"] for s in settings if s["size"] == size and s["mixture"] == mixture}
        return "/".join(f"{found[name]:.1%}" for name in sources)

    sizes = [s["size"] for s in null]
    return [
        f"{', '.join(str(s['alarms']) for s in null)} alarms in {null[0]['checks']} checks at windows of "
        f"{', '.join(str(n) for n in sizes)} (bound: {alarm_bound(null[0]['checks'])})",
        f"two alarms in a row: {sum(s['twoInARow'] for s in null)}",
        f"documented minimum window: {minimum_window(results)}",
        "10% moved (" + "/".join(sources) + "): " + "; ".join(f"{rates(size, 0.1)} at {size}" for size in sizes),
    ]


def render_markdown(results: dict[str, Any]) -> str:
    """``docs/measurements/drift.md``: the recorded JSON as tables (written beside it, checked by a test)."""
    settings = [s for s in results.get("settings", []) if "rate" in s]
    lines = [
        "# Drift detection on real text (recorded)",
        "",
        f"`{results['command']}` at commit `{results['commit'][:12]}`, base model `{results['baseModel']}`, "
        f"alpha {results['alpha']}, {results['permutations']} permutations, seed {results['seed']}; reference "
        f"profile of {results['referenceRows']} tickets, null pool of {results['nullPool']} other tickets; "
        f"{results['machine']['platform']}. Rendered from `drift.json` by `scripts/measure_drift.py`.",
        "",
        "## No drift: alarms on windows of unseen tickets (all methods, Holm-corrected)",
        "",
        "| window | checks | alarms | rate | 95% interval | binomial bound | two alarms in a row |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for s in (s for s in settings if s["source"] == "none"):
        low, high = s["ci95"]
        lines.append(
            f"| {s['size']} | {s['checks']} | {s['alarms']} | {s['rate']:.3f} | [{low:.3f}, {high:.3f}] "
            f"| {alarm_bound(s['checks'])} | {s['twoInARow']} |"
        )
    mixtures = sorted({s["mixture"] for s in settings if s["source"] != "none"})
    for source in sorted({s["source"] for s in settings if s["source"] != "none"}):
        count = results.get("sources", {}).get(source, "?")
        lines += [
            "",
            f"## Moved: `{source}` ({count} texts) mixed into windows of tickets, share of windows found",
            "",
            "| window | " + " | ".join(f"{m:.0%} moved" for m in mixtures) + " |",
            "|---:|" + "---:|" * len(mixtures),
        ]
        for size in sorted({s["size"] for s in settings if s["source"] == source}):
            row = {s["mixture"]: s for s in settings if s["source"] == source and s["size"] == size}
            cells = [f"{row[m]['rate']:.3f}" if m in row else "" for m in mixtures]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    skipped = [s for s in results.get("settings", []) if "skipped" in s]
    if skipped:
        lines += ["", "Skipped: " + ", ".join(sorted({f"{s['source']} ({s['skipped']})" for s in skipped})) + "."]
    smallest = minimum_window(results)
    lines += [
        "",
        "Smallest window at which every source's 50%-moved windows are found in at least 95% of checks: "
        + (f"**{smallest}** requests." if smallest is not None else "**none measured**."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few checks on a tiny model (CI)")
    parser.add_argument("--base-model", default=BUILTIN)
    parser.add_argument("--checks", type=int, default=None, help="checks per setting (default 200; smoke 30)")
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--restart", action="store_true", help="forget recorded settings")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "kubetune" / "measure-drift",
        help="where measured texts are kept between runs (an interrupted measurement resumes)",
    )
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT / "api"), str(ROOT / "trainer_image")]

    checks = args.checks or (30 if args.smoke else 200)
    sizes = (20,) if args.smoke else SIZES
    mixtures = (1.0,) if args.smoke else MIXTURES
    reference_rows = 64 if args.smoke else REFERENCE_ROWS
    null_rows = NULL_POOL_FACTOR * max(sizes)
    in_distribution = tickets(reference_rows + null_rows, SEED)
    # The smoke keeps every pool small: each text's loss costs a vocabulary's worth of logits per token.
    sources = {"general": general_prompts()[: 100 if args.smoke else None]}
    if not args.smoke:
        sources["licenses"] = license_paragraphs(1000)
        sources["translations"] = translations(1000)
    reference = np.arange(reference_rows)
    null_pool = np.arange(reference_rows, reference_rows + null_rows)
    start, pools = len(in_distribution), {}
    for name, pool in sources.items():
        pools[name] = np.arange(start, start + len(pool)) if pool else None
        start += len(pool)

    results: dict[str, Any] = {}
    if args.results.exists() and not args.restart:
        results = json.loads(args.results.read_text())
    settings: list[dict[str, Any]] = results.setdefault("settings", [])
    done = {(s["source"], s["size"], s["mixture"]) for s in settings}
    plan = [("none", size, 0.0) for size in sizes] + [
        (name, size, mixture) for name in sources for size in sizes for mixture in mixtures
    ]
    texts = in_distribution + [t for pool in sources.values() for t in pool]
    data: dict[str, Any] = {}
    if any(setting not in done for setting in plan):  # a finished measurement is not measured again
        # Where and how it was measured: recorded when something is measured, not when a finished
        # measurement is only rendered again.
        results.update(
            {
                "command": "python scripts/measure_drift.py" + (" --smoke" if args.smoke else ""),
                "commit": git("rev-parse", "HEAD"),
                "baseModel": args.base_model,
                "alpha": ALPHA,
                "permutations": args.permutations,
                "seed": SEED,
                "referenceRows": reference_rows,
                "nullPool": null_rows,
                "sources": {name: len(pool) for name, pool in sources.items()},
                "machine": {"platform": platform.platform(), "python": platform.python_version()},
            }
        )
        print(f"measuring {len(texts)} texts with {args.base_model}", file=sys.stderr)
        data = measured(args.base_model, texts, None if args.smoke else args.cache)
    for number, (source, size, mixture) in enumerate(plan):
        if (source, size, mixture) in done:
            continue
        moved = pools.get(source)
        if source != "none" and (moved is None or len(moved) == 0):
            settings.append({"source": source, "size": size, "mixture": mixture, "skipped": "no such text here"})
            continue
        outcome = run_setting(
            data, reference, null_pool, moved, size, mixture, checks, SEED + number, args.permutations
        )
        settings.append({"source": source, **outcome})
        print(
            f"{source:>12} window {size:>3} moved {mixture:>4.0%}: {outcome['alarms']}/{checks} alarms", file=sys.stderr
        )
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(render_markdown(results))
    if settings:
        args.results.with_suffix(".md").write_text(render_markdown(results))
    if args.smoke:
        planted = [s for s in settings if s.get("mixture") == 1.0 and "rate" in s]
        null = [s for s in settings if s.get("source") == "none"]
        if not planted or min(s["rate"] for s in planted) < 0.9:
            print("planted shift missed: the detectors did not find windows of moved requests", file=sys.stderr)
            return 1
        if any(s["alarms"] > alarm_bound(s["checks"]) for s in null):
            print("too many alarms on null windows", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
