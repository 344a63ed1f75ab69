"""The champion/challenger decision on the same rows: decide's rule, and a champion that could
not be scored decided by why."""

from __future__ import annotations

import pytest
from mlops_common.promotion import decide, decide_on_same_rows

DIGEST = "0123456789abcdef"


@pytest.mark.parametrize(
    ("candidate", "champion"), [(0.95, 0.90), (0.905, 0.90), (0.90, 0.90), (0.80, 0.90)]
)
def test_with_both_scores_it_is_decides_rule_naming_the_rows(
    candidate: float, champion: float
) -> None:
    verdict = decide_on_same_rows(
        "roc_auc",
        candidate,
        champion,
        0.01,
        alias="champion",
        champion_version=3,
        rows_digest=DIGEST,
    )
    plain = decide("roc_auc", candidate, champion, 0.01, alias="champion", current_version=3)
    assert (verdict.promote, verdict.gain) == (plain.promote, plain.gain)
    assert verdict.reason == f"{plain.reason} on the same rows ({DIGEST[:12]})"


def test_lower_is_better_metrics_keep_their_direction() -> None:
    verdict = decide_on_same_rows(
        "rmse", 9.0, 10.0, 0.5, alias="champion", champion_version=1, rows_digest=DIGEST
    )
    assert verdict.promote and verdict.gain == 1.0


def test_a_free_alias_and_a_missing_candidate_score() -> None:
    free = decide_on_same_rows(
        "f1", 0.5, None, 0.0, alias="champion", champion_version=None, rows_digest=DIGEST
    )
    assert free.promote and free.reason == "promoted: no model held champion"
    none = decide_on_same_rows(
        "f1", None, 0.5, 0.0, alias="champion", champion_version=2, rows_digest=DIGEST
    )
    assert not none.promote and "no f1 to compare" in none.reason


def test_a_refused_champion_loses_to_a_challenger_with_a_score() -> None:
    verdict = decide_on_same_rows(
        "f1",
        0.1,
        None,
        0.5,
        alias="champion",
        champion_version=4,
        rows_digest=DIGEST,
        problem="refused",
        detail="signed by 'ed25519:x', which is not a trusted key",
    )
    assert verdict.promote and verdict.gain is None
    assert verdict.reason.startswith("promoted: champion v4 could not be scored on the same rows")
    assert "not a trusted key" in verdict.reason


def test_an_unavailable_champion_keeps_the_alias() -> None:
    verdict = decide_on_same_rows(
        "f1",
        0.99,
        None,
        0.0,
        alias="champion",
        champion_version=4,
        rows_digest=DIGEST,
        problem="unavailable",
        detail="listing failed: ConnectionError",
    )
    assert not verdict.promote
    assert "could not be fetched" in verdict.reason and "ConnectionError" in verdict.reason


def test_a_challenger_without_a_score_never_wins_even_against_a_refused_champion() -> None:
    verdict = decide_on_same_rows(
        "f1",
        None,
        None,
        0.0,
        alias="champion",
        champion_version=4,
        rows_digest=DIGEST,
        problem="refused",
        detail="no signature",
    )
    assert not verdict.promote and "no f1 to compare" in verdict.reason
