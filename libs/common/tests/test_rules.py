"""Rules the trainer, the gateway and the DAGs share: promotion decisions and data set digests."""

from __future__ import annotations

import io

import pytest
from mlops_common.datasets import BUILTIN_TASKS, frame_digest, load_builtin, read_table
from mlops_common.promotion import HIGHER_IS_BETTER, decide


@pytest.mark.parametrize("metric", sorted(HIGHER_IS_BETTER))
def test_each_metric_is_judged_in_its_own_direction(metric: str) -> None:
    step = 0.1 if HIGHER_IS_BETTER[metric] else -0.1

    def promotes(candidate: float) -> bool:
        return decide(metric, candidate, 0.5, 0.05, alias="champion", current_version=3).promote

    assert promotes(0.5 + step)
    assert not promotes(0.5 - step)
    assert not promotes(0.5)


def test_a_gain_short_of_the_minimum_improvement_is_explained() -> None:
    decision = decide("f1", 0.82, 0.80, 0.05, alias="champion", current_version=3)
    assert not decision.promote and decision.gain == pytest.approx(0.02)
    assert decision.reason.startswith("not promoted: f1 0.8200 vs champion v3 0.8000")


def test_a_free_alias_is_taken_and_a_missing_metric_never_promotes() -> None:
    assert decide("rmse", 3.0, None, 0.0, alias="best", current_version=None).promote
    assert not decide("rmse", None, 2.0, 0.0, alias="best", current_version=1).promote
    held = decide("rmse", 3.0, None, 0.0, alias="best", current_version=1)
    assert not held.promote and held.reason == "best v1 has no rmse"


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_a_tables_digest_survives_a_round_trip_through_parquet_and_csv(name: str) -> None:
    frame = load_builtin(name)
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    csv = frame.to_csv(index=False).encode()
    assert frame_digest(read_table(parquet.getvalue(), "s3://data/x.parquet")) == frame_digest(
        frame
    )
    assert frame_digest(read_table(csv, "s3://data/x.csv")) == frame_digest(frame)
