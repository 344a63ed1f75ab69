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


# Why a champion could not be scored on the comparison rows.
#   refused: it failed the platform's checks (no or a bad signature, files not as signed, types
#     skops may not load) or could not predict the rows; inference would refuse it as well.
#   unavailable: its files or its registry entry could not be fetched: nothing is known of it.
ChampionProblem = Literal["refused", "unavailable"]


def decide_on_same_rows(
    metric: str,
    candidate: float | None,
    champion: float | None,
    min_improvement: float,
    *,
    alias: str,
    champion_version: int | None,
    rows_digest: str,
    problem: ChampionProblem | None = None,
    detail: str = "",
) -> Decision:
    """The decision between a challenger and the champion ``alias`` names, both scored on the
    same rows (``rows_digest`` names them; it goes into the reason).

    With both scores it is ``decide``'s rule. A champion that could not be scored is decided by
    why (``problem``, explained by ``detail``):

    * ``refused``: the challenger takes the alias. A version that fails the platform's checks
      cannot be served (inference applies the same ones) nor compared, and keeping it would
      leave the alias on a model nobody can verify.
    * ``unavailable``: the champion keeps the alias. Its store or registry did not answer, which
      says nothing about the model; a promotion must not ride on an outage.
    """
    rows = f"on the same rows ({rows_digest[:12]})"
    if candidate is None or champion_version is None or problem is None:
        verdict = decide(
            metric,
            candidate,
            champion,
            min_improvement,
            alias=alias,
            current_version=champion_version,
        )
        if verdict.gain is None:
            return verdict
        return Decision(verdict.promote, f"{verdict.reason} {rows}", verdict.gain)
    if problem == "refused":
        return Decision(
            True,
            f"promoted: {alias} v{champion_version} could not be scored {rows}: {detail} "
            "(a champion that fails the platform's checks does not hold the alias)",
        )
    return Decision(
        False,
        f"not promoted: {alias} v{champion_version} could not be fetched to score it: {detail} "
        "(the champion keeps the alias until it can be compared)",
    )
