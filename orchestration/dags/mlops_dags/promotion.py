"""Deciding whether a challenger replaces the champion, from the registry's recorded metrics."""

from __future__ import annotations

from typing import Any

LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss"})


def decide(
    candidate: dict[str, Any], champion: dict[str, Any] | None, metric: str, margin: float
) -> dict[str, Any]:
    """candidate/champion: {"version": int, "metrics": {...}}. Returns the decision with its reason."""
    mine = candidate["metrics"].get(metric)
    decision: dict[str, Any] = {
        "metric": metric,
        "margin": margin,
        "candidate_version": candidate["version"],
        "candidate_value": mine,
        "champion_version": champion["version"] if champion else None,
        "champion_value": champion["metrics"].get(metric) if champion else None,
    }
    if mine is None:
        return {
            **decision,
            "promote": False,
            "reason": f"challenger v{candidate['version']} has no {metric}",
        }
    if champion is None:
        return {
            **decision,
            "promote": True,
            "reason": "no champion yet: the challenger takes the alias",
        }
    theirs = decision["champion_value"]
    if theirs is None:
        reason = f"champion v{champion['version']} has no {metric} to compare with; not promoting"
        return {**decision, "promote": False, "reason": reason}
    gain = (theirs - mine) if metric in LOWER_IS_BETTER else (mine - theirs)
    verdict = gain > 0 and gain >= margin
    word = "beats" if verdict else "does not beat"
    reason = (
        f"challenger v{candidate['version']} {metric}={mine:.4f} {word} champion "
        f"v{champion['version']} {metric}={theirs:.4f} by more than 0 and at least {margin}"
    )
    return {**decision, "promote": verdict, "gain": gain, "reason": reason}
