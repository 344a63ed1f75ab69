"""The lineage a pipeline sends with a job is strictly validated: it ends up in tags."""

from __future__ import annotations

from typing import Any

import pytest
from trainer.schemas import TrainRequest

GOOD = {
    "dag_id": "train_and_promote",
    "dag_run_id": "manual__2026-12-02T17:00:00+00:00",
    "etl_manifest": "s3://data/processed/iris/abc-t20-s42/manifest.json",
}


def request(lineage: Any) -> TrainRequest:
    return TrainRequest.model_validate(
        {"model_name": "m", "dataset": {"builtin": "iris"}, "lineage": lineage}
    )


def test_lineage_is_optional_and_its_manifest_too() -> None:
    assert request(None).lineage is None
    lineage = request({"dag_id": "d", "dag_run_id": "r"}).lineage
    assert lineage is not None and lineage.etl_manifest is None
    assert request(GOOD).lineage == request(dict(GOOD)).lineage


@pytest.mark.parametrize(
    "change",
    [
        {"dag_id": ""},
        {"dag_id": "bad id"},
        {"dag_id": "d" * 251},
        {"dag_run_id": "run\nid"},
        {"dag_run_id": "r" * 251},
        {"etl_manifest": "s3://data/processed/manifest.csv"},
        {"etl_manifest": "http://data/manifest.json"},
        {"etl_manifest": "s3://data/x\x00.json"},
        {"extra": "field"},
    ],
)
def test_malformed_lineage_is_refused(change: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        request({**GOOD, **change})


def test_lineage_is_documented_in_the_openapi() -> None:
    schema = TrainRequest.model_json_schema()
    lineage = schema["$defs"]["Lineage"]
    assert set(lineage["properties"]) == {"dag_id", "dag_run_id", "etl_manifest", "reason"}
    assert lineage["additionalProperties"] is False
    assert all("description" in p for p in lineage["properties"].values())
