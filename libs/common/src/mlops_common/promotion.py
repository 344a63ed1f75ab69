"""When a new model version takes an alias from the current holder: the metrics it may be judged
on, which way each one is better, and the decision with its reason.

The trainer (``promote`` in a job) and the train-and-promote DAG decide with the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["classification", "regression"]

# Metric name -> True when higher is better, by the task it applies to.
METRICS: dict[Task, dict[str, bool]] = {
    "classification": {
        "accuracy": True,
        "f1": True,
        "precision": True,
        "recall": True,
        "roc_auc": True,
        "log_loss": False,
    },
    "regression": {"rmse": False, "mae": False, "r2": True},
}
DEFAULT_METRIC: dict[Task, str] = {"classification": "f1", "regression": "rmse"}
HIGHER_IS_BETTER: dict[str, bool] = {
    m: up for by_task in METRICS.values() for m, up in by_task.items()
}
ALL_METRICS = sorted(HIGHER_IS_BETTER)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    # How much the candidate beats the holder by (negative: falls short), when both were measured.
    gain: float | None = None


def decide(
    metric: str,
    candidate: float | None,
    current: float | None,
    min_improvement: float,
    *,
    alias: str,
    current_version: int | None,
) -> Decision:
    """Whether the candidate takes ``alias`` from version ``current_version`` (None: nobody holds
    it). It must beat the holder's ``metric`` by more than zero and by at least
    ``min_improvement``; ``candidate``/``current`` are None when that version has no such metric.
    """
    if candidate is None:
        return Decision(False, f"this run has no {metric} to compare")
    if current_version is None:
        return Decision(True, f"promoted: no model held {alias}")
    if current is None:
        return Decision(False, f"{alias} v{current_version} has no {metric}")
    gain = (candidate - current) if HIGHER_IS_BETTER[metric] else (current - candidate)
    if gain <= 0 or gain < min_improvement:
        reason = (
            f"not promoted: {metric} {candidate:.4f} vs {alias} v{current_version} "
            f"{current:.4f} (needs to beat it by more than 0 and by at least {min_improvement})"
        )
        return Decision(False, reason, gain)
    reason = (
        f"promoted: {metric} {candidate:.4f} beats {alias} v{current_version} "
        f"{current:.4f} by {gain:.4f} (≥ {min_improvement})"
    )
    return Decision(True, reason, gain)
