"""What train_and_promote sends the trainer, and how it reads the trainer's decision."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from mlops_dags.training_tasks import job_decision, training_request

PREFIX = "s3://data/processed/breast_cancer/abc-t20-s42"
MANIFEST = {
    "target": "target",
    "train_uri": f"{PREFIX}/train.parquet",
    "test_uri": f"{PREFIX}/test.parquet",
    "manifest_uri": f"{PREFIX}/manifest.json",
}
PARAMS = {
    "model_name": "demo",
    "alias": "champion",
    "algorithm": "",
    "algorithm_params": {},
    "metric": "roc_auc",
    "margin": 0.01,
}


def test_the_job_trains_on_the_train_split_and_compares_on_the_test_split() -> None:
    body = training_request(MANIFEST, PARAMS, "train_and_promote", "manual__2026-12-02")
    assert body["dataset"] == {
        "uri": f"{PREFIX}/train.parquet",
        "test_uri": f"{PREFIX}/test.parquet",
        "target": "target",
    }
    # The trainer decides; the DAG's promote task moves the alias.
    assert body["promote"] == {
        "alias": "champion",
        "metric": "roc_auc",
        "min_improvement": 0.01,
        "move_alias": False,
    }
    assert body["lineage"] == {
        "dag_id": "train_and_promote",
        "dag_run_id": "manual__2026-12-02",
        "etl_manifest": f"{PREFIX}/manifest.json",
    }
    assert body["algorithm"] is None
    assert body["idempotency_key"] == "airflow:train_and_promote:manual__2026-12-02:demo"


def test_the_body_is_a_valid_train_request() -> None:
    trainer = pytest.importorskip("trainer.schemas")
    body = training_request(MANIFEST, PARAMS, "train_and_promote", "manual__2026-12-02")
    trainer.TrainRequest.model_validate(body)


def job(promotion: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "job_id": "j1",
        "model_version": 7,
        "metrics": {"roc_auc": 0.99},
        "promotion": promotion,
    }


def test_the_decision_is_the_trainers() -> None:
    promotion = {
        "alias": "champion",
        "promote": True,
        "moved": False,
        "reason": "promoted: roc_auc 0.9900 beats champion v6 0.9800 by 0.0100",
        "comparison": {"rows_digest": "abc", "rows": 114},
    }
    decision = job_decision(job(promotion), "demo", "champion")
    assert decision["promote"] is True and decision["candidate_version"] == 7
    assert decision["model_name"] == "demo" and decision["alias"] == "champion"
    assert decision["reason"] == promotion["reason"]
    assert decision["comparison"]["rows"] == 114


@pytest.mark.parametrize(
    "promotion",
    [None, {}, {"alias": "other", "promote": True, "reason": "x"}, {"alias": "champion"}],
)
def test_a_job_without_the_comparison_fails_the_run(promotion: dict[str, Any] | None) -> None:
    with pytest.raises(AirflowFailException, match="reported no comparison"):
        job_decision(job(promotion), "demo", "champion")
