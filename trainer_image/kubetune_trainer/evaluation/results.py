"""Base vs tuned, per measure: the numbers every other part of the evaluation reports on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MetricResult:
    name: str
    base: float
    tuned: float
    ci_low: float  # 95% paired-bootstrap interval of tuned - base
    ci_high: float
    lower_is_better: bool

    @property
    def delta(self) -> float:
        return self.tuned - self.base

    @property
    def improved(self) -> bool:
        """Better in the metric's good direction, with the whole interval on that side."""
        return self.ci_high < 0 if self.lower_is_better else self.ci_low > 0


@dataclass
class RegressionResult:
    """Forgetting: per-token likelihood (exp of -mean NLL) of the regression answers."""

    examples: int
    base: float
    tuned: float
    relative_loss: float  # (base - tuned) / base; positive = forgot
    ci_low: float
    ci_high: float
    max_regression: float

    @property
    def passed(self) -> bool:
        return self.relative_loss <= self.max_regression
