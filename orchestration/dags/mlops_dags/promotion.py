"""Deciding whether a challenger replaces the champion, from the registry's recorded metrics."""

from __future__ import annotations

from typing import Any

from mlops_common.promotion import decide as decide_promotion


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    alias: str,
    metric: str,
    margin: float,
) -> dict[str, Any]:
    """candidate/champion: {"version": int, "metrics": {...}}. Returns the decision with its reason."""
    mine = candidate["metrics"].get(metric)
    theirs = champion["metrics"].get(metric) if champion else None
    verdict = decide_promotion(
        metric,
        mine,
        theirs,
        margin,
        alias=alias,
        current_version=champion["version"] if champion else None,
    )
    return {
        "metric": metric,
        "margin": margin,
        "candidate_version": candidate["version"],
        "candidate_value": mine,
        "champion_version": champion["version"] if champion else None,
        "champion_value": theirs,
        "promote": verdict.promote,
        "gain": verdict.gain,
        "reason": verdict.reason,
    }
