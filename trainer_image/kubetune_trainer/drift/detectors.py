"""Two-sample tests between a reference profile (the training data) and a window of production
samples, and the one decision they make together.

Every method is a permutation test: its p-value is the share of label shufflings of the pooled
sample that give a statistic at least as large as the one observed, ``(1 + #{null >= observed}) /
(1 + B)``. Under no drift the reference and window rows are exchangeable, so this p-value is valid at
every sample size, with no distributional assumption, for continuous and tied data alike (a p-value
from an asymptotic formula is not: KS on integer lengths and chi-square on sparse label counts are
both off at the sizes a window has). Anything fitted to make a statistic (the bandwidth, the reduced
basis of the embeddings) is fitted on the pooled sample, which every shuffling shares, so it keeps
that exchangeability. The shufflings are drawn once per check and computed together with matrix
products, so a check with 500 shufflings on 250 + 200 rows takes milliseconds.

The methods, each catching what the others miss:

- ``embeddings.mmd``: maximum mean discrepancy with a Gaussian kernel (bandwidth: the pooled median
  distance) on prompt embeddings reduced to at most 32 principal components: a change of topic,
  register or language, whatever the lengths and labels do.
- ``lengths.ks``: Kolmogorov-Smirnov distance between the prompt-length distributions.
- ``labels.chi2``: chi-square distance between the answer-label distributions, where answers are
  labels (feedback labels in the request logs).
- ``loss.mean``: the tuned model's mean per-token loss on the window above the reference's
  (one-sided: a model that finds production easier is not drifting away from it).

They are combined with Holm's step-down correction, which bounds the chance that any of them alarms
on a window with no drift by ``alpha`` whatever their dependence: drift is declared when some
Holm-adjusted p-value is below ``alpha``.

Written here rather than taken from a drift library: Alibi Detect's licence (Business Source) rules
it out, and the tests needed are a few matrix products; scipy's asymptotic p-values are not valid at
these sizes (see above).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

DEFAULT_ALPHA = 0.05
DEFAULT_PERMUTATIONS = 500
MAX_COMPONENTS = 32  # embeddings are reduced to this many principal components before the MMD

Array: TypeAlias = NDArray[np.float64]  # numpy is untyped here (pyproject: ignore_missing_imports)
Mask: TypeAlias = NDArray[np.bool_]


@dataclass(frozen=True)
class MethodResult:
    method: str
    statistic: float
    p_value: float
    reference_size: int
    window_size: int


@dataclass(frozen=True)
class Sample:
    """What one side of a check has: any of the four may be missing (that method is then not run)."""

    embeddings: Array | None = None  # (rows, dims)
    lengths: Sequence[float] | None = None  # prompt lengths in tokens
    labels: Sequence[str] | None = None  # answer labels
    losses: Sequence[float] | None = None  # the tuned model's mean per-token loss on each prompt


@dataclass(frozen=True)
class Decision:
    drifted: bool
    alpha: float
    results: list[MethodResult]
    adjusted: dict[str, float] = field(default_factory=dict)  # Holm-adjusted p-value per method

    def explain(self) -> str:
        if not self.results:
            return "no method could run (the window and the reference share no kind of data)"
        parts = [
            f"{r.method} p={r.p_value:.4f} (adjusted {self.adjusted[r.method]:.4f}, statistic {r.statistic:.4g})"
            for r in sorted(self.results, key=lambda r: self.adjusted[r.method])
        ]
        verdict = "drift" if self.drifted else "no drift"
        return f"{verdict} at alpha {self.alpha} (Holm-corrected over {len(self.results)} methods): " + "; ".join(parts)


def permutation_p_value(observed: float, null: Array) -> float:
    """The share of shufflings at least as extreme as the observed statistic, counting the observed one."""
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size))


def _shufflings(n: int, m: int, permutations: int, rng: np.random.Generator) -> Mask:
    """(permutations + 1, n + m) masks of the window's rows: row 0 is the observed split (the window
    is the last m rows of the pooled sample), the rest random splits of the same sizes."""
    observed: Mask = np.zeros(n + m, dtype=bool)
    observed[n:] = True
    shuffled = rng.permuted(np.tile(observed, (permutations, 1)), axis=1)  # each row shuffled on its own
    return np.vstack([observed[None, :], shuffled])


def _reduce(pooled: Array) -> Array:
    """Principal components of the pooled embeddings (centred, at most MAX_COMPONENTS)."""
    centred = pooled - pooled.mean(axis=0)
    k = min(MAX_COMPONENTS, *centred.shape)
    if centred.shape[1] <= k:
        return centred
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T


def mmd_test(reference: Array, window: Array, masks: Mask) -> MethodResult:
    pooled = _reduce(np.vstack([reference, window]).astype(np.float64))
    squared = np.maximum(
        (pooled**2).sum(axis=1)[:, None] + (pooled**2).sum(axis=1)[None, :] - 2 * pooled @ pooled.T, 0.0
    )
    off_diagonal = squared[~np.eye(len(pooled), dtype=bool)]
    median = float(np.median(off_diagonal)) if off_diagonal.size else 1.0
    kernel = np.exp(-squared / (2 * (median if median > 0 else 1.0)))
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out k(x, x)
    n, m = len(reference), len(window)
    inside = masks.astype(np.float64)  # window rows
    outside = 1.0 - inside  # reference rows
    # One matrix product serves all three sums: the reference rows' products are the kernel's row
    # sums less the window rows' (the kernel is symmetric).
    inside_kernel = inside @ kernel  # (B + 1, rows)
    outside_kernel = kernel.sum(axis=0)[None, :] - inside_kernel
    within_window = (inside_kernel * inside).sum(axis=1) / (m * (m - 1))
    within_reference = (outside_kernel * outside).sum(axis=1) / (n * (n - 1))
    across = (inside_kernel * outside).sum(axis=1) / (n * m)
    statistics = within_window + within_reference - 2 * across
    return MethodResult(
        "embeddings.mmd", float(statistics[0]), permutation_p_value(statistics[0], statistics[1:]), n, m
    )


def ks_test(reference: Sequence[float], window: Sequence[float], masks: Mask) -> MethodResult:
    pooled = np.concatenate([np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)])
    order = np.argsort(pooled, kind="stable")
    ordered = pooled[order]
    # The ECDFs are compared where a run of tied values ends, so ties never split.
    ends: Mask = np.append(ordered[1:] != ordered[:-1], True)
    n, m = len(reference), len(window)
    in_window = masks[:, order].astype(np.float64)
    window_cdf = np.cumsum(in_window, axis=1)[:, ends] / m
    reference_cdf = np.cumsum(1.0 - in_window, axis=1)[:, ends] / n
    statistics = np.abs(window_cdf - reference_cdf).max(axis=1)
    return MethodResult("lengths.ks", float(statistics[0]), permutation_p_value(statistics[0], statistics[1:]), n, m)


def label_test(reference: Sequence[str], window: Sequence[str], masks: Mask) -> MethodResult:
    names, codes = np.unique(np.asarray([*reference, *window], dtype=object).astype(str), return_inverse=True)
    one_hot = np.zeros((len(codes), len(names)))
    one_hot[np.arange(len(codes)), codes] = 1.0
    n, m = len(reference), len(window)
    in_window = masks.astype(np.float64) @ one_hot  # (B + 1, labels) window counts per shuffling
    totals = one_hot.sum(axis=0)
    in_reference = totals - in_window
    expected_window = totals * m / (n + m)
    expected_reference = totals * n / (n + m)
    statistics = ((in_window - expected_window) ** 2 / expected_window).sum(axis=1) + (
        (in_reference - expected_reference) ** 2 / expected_reference
    ).sum(axis=1)
    return MethodResult("labels.chi2", float(statistics[0]), permutation_p_value(statistics[0], statistics[1:]), n, m)


def loss_test(reference: Sequence[float], window: Sequence[float], masks: Mask) -> MethodResult:
    pooled = np.concatenate([np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)])
    n, m = len(reference), len(window)
    inside = masks.astype(np.float64)
    statistics = inside @ pooled / m - (1.0 - inside) @ pooled / n  # window mean minus reference mean
    return MethodResult("loss.mean", float(statistics[0]), permutation_p_value(statistics[0], statistics[1:]), n, m)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1)."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p))
        adjusted[name] = running
    return adjusted


def check(
    reference: Sample,
    window: Sample,
    *,
    alpha: float = DEFAULT_ALPHA,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> Decision:
    """Every method both samples have data for, and the Holm-corrected decision."""
    rng = np.random.default_rng(seed)
    results = []
    pairs: tuple[tuple[Any, Any, Callable[[Any, Any, Mask], MethodResult]], ...] = (
        (reference.embeddings, window.embeddings, mmd_test),
        (reference.lengths, window.lengths, ks_test),
        (reference.labels, window.labels, label_test),
        (reference.losses, window.losses, loss_test),
    )
    # Methods with the same sample sizes share one set of shufflings: each p-value stays exact, and
    # Holm's bound holds whatever the dependence between them.
    masks: dict[tuple[int, int], Mask] = {}
    for ours, theirs, method in pairs:
        if ours is None or theirs is None or len(ours) < 2 or len(theirs) < 2:
            continue
        sizes = (len(ours), len(theirs))
        if sizes not in masks:
            masks[sizes] = _shufflings(*sizes, permutations, rng)
        results.append(method(ours, theirs, masks[sizes]))
    adjusted = holm({r.method: r.p_value for r in results})
    return Decision(any(p < alpha for p in adjusted.values()), alpha, results, adjusted)


def persistent(decisions: Sequence[bool], windows: int) -> bool:
    """Drift is acted on only after ``windows`` drifted checks in a row (the latest included)."""
    return windows >= 1 and len(decisions) >= windows and all(decisions[-windows:])
