"""Airflow with the Celery executor driving the platform: ETL, training and promotion over HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlops_common.datasets import load_builtin
from mlops_common.http import wait_until

from .conftest import StackUrls, train

pytestmark = pytest.mark.e2e


class Airflow:
    """The few REST API v2 calls a user makes: log in, unpause, trigger, watch, read task logs."""

    def __init__(self, stack: StackUrls) -> None:
        url = stack.env["AIRFLOW_URL"]
        token = httpx.post(
            f"{url}/auth/token",
            json={
                "username": stack.env["AIRFLOW_USERNAME"],
                "password": stack.env["AIRFLOW_PASSWORD"],
            },
            timeout=30,
        )
        assert token.status_code in (200, 201), token.text
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )

    def run(self, dag_id: str, conf: dict[str, Any], timeout_s: float = 300) -> dict[str, Any]:
        self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        created = self.http.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        assert created.status_code == 200, created.text
        run_id = created.json()["dag_run_id"]
        run: dict[str, Any] = {}

        def finished() -> bool:
            run.update(self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json())
            return run["state"] in ("success", "failed")

        assert wait_until(finished, timeout_s, interval_s=1.0), (
            f"{dag_id} run still {run.get('state')}"
        )
        tasks = self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        run["tasks"] = {ti["task_id"]: ti for ti in tasks["task_instances"]}
        return run

    def log(self, run: dict[str, Any], task_id: str) -> str:
        ti = run["tasks"][task_id]
        response = self.http.get(
            f"/api/v2/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}/taskInstances/{task_id}/logs/{max(ti['try_number'], 1)}",
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        return json.dumps(response.json()["content"])

    def states(self, run: dict[str, Any]) -> dict[str, str]:
        return {task_id: ti["state"] for task_id, ti in run["tasks"].items()}


@pytest.fixture(scope="module")
def airflow(stack: StackUrls) -> Iterator[Airflow]:
    if "AIRFLOW_URL" not in stack.env:
        pytest.skip("this stack runs without Airflow")
    client = Airflow(stack)
    yield client
    client.http.close()


def test_login_needs_the_real_password(stack: StackUrls, airflow: Airflow) -> None:
    wrong = httpx.post(
        f"{stack.env['AIRFLOW_URL']}/auth/token",
        json={"username": stack.env["AIRFLOW_USERNAME"], "password": "not-the-password"},
    )
    assert wrong.status_code in (401, 403)
    assert httpx.get(f"{stack.env['AIRFLOW_URL']}/api/v2/dags").status_code == 401
    dags = airflow.http.get("/api/v2/dags").json()["dags"]
    assert {d["dag_id"] for d in dags} >= {"etl_dataset", "train_and_promote"}
    assert airflow.http.get("/api/v2/importErrors").json()["total_entries"] == 0


def test_etl_writes_splits_and_a_manifest(stack: StackUrls, airflow: Airflow) -> None:
    run = airflow.run(
        "etl_dataset", {"source": "wine", "dataset_name": "e2e-wine", "test_size": 0.25, "seed": 3}
    )
    assert run["state"] == "success", airflow.states(run)
    listing = stack.s3().list_objects_v2(Bucket="data", Prefix="processed/e2e-wine/")
    keys = {obj["Key"].rsplit("/", 1)[-1] for obj in listing.get("Contents", [])}
    assert keys == {"train.parquet", "test.parquet", "manifest.json"}
    manifest_key = next(o["Key"] for o in listing["Contents"] if o["Key"].endswith("manifest.json"))
    manifest = json.loads(stack.s3().get_object(Bucket="data", Key=manifest_key)["Body"].read())
    assert manifest["rows"] == {"total": 178, "train": 133, "test": 45}
    assert manifest["digest"] and len(manifest["columns"]) == 14


def test_a_failed_data_check_fails_the_run_with_the_reason(
    stack: StackUrls, airflow: Airflow
) -> None:
    stack.s3().put_object(
        Bucket="data", Key="raw/e2e-bad.csv", Body=b"a,label\n" + b"1,x\n" * 30 + b"-5,y\n"
    )
    run = airflow.run(
        "etl_dataset",
        {
            "source": "s3://data/raw/e2e-bad.csv",
            "target": "label",
            "dataset_name": "e2e-bad",
            "ranges": {"a": [0, None]},
        },
    )
    assert run["state"] == "failed"
    assert airflow.states(run)["validate"] == "failed"
    assert run["tasks"]["validate"]["try_number"] == 1, "a failed check is not retried"
    assert "column 'a' has 1 values below 0" in airflow.log(run, "validate")


def test_train_and_promote_promotes_better_challengers_only(
    stack: StackUrls, airflow: Airflow, http: httpx.Client, extra_inference: Any
) -> None:
    name = "e2e-airflow"
    base = {
        "model_name": name,
        "source": "breast_cancer",
        "dataset_name": "e2e-bc",
        "metric": "roc_auc",
    }
    weak = {"algorithm": "random_forest", "algorithm_params": {"n_estimators": 1, "max_depth": 1}}

    first = airflow.run("train_and_promote", {**base, **weak})
    assert first["state"] == "success", airflow.states(first)
    v1 = http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion").json()["version"]

    # A second inference instance serves this model; its connection is made through the API.
    url = extra_inference(name, 18802)
    conn = {
        "connection_id": "inference_e2e",
        "conn_type": "http",
        "host": stack.env.get("E2E_HOST_FROM_STACK", "127.0.0.1"),
        "port": 18802,
        "schema": "http",
        # The DAG checks the new version is served: a token that may read this model's serving.
        "password": stack.create_token(
            f"e2e-airflow-check-{uuid.uuid4().hex[:6]}", "predict", models=name
        ),
    }
    airflow.http.delete("/api/v2/connections/inference_e2e")
    assert airflow.http.post("/api/v2/connections", json=conn).status_code == 201

    better = airflow.run(
        "train_and_promote",
        {**base, "algorithm": "logistic_regression", "inference_conn_id": "inference_e2e"},
    )
    assert better["state"] == "success", airflow.states(better)
    assert airflow.states(better)["promote"] == "success"
    assert airflow.states(better)["inference_serves"] == "success"
    champion = http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion").json()
    assert champion["version"] > v1
    assert http.get(f"{url}/model-info").json()["version"] == champion["version"]
    history = http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion/history").json()[
        "records"
    ]
    # The token is the actor; the DAG run it acted for is the note beside it.
    assert history[0]["actor"] == "airflow"
    assert history[0]["on_behalf_of"].startswith("airflow:train_and_promote/")
    # A fair comparison: both versions scored on the rows of the ETL's test split, the same
    # rows' digest as the ETL manifest records; the lineage names the DAG run and the manifest.
    jobs = http.get(f"{stack.trainer}/v1/jobs", params={"model_name": name}).json()
    job = next(j for j in jobs if j["model_version"] == champion["version"])
    comparison = job["promotion"]["comparison"]
    assert comparison["rows_source"].endswith("/test.parquet")
    assert job["promotion"]["current_version"] == v1
    assert {"roc_auc"} <= set(comparison["candidate_metrics"]) & set(comparison["champion_metrics"])
    lineage = http.get(
        f"{stack.gateway}/v1/models/{name}/versions/{champion['version']}/lineage"
    ).json()
    assert lineage["etl"]["dag_id"] == "train_and_promote"
    assert lineage["etl"]["dag_run_id"] == better["dag_run_id"]
    manifest_uri = lineage["dataset"]["etl_manifest"]
    bucket, key = manifest_uri.removeprefix("s3://").split("/", 1)
    manifest = json.loads(stack.s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert comparison["rows_digest"].startswith(manifest["test_digest"][:16])

    worse = airflow.run(
        "train_and_promote", {**base, **weak, "margin": 0.01, "inference_conn_id": "inference_e2e"}
    )
    assert worse["state"] == "success", airflow.states(worse)
    assert airflow.states(worse)["promote"] == "skipped"
    assert "not promoted: " in airflow.log(worse, "challenger_wins")
    assert (
        http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion").json()["version"]
        == champion["version"]
    )
    assert wait_until(
        lambda: http.get(f"{url}/model-info").json()["version"] == champion["version"], 10
    )


def test_a_failed_training_fails_the_run_with_the_trainer_reason(airflow: Airflow) -> None:
    run = airflow.run(
        "train_and_promote",
        {
            "model_name": "e2e-airflow-bad",
            "source": "breast_cancer",
            "dataset_name": "e2e-bc",
            "algorithm": "ridge",
        },
    )
    # The trainer accepts the job (the task is only known once the data is read), the worker
    # refuses the algorithm, and the sensor fails for good with the trainer's reason.
    assert run["state"] == "failed"
    assert airflow.states(run)["wait_for_training"] == "failed"
    assert run["tasks"]["wait_for_training"]["try_number"] == 1
    assert "ridge" in airflow.log(run, "wait_for_training")
    assert "does not do classification" in airflow.log(run, "wait_for_training")


# ---- monitor_model: drift and live quality that trigger retraining ------------------------------
DRIFT_MODEL = "e2e-drift"


def _logged_rows(http: httpx.Client, url: str) -> float:
    for line in http.get(f"{url}/metrics").text.splitlines():
        if line.startswith('inference_prediction_log_records_total{outcome="written"}'):
            return float(line.split()[-1])
    return 0.0


def _serve(http: httpx.Client, url: str, frame: pd.DataFrame, labels: pd.Series | None) -> None:
    """``frame``'s rows through /predict, and until the log has written them: the first 40 one
    per request with their label sent back (live quality matches one-row requests), the rest in
    batches."""
    before = _logged_rows(http, url)
    records = json.loads(frame.to_json(orient="records"))
    for i, row in enumerate(records[:40]):
        answer = http.post(f"{url}/predict", json={"instances": [row]})
        assert answer.status_code == 200, answer.text
        if labels is not None:
            label = int(labels.iloc[i])
            sent = http.post(
                f"{url}/v1/feedback",
                json={"request_id": answer.json()["request_id"], "label": label},
            )
            assert sent.status_code == 202, sent.text
    for start in range(40, len(records), 20):
        answer = http.post(f"{url}/predict", json={"instances": records[start : start + 20]})
        assert answer.status_code == 200, answer.text
    assert wait_until(lambda: _logged_rows(http, url) >= before + len(records), 60, 0.5)


def _monitor(airflow: Airflow, start: str, http: httpx.Client, stack: StackUrls) -> Any:
    conf = {
        "model_name": DRIFT_MODEL,
        "window_start": start,
        "min_rows": 100,
        "min_labels": 30,
        "retrain_params": {"source": "breast_cancer", "dataset_name": "e2e-drift"},
    }
    try:
        run = airflow.run("monitor_model", conf)
    finally:
        # Unpaused, its hourly schedule would monitor `demo` in the middle of later tests.
        airflow.http.patch("/api/v2/dags/monitor_model", json={"is_paused": True})
    assert run["state"] == "success", airflow.states(run)
    jobs = http.get(
        f"{stack.trainer}/v1/jobs", params={"model_name": DRIFT_MODEL, "kind": "monitor"}
    ).json()
    return run, jobs[0]


def _retraining_runs(airflow: Airflow) -> list[dict[str, Any]]:
    runs = airflow.http.get("/api/v2/dags/train_and_promote/dagRuns", params={"limit": 100}).json()[
        "dag_runs"
    ]
    return [r for r in runs if (r.get("conf") or {}).get("model_name") == DRIFT_MODEL]


def test_monitor_model_retrains_on_shifted_traffic_exactly_once_and_never_on_unshifted(
    stack: StackUrls,
    airflow: Airflow,
    http: httpx.Client,
    extra_inference: Any,
    mlflow_env: None,
) -> None:
    trained = train(
        http,
        stack,
        {
            "model_name": DRIFT_MODEL,
            "dataset": {"builtin": "breast_cancer"},
            "algorithm": "logistic_regression",
            "promote": {"alias": "champion", "metric": "accuracy"},
        },
    )
    assert trained["status"] == "succeeded" and trained["promoted"], trained
    url = extra_inference(DRIFT_MODEL, 18805)
    airflow.http.patch("/api/v2/dags/train_and_promote", json={"is_paused": False})
    whole = load_builtin("breast_cancer")
    features = whole.drop(columns=["target"])

    # Traffic like the training data, labelled correctly: nothing to do.
    calm = datetime.now(UTC).isoformat()
    sample = whole.sample(200, random_state=7)
    _serve(http, url, features.loc[sample.index], sample["target"])
    run, job = _monitor(airflow, calm, http, stack)
    result = job["result"]
    assert result["rows"] == 200 and result["drift"]["share"] < 0.5, result
    quality = {q["version"]: q for q in result["quality"]}
    assert quality[trained["model_version"]]["labelled"] == 40
    assert quality[trained["model_version"]]["live"] >= 0.8
    assert airflow.states(run)["trigger_retraining"] == "skipped"
    assert _retraining_runs(airflow) == []

    # The same inputs, shifted: the monitor triggers one retraining run, with the reason.
    shifted_at = datetime.now(UTC).isoformat()
    _serve(http, url, features.sample(200, random_state=8) * 1.8, None)
    run, job = _monitor(airflow, shifted_at, http, stack)
    assert job["result"]["decision"]["retrain"], job["result"]
    assert airflow.states(run)["trigger_retraining"] == "success"
    # Hourly monitoring of the same served version does not retrain again that day.
    again, _ = _monitor(airflow, shifted_at, http, stack)
    assert airflow.states(again)["trigger_retraining"] == "skipped"
    retraining = _retraining_runs(airflow)
    assert [r["dag_run_id"] for r in retraining] == [
        f"monitor__{DRIFT_MODEL}__v{trained['model_version']}__{datetime.now(UTC).date()}"
    ]
    reason = retraining[0]["conf"]["trigger_reason"]
    assert reason.startswith("monitor_model: drift share") and job["result"]["run_id"] in reason

    # The retraining run trains, and its run says why it was started.
    run_id = retraining[0]["dag_run_id"]

    def finished() -> bool:
        state = airflow.http.get(f"/api/v2/dags/train_and_promote/dagRuns/{run_id}").json()
        return state["state"] in ("success", "failed")

    assert wait_until(finished, 300, 2.0)
    jobs = http.get(
        f"{stack.trainer}/v1/jobs", params={"model_name": DRIFT_MODEL, "kind": "train"}
    ).json()
    newest = jobs[0]
    assert newest["status"] == "succeeded" and newest["job_id"] != trained["job_id"]
    tags = MlflowClient().get_run(newest["run_id"]).data.tags
    assert tags["mlops.trigger_reason"] == reason
    assert tags["mlops.dag_run_id"] == run_id
