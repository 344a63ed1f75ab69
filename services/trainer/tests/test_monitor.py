"""Monitoring jobs: the prediction log against the training data, live quality, the decision."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from mlops_common.datasets import load_builtin
from mlops_common.storage import S3Uri
from trainer.jobs import JobStore
from trainer.monitor import Monitor, MonitorResult, answered
from trainer.schemas import MonitorRequest
from trainer.training import JobFailed

from .conftest import FakeQueue, MemoryObjectStore

NAME = "cancer"
NOW = datetime.now(UTC)


@pytest.fixture
def data() -> pd.DataFrame:
    return load_builtin("breast_cancer")


@pytest.fixture
def registered(tracking_store: MlflowClient) -> MlflowClient:
    """``cancer`` v1 as champion, trained on the built-in set with holdout accuracy 0.95."""
    experiment = tracking_store.get_experiment_by_name("tests")
    assert experiment is not None
    run = tracking_store.create_run(experiment.experiment_id)
    for key, value in {
        "dataset_source": "sklearn:breast_cancer",
        "dataset_digest": "d" * 16,
        "task": "classification",
    }.items():
        tracking_store.log_param(run.info.run_id, key, value)
    tracking_store.log_metric(run.info.run_id, "accuracy", 0.95)
    tracking_store.create_registered_model(NAME)
    tracking_store.create_model_version(NAME, "file:///nowhere", run_id=run.info.run_id)
    tracking_store.set_registered_model_alias(NAME, "champion", "1")
    return tracking_store


def _monitor(client: MlflowClient, store: MemoryObjectStore, tmp_path: Path) -> Monitor:
    if client.get_experiment_by_name("monitoring") is None:
        # Artifacts under the test's folder, not the working directory's ./mlruns.
        client.create_experiment("monitoring", (tmp_path / "monitoring").as_uri())
    return Monitor(
        store,  # type: ignore[arg-type]
        client,
        experiment="monitoring",
        bucket="data",
        max_rows=100_000,
        max_dataset_rows=100_000,
    )


def _write_log(
    store: MemoryObjectStore, rows: pd.DataFrame, predictions: np.ndarray, at: datetime, seq: int
) -> list[str]:
    """Rows as inference's prediction log writes them; returns their request ids."""
    ids = [f"req{seq:02d}{i:08d}" for i in range(len(rows))]
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(ids),
        "ts": pa.array([at] * len(rows), pa.timestamp("us", tz="UTC")),
        "model": pa.array([NAME] * len(rows)),
        "version": pa.array([1] * len(rows), pa.int64()),
        "alias": pa.array(["champion"] * len(rows)),
        "latency_ms": pa.array([1.0] * len(rows)),
    }
    for column in rows.columns:
        columns[f"feature.{column}"] = pa.array(rows[column].to_numpy(dtype=np.float64))
    columns["prediction"] = pa.array(predictions.astype(np.int64))
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    key = f"predictions/{NAME}/date={at.date().isoformat()}/host-8800-{seq:06d}.parquet"
    store.put_bytes(S3Uri("data", key), out.getvalue())
    return ids


