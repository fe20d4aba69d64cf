"""The drift detectors on synthetic data: calibrated under no drift (the monitor's combined decision
alarms at most as often as alpha allows, over hundreds of independent null checks), and powerful
against the shifts each method is for. Real-text calibration on embeddings is a separate test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubetune_trainer.drift.detectors import Sample, check, holm, persistent

ALPHA = 0.05
LABELS = np.array(["billing", "bug", "account", "feature", "outage", "other"])
LABEL_SHARES = np.array([0.3, 0.25, 0.2, 0.1, 0.1, 0.05])


def alarm_bound(checks: int, alpha: float = ALPHA, confidence: float = 0.95) -> int:
    """The most alarms a calibrated test gives in ``checks`` null checks, at the binomial 95% bound."""
    total = 0.0
    for k in range(checks + 1):
        total += math.comb(checks, k) * alpha**k * (1 - alpha) ** (checks - k)
        if total >= confidence:
            return k
    return checks


def sample(
    rng: np.random.Generator,
    rows: int,
    *,
    shift: float = 0.0,
    length_shift: float = 0.0,
    labels: np.ndarray | None = None,
    loss_shift: float = 0.0,
) -> Sample:
    """Rows from one population: 24-dim embeddings (a few correlated directions, as real ones have),
    integer token lengths, labels, per-prompt losses; each optionally shifted."""
    mixing = np.random.default_rng(7).normal(size=(8, 24))  # fixed: the population's shape
    latent = rng.normal(size=(rows, 8))
    latent[:, 0] += shift  # a topic moving: the population's leading factor, by `shift` of its spread
    embeddings = latent @ mixing + 0.3 * rng.normal(size=(rows, 24))
    lengths = rng.poisson(40 * (1 + length_shift), size=rows).astype(float)
    shares = LABEL_SHARES if labels is None else labels
    return Sample(
        embeddings=embeddings,
        lengths=lengths,
        labels=list(rng.choice(LABELS, size=rows, p=shares)),
        losses=list(rng.gamma(4.0, 0.25, size=rows) + loss_shift),
    )


def test_the_combined_decision_alarms_no_more_than_alpha_allows_under_no_drift() -> None:
    """500 independent null checks, all four methods each time (Holm-corrected together)."""
    rng = np.random.default_rng(2026)
    checks = 500
    alarms = 0
    per_method = {"embeddings.mmd": 0, "lengths.ks": 0, "labels.chi2": 0, "loss.mean": 0}
    for i in range(checks):
        decision = check(sample(rng, 120), sample(rng, 80), alpha=ALPHA, permutations=200, seed=i)
        alarms += decision.drifted
        for result in decision.results:
            per_method[result.method] += result.p_value < ALPHA
    assert alarms <= alarm_bound(checks), f"{alarms} alarms in {checks} null checks"
    # Each method on its own is calibrated too (uncorrected p-values below alpha about 5% of the time).
    for method, count in per_method.items():
        assert count <= alarm_bound(checks), (method, count)
    # And not so conservative that it never alarms: a permutation p-value is exact, so about alpha.
    assert sum(per_method.values()) >= 0.5 * ALPHA * checks * len(per_method), per_method


@pytest.mark.parametrize(
    ("shift", "method"),
    [
        ({"shift": 1.0}, "embeddings.mmd"),
        ({"length_shift": 0.4}, "lengths.ks"),
        ({"labels": np.array([0.05, 0.05, 0.2, 0.1, 0.1, 0.5])}, "labels.chi2"),
        ({"loss_shift": 0.3}, "loss.mean"),
    ],
    ids=["topic", "length", "labels", "loss"],
)
def test_each_kind_of_shift_is_found_by_its_method(shift: dict[str, object], method: str) -> None:
    rng = np.random.default_rng(11)
    found = 0
    for i in range(40):
        decision = check(sample(rng, 200), sample(rng, 100, **shift), permutations=200, seed=i)  # type: ignore[arg-type]
        found += decision.drifted and decision.adjusted[method] < ALPHA
    assert found >= 38, f"{method}: {found} of 40 shifted windows found"


def test_a_window_half_of_which_is_shifted_is_found() -> None:
    rng = np.random.default_rng(5)
    found = 0
    for i in range(40):
        same, moved = sample(rng, 100), sample(rng, 100, shift=1.2)
        assert same.embeddings is not None and moved.embeddings is not None
        mixed = Sample(embeddings=np.vstack([same.embeddings, moved.embeddings]))
        found += check(sample(rng, 250), mixed, permutations=200, seed=i).drifted
    assert found >= 38, f"{found} of 40 half-shifted windows found"


def test_a_model_that_finds_production_easier_is_not_drifting() -> None:
    rng = np.random.default_rng(3)
    easier = [
        check(
            Sample(losses=sample(rng, 200).losses),
            Sample(losses=sample(rng, 100, loss_shift=-0.5).losses),
            permutations=200,
            seed=i,
        ).drifted
        for i in range(20)
    ]
    assert not any(easier)


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert holm({}) == {}


def test_only_the_methods_both_sides_have_data_for_run_and_the_decision_says_why() -> None:
    rng = np.random.default_rng(1)
    reference, window = sample(rng, 60), sample(rng, 40)
    decision = check(Sample(lengths=reference.lengths, labels=reference.labels), Sample(lengths=window.lengths))
    assert [r.method for r in decision.results] == ["lengths.ks"]
    assert decision.explain().startswith("no drift at alpha 0.05 (Holm-corrected over 1 methods): lengths.ks p=")
    assert "no method could run" in check(Sample(), window).explain()


def test_persistence_acts_only_after_consecutive_drifted_windows() -> None:
    assert not persistent([True, False, True], 2)
    assert persistent([False, True, True], 2)
    assert not persistent([True], 2) and persistent([True], 1) and not persistent([], 1)
