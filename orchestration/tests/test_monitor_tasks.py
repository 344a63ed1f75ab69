"""What monitor_model asks the trainer, and the retraining run it triggers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlops_dags.monitor_tasks import monitoring_request, retraining_conf, retraining_run_id
from mlops_dags.training_tasks import training_request
from trainer.schemas import MonitorRequest, TrainRequest

PARAMS: dict[str, Any] = {
    "model_name": "demo",
    "alias": "champion",
    "window_hours": 2,
    "window_start": "",
    "min_rows": 100,
    "min_labels": 30,
    "max_drift_share": 0.5,
    "max_quality_drop": 0.1,
    "retrain": True,
    "retrain_params": {"source": "s3://data/raw/fresh.csv", "target": "y"},
}
JOB = {
    "job_id": "j1",
    "kind": "monitor",
    "model_name": "demo",
    "result": {
        "version": 7,
        "run_id": "r1",
        "decision": {"retrain": True, "reasons": ["drift share 0.90 >= 0.50 (27 of 30 ...)"]},
    },
}


def test_the_monitoring_job_is_one_the_trainer_accepts() -> None:
    body = monitoring_request(PARAMS, "monitor_model", "scheduled__2026-12-02T10:00:00+00:00")
    MonitorRequest.model_validate(body)
    assert "start" not in body and body["window_hours"] == 2.0
    started = monitoring_request({**PARAMS, "window_start": "2026-12-02T09:30:00Z"}, "m", "r")
    assert MonitorRequest.model_validate(started).start == datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    assert body["idempotency_key"] == (
        "airflow:monitor_model:scheduled__2026-12-02T10:00:00+00:00:demo"
    )


def test_the_retraining_run_carries_the_reason_through_to_the_trainers_tags() -> None:
    conf = retraining_conf(JOB, PARAMS)
    assert conf["model_name"] == "demo" and conf["source"] == "s3://data/raw/fresh.csv"
    assert conf["trigger_reason"].startswith("monitor_model: drift share 0.90")
    assert "monitoring run r1" in conf["trigger_reason"]
    manifest = {
        "target": "y",
        "train_uri": "s3://data/processed/x/train.parquet",
        "test_uri": "s3://data/processed/x/test.parquet",
        "manifest_uri": "s3://data/processed/x/manifest.json",
    }
    train_params = {"algorithm": "", "algorithm_params": {}, "metric": "roc_auc", "margin": 0}
    body = training_request(manifest, {**train_params, **conf}, "train_and_promote", "monitor__x")
    request = TrainRequest.model_validate(body)
    assert request.lineage is not None and request.lineage.reason == conf["trigger_reason"]


def test_one_retraining_per_served_version_and_day() -> None:
    morning = datetime(2026, 12, 2, 8, tzinfo=UTC)
    evening = datetime(2026, 12, 2, 20, tzinfo=UTC)
    assert retraining_run_id(JOB, morning) == retraining_run_id(JOB, evening)
    assert retraining_run_id(JOB, morning) == "monitor__demo__v7__2026-12-02"
    newer = {**JOB, "result": {**JOB["result"], "version": 8}}
    assert retraining_run_id(newer, morning) != retraining_run_id(JOB, morning)