def _write_labels(store: MemoryObjectStore, ids: list[str], labels: np.ndarray) -> None:
    table = pa.table(
        {
            "request_id": pa.array(ids),
            "ts": pa.array([NOW] * len(ids), pa.timestamp("us", tz="UTC")),
            "model": pa.array([NAME] * len(ids)),
            "label": pa.array(labels.astype(np.int64)),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    key = f"feedback/{NAME}/date={NOW.date().isoformat()}/host-8800-000001.parquet"
    store.put_bytes(S3Uri("data", key), out.getvalue())


def _request(**overrides: object) -> MonitorRequest:
    return MonitorRequest.model_validate({"model_name": NAME, "min_labels": 20, **overrides})


def _run(monitor: Monitor, request: MonitorRequest) -> MonitorResult:
    return monitor.run(request, "job-1")


def test_traffic_like_the_training_data_asks_for_nothing(
    registered: MlflowClient, data: pd.DataFrame, tmp_path: Path
) -> None:
    store = MemoryObjectStore()
    sample = data.sample(300, random_state=1)
    features = sample.drop(columns=["target"])
    ids = _write_log(store, features, sample["target"].to_numpy(), NOW - timedelta(minutes=5), 1)
    _write_labels(store, ids, sample["target"].to_numpy())

    result = _run(_monitor(registered, store, tmp_path), _request())

    assert result.version == 1 and result.rows == 300
    assert result.drift is not None and result.drift.share < 0.5
    assert set(result.drift.features) == set(features.columns)
    served = result.served_quality()
    assert served is not None and served.live == 1.0 and served.labelled == 300
    assert served.drop is not None and served.drop < 0
    assert not result.decision.retrain and result.decision.reasons == []
    # The run in MLflow carries the figures, the decision and the HTML report.
    assert result.run_id is not None
    run = registered.get_run(result.run_id)
    assert run.data.metrics["drift_share"] == pytest.approx(result.drift.share)
    assert run.data.tags["mlops.monitor.retrain"] == "false"
    artifacts = {a.path for a in registered.list_artifacts(result.run_id, "monitoring")}
    assert artifacts == {"monitoring/drift_report.html", "monitoring/monitor.json"}


def test_shifted_inputs_and_wrong_answers_ask_for_retraining_and_say_why(
    registered: MlflowClient, data: pd.DataFrame, tmp_path: Path
) -> None:
    store = MemoryObjectStore()
    sample = data.sample(300, random_state=2)
    shifted = sample.drop(columns=["target"]) * 1.8
    truth = sample["target"].to_numpy()
    ids = _write_log(store, shifted, 1 - truth, NOW - timedelta(minutes=5), 1)
    _write_labels(store, ids, truth)

    result = _run(_monitor(registered, store, tmp_path), _request())

    assert result.drift is not None and result.drift.share >= 0.9
    served = result.served_quality()
    assert served is not None and served.live == 0.0 and served.drop == pytest.approx(1.0)
    assert result.decision.retrain
    assert [r.split(" ")[0] for r in result.decision.reasons] == ["drift", "live"]
    assert result.metrics()["drift_share"] == result.drift.share
    run = registered.get_run(str(result.run_id))
    assert run.data.tags["mlops.monitor.retrain"] == "true"
    assert "drift share" in run.data.tags["mlops.monitor.reasons"]


def test_rows_outside_the_window_and_too_few_rows_decide_nothing(
    registered: MlflowClient, data: pd.DataFrame, tmp_path: Path
) -> None:
    store = MemoryObjectStore()
    sample = data.sample(300, random_state=3)
    shifted = sample.drop(columns=["target"]) * 1.8
    # Drifted traffic of yesterday, and only 20 rows in the last hour.
    _write_log(store, shifted, sample["target"].to_numpy(), NOW - timedelta(days=1), 1)
    _write_log(store, shifted[:20], sample["target"].to_numpy()[:20], NOW, 2)

    result = _run(_monitor(registered, store, tmp_path), _request())

    assert result.rows == 20 and result.drift is None
    assert not result.decision.retrain
    assert any("fewer than min_rows" in note for note in result.notes)
    # A window that takes yesterday in sees the drift.
    wide = _run(_monitor(registered, store, tmp_path), _request(window_hours=48))
    assert wide.rows == 320 and wide.decision.retrain


def test_an_alias_that_does_not_resolve_fails_the_job_with_the_reason(
    registered: MlflowClient, tmp_path: Path
) -> None:
    with pytest.raises(JobFailed, match="cancer@challenger does not resolve"):
        _run(_monitor(registered, MemoryObjectStore(), tmp_path), _request(alias="challenger"))


# ---- the API and the gauges ----------------------------------------------------------------------
def test_a_monitoring_job_is_queued_polled_and_listed_apart_from_training(
    client: TestClient, queue: FakeQueue
) -> None:
    response = client.post("/v1/monitor", json={"model_name": NAME, "window_hours": 2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "monitor" and job["status"] == "queued" and job["result"] is None
    assert response.headers["Location"] == f"/v1/jobs/{job['job_id']}"
    assert queue.wait_until(lambda sent: job["job_id"] in sent)
    listed = client.get("/v1/jobs", params={"kind": "monitor"}).json()
    assert [j["job_id"] for j in listed] == [job["job_id"]]
    assert client.get("/v1/jobs", params={"kind": "train"}).json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_name": NAME, "window_hours": 0}, "window_hours"),
        ({"model_name": NAME, "max_drift_share": 1.5}, "max_drift_share"),
        ({"model_name": NAME, "alias": "no spaces"}, "alias"),
        ({"model_name": NAME, "start": "2026-12-02T10:00:00"}, "start"),
        (
            {"model_name": NAME, "start": "2026-12-02T10:00:00Z", "end": "2026-12-02T09:00:00Z"},
            "start",
        ),
        ({"model_name": NAME, "min_rows": 1}, "min_rows"),
        ({"model_name": NAME, "thresholds": {}}, "thresholds"),
    ],
)
def test_a_bad_monitoring_request_is_a_422_naming_the_field(
    client: TestClient, body: dict[str, object], field: str
) -> None:
    response = client.post("/v1/monitor", json=body)
    assert response.status_code == 422
    assert field in response.text


def test_the_newest_result_of_each_model_is_exported_as_gauges(
    client: TestClient, store: JobStore
) -> None:
    for share, retrain in ((0.1, False), (0.8, True)):
        job, _ = store.create(NAME, {"model_name": NAME}, None, "monitor")
        assert store.claim(job.id, "w") is not None
        result = {
            "version": 3,
            "rows": 500,
            "drift": {
                "share": share,
                "drifted": 2,
                "features": {
                    "mean radius": {
                        "method": "K-S p_value",
                        "score": 0.001,
                        "threshold": 0.05,
                        "drifted": True,
                    }
                },
            },
            "quality": [{"version": 3, "metric": "accuracy", "live": 0.7, "drop": 0.25}],
            "decision": {"retrain": retrain, "reasons": []},
        }
        assert store.succeed(job.id, "w", result=result, model_version=3)
    text = client.get("/metrics").text
    assert f'mlops_monitor_drift_share{{model="{NAME}",version="3"}} 0.8' in text
    assert f'mlops_monitor_retrain{{model="{NAME}",version="3"}} 1.0' in text
    assert (
        f'mlops_monitor_feature_drift_score{{feature="mean radius",method="K-S p_value",'
        f'model="{NAME}",version="3"}} 0.001' in text
    )
    assert f'mlops_monitor_live_quality{{metric="accuracy",model="{NAME}",version="3"}} 0.7' in text
    assert f'mlops_monitor_window_rows{{model="{NAME}"}} 500.0' in text


def test_a_rollout_mirrors_copies_are_neither_traffic_nor_quality() -> None:
    rows = pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "c"],
            "version": [1, 2, 1, 1],
            "mirror": [False, True, None, False],
        }
    )
    # None: a file written before rollouts, merged with newer ones.
    assert list(answered(rows)["request_id"]) == ["a", "b", "c"]
    assert set(answered(rows)["version"]) == {1}
    older = rows.drop(columns="mirror")
    assert len(answered(older)) == 4
