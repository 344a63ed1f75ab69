"""The platform as a user drives it: over HTTP, against real PostgreSQL, Redis, S3 and MLflow."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlops_common.http import wait_until
from sklearn.datasets import load_breast_cancer

from .conftest import StackUrls, train, wait_for_job

pytestmark = pytest.mark.e2e


def churn_frame(n: int = 600, seed: int = 7) -> pd.DataFrame:
    """Customer table with numeric and categorical columns, missing values and a noisy target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure_months": rng.integers(0, 72, n).astype(float),
            "monthly_charges": rng.normal(70, 25, n).round(2),
            "contract": rng.choice(
                ["month-to-month", "one-year", "two-year"], n, p=[0.5, 0.3, 0.2]
            ),
            "payment": rng.choice(["card", "transfer", "check", None], n),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    frame.loc[rng.choice(n, 60, replace=False), "tenure_months"] = np.nan
    frame.loc[rng.choice(n, 40, replace=False), "monthly_charges"] = np.nan
    frame.loc[rng.choice(n, 30, replace=False), "contract"] = None
    risk = (
        (frame["contract"] == "month-to-month").astype(float) * 1.5
        - frame["tenure_months"].fillna(30) / 30
        + (frame["monthly_charges"].fillna(70) - 70) / 40
        + rng.normal(0, 0.6, n)
    )
    frame["churned"] = np.where(risk > 0, "yes", "no")
    return frame


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


# ---- the demo model `mlops up` trains on first start --------------------------------------------
def test_demo_model_answers_at_once(stack: StackUrls, http: httpx.Client) -> None:
    health = http.get(f"{stack.inference}/health")
    assert health.status_code == 200, health.text
    info = http.get(f"{stack.inference}/model-info").json()
    champion = http.get(f"{stack.gateway}/v1/models/demo/aliases/champion").json()
    assert info["version"] == champion["version"]
    assert info["artifact_uri"].startswith("s3://")
    # Signed by the trainer at registration and verified by inference before loading.
    assert info["signed_by"].startswith("ed25519:") and len(info["manifest_sha256"]) == 64
    rows = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(5)
    response = http.post(f"{stack.inference}/predict", json={"instances": rows_of(rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 5 and len(body["probabilities"][0]) == 2
    as_lists = http.post(f"{stack.inference}/predict", json={"instances": rows.to_numpy().tolist()})
    assert as_lists.json()["predictions"] == body["predictions"]


# ---- training and promotion ---------------------------------------------------------------------
def test_promotion_takes_better_versions_and_refuses_worse(
    stack: StackUrls, http: httpx.Client
) -> None:
    name = "e2e-wine"
    promote = {"alias": "champion", "metric": "f1", "min_improvement": 0.0}
    weak = {"algorithm": "random_forest", "params": {"n_estimators": 1, "max_depth": 1}}
    first = train(
        http,
        stack,
        {"model_name": name, "dataset": {"builtin": "wine"}, **weak, "promote": promote},
    )
    assert first["status"] == "succeeded", first["error"]
    assert first["promoted"] is True and "no model held champion" in first["promotion"]["reason"]

    better = train(
        http,
        stack,
        {
            "model_name": name,
            "dataset": {"builtin": "wine"},
            "algorithm": "logistic_regression",
            "promote": promote,
        },
    )
    assert better["promoted"] is True, better["promotion"]
    assert better["metrics"]["f1"] > first["metrics"]["f1"]

    worse = train(
        http,
        stack,
        {
            "model_name": name,
            "dataset": {"builtin": "wine"},
            **weak,
            "promote": {**promote, "min_improvement": 0.01},
        },
    )
    assert worse["status"] == "succeeded" and worse["promoted"] is False
    assert worse["promotion"]["reason"].startswith("not promoted")

    champion = http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion").json()
    assert champion["version"] == better["model_version"]
    history = http.get(f"{stack.gateway}/v1/models/{name}/aliases/champion/history").json()[
        "records"
    ]
    assert [r["to_version"] for r in history] == [better["model_version"], first["model_version"]]
    # The trainer's token is the actor; the job it acted for is the note beside it.
    assert history[0]["actor"] == "trainer"
    assert history[0]["on_behalf_of"].startswith("trainer:job/")
    listing = http.get(f"{stack.gateway}/v1/models/{name}").json()
    assert {v["version"] for v in listing["versions"]} >= {1, 2, 3}
    assert listing["aliases"]["champion"] == better["model_version"]


def test_regression_on_a_builtin_set(stack: StackUrls, http: httpx.Client) -> None:
    job = train(http, stack, {"model_name": "e2e-diabetes", "dataset": {"builtin": "diabetes"}})
    assert job["status"] == "succeeded", job["error"]
    assert job["task"] == "regression" and set(job["metrics"]) == {"rmse", "mae", "r2"}


def test_idempotency_key_returns_the_same_job(stack: StackUrls, http: httpx.Client) -> None:
    body = {
        "model_name": "e2e-iris",
        "dataset": {"builtin": "iris"},
        "idempotency_key": "e2e-iris-once",
    }
    first = http.post(f"{stack.trainer}/v1/train", json=body).json()
    again = http.post(f"{stack.trainer}/v1/train", json=body).json()
    assert again["job_id"] == first["job_id"]
    assert wait_for_job(http, stack, first["job_id"])["status"] == "succeeded"


# ---- CSV with categorical columns and missing values, served through inference ------------------
@pytest.fixture(scope="module")
def churn_model(stack: StackUrls, http: httpx.Client, extra_inference: Any) -> dict[str, Any]:
    frame = churn_frame()
    stack.s3().put_object(
        Bucket="data", Key="e2e/churn.csv", Body=frame.to_csv(index=False).encode()
    )
    job = train(
        http,
        stack,
        {
            "model_name": "e2e-churn",
            "dataset": {"uri": "s3://data/e2e/churn.csv", "target": "churned"},
            "algorithm": "logistic_regression",
            "promote": {"alias": "champion", "metric": "roc_auc"},
        },
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["promoted"] is True
    url = extra_inference("e2e-churn", 18801)
    return {"job": job, "frame": frame, "url": url}


def test_csv_training_logs_data_set_and_metrics(
    churn_model: dict[str, Any], mlflow_env: None
) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(churn_model["job"]["run_id"])
    assert run.data.params["dataset_source"] == "s3://data/e2e/churn.csv"
    assert int(run.data.params["dataset_rows"]) == len(churn_model["frame"])
    assert run.data.params["dataset_digest"]
    assert 0.5 < run.data.metrics["roc_auc"] <= 1.0
    assert run.inputs.dataset_inputs, "the training data set is recorded as a run input"


def test_inference_matches_the_registered_model(
    churn_model: dict[str, Any], http: httpx.Client, mlflow_env: None
) -> None:
    import mlflow.sklearn

    rows = churn_model["frame"].drop(columns=["churned"]).sample(40, random_state=3)
    payload = rows_of(rows)
    payload[0]["payment"] = None
    payload[1]["tenure_months"] = None
    payload[2]["region"] = "a-region-never-seen"
    response = http.post(f"{churn_model['url']}/predict", json={"instances": payload})
    assert response.status_code == 200, response.text
    body = response.json()
    registered = mlflow.sklearn.load_model(
        f"models:/e2e-churn/{churn_model['job']['model_version']}"
    )
    frame = pd.DataFrame(payload)
    for column in ("contract", "payment", "region"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    assert body["predictions"] == registered.predict(frame).tolist()
    np.testing.assert_allclose(body["probabilities"], registered.predict_proba(frame), rtol=1e-9)
    assert body["model"] == {
        "name": "e2e-churn",
        "version": churn_model["job"]["model_version"],
        "alias": "champion",
    }


def test_alias_move_is_served_without_restart_or_failed_requests(
    churn_model: dict[str, Any], stack: StackUrls, http: httpx.Client
) -> None:
    url = churn_model["url"]
    second = train(
        http,
        stack,
        {
            "model_name": "e2e-churn",
            "dataset": {"uri": "s3://data/e2e/churn.csv", "target": "churned"},
            "algorithm": "random_forest",
        },
    )
    assert second["status"] == "succeeded" and second["promoted"] is None
    rows = rows_of(churn_model["frame"].drop(columns=["churned"]).head(3))
    failures: list[str] = []
    served: set[int] = set()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10, headers=stack.auth) as client:
            while not stop.is_set():
                r = client.post(f"{url}/predict", json={"instances": rows})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    served.add(r.json()["model"]["version"])

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for target in (second["model_version"], churn_model["job"]["model_version"]):
            moved = http.put(
                f"{stack.gateway}/v1/models/e2e-churn/aliases/champion",
                json={"version": target, "reason": "e2e"},
                headers={"X-Actor": "e2e-test"},
            )
            assert moved.status_code == 200, moved.text
            # The gateway publishes the move on Redis; inference swaps on the event (not a poll).
            assert wait_until(
                lambda v=target: http.get(f"{url}/model-info").json()["version"] == v, 5, 0.05
            ), f"inference did not pick up v{target} within 5 s"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert {second["model_version"], churn_model["job"]["model_version"]} <= served


def test_open_inference_protocol_v2_matches_predict(stack: StackUrls, http: httpx.Client) -> None:
    rows = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(4)
    assert http.get(f"{stack.inference}/v2/health/ready").json() == {"ready": True}
    metadata = http.get(f"{stack.inference}/v2/models/demo").json()
    assert [i["name"] for i in metadata["inputs"]] == list(rows.columns)
    request = {
        "id": "e2e-1",
        "inputs": [
            {
                "name": column,
                "shape": [len(rows)],
                "datatype": "FP64",
                "data": rows[column].tolist(),
            }
            for column in rows.columns
        ],
    }
    answer = http.post(f"{stack.inference}/v2/models/demo/infer", json=request)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert answer.json()["id"] == "e2e-1"
    plain = http.post(f"{stack.inference}/predict", json={"instances": rows_of(rows)}).json()
    assert outputs["predict"]["data"] == plain["predictions"]
    bad = http.post(
        f"{stack.inference}/v2/models/demo/infer",
        json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0]}]},
    )
    assert bad.status_code == 422 and isinstance(bad.json()["error"], str)


def test_tritonclient_talks_to_inference_unchanged(stack: StackUrls, http: httpx.Client) -> None:
    """NVIDIA's V2 client, with its defaults (binary tensors both ways), over real HTTP."""
    import tritonclient.http as triton

    rows = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(6)
    url = httpx.URL(stack.inference)
    client = triton.InferenceServerClient(url=f"{url.host}:{url.port}", connection_timeout=10.0)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("demo", headers=stack.auth)
        metadata = client.get_model_metadata("demo", headers=stack.auth)
        assert [i["name"] for i in metadata["inputs"]] == list(rows.columns)
        inputs = []
        for column in rows.columns:
            tensor = triton.InferInput(column, [len(rows), 1], "FP64")
            tensor.set_data_from_numpy(rows[[column]].to_numpy(dtype=np.float64))
            inputs.append(tensor)
        result = client.infer("demo", inputs, request_id="triton-e2e", headers=stack.auth)
    finally:
        client.close()
    plain = http.post(f"{stack.inference}/predict", json={"instances": rows_of(rows)}).json()
    assert result.get_response()["id"] == "triton-e2e"
    assert result.as_numpy("predict").tolist() == plain["predictions"]
    np.testing.assert_allclose(result.as_numpy("predict_proba"), plain["probabilities"])


def test_every_service_exposes_prometheus_metrics(stack: StackUrls, http: httpx.Client) -> None:
    http.get(f"{stack.inference}/model-info")
    for url in (stack.trainer, stack.gateway, stack.inference):
        metrics = http.get(f"{url}/metrics")
        assert metrics.status_code == 200
        assert (
            "http_requests_total" in metrics.text
            and "http_request_duration_seconds" in metrics.text
        )
    inference = http.get(f"{stack.inference}/metrics").text
    assert 'inference_model_version{alias="champion",model="demo"}' in inference
    assert "inference_compiled_path 1.0" in inference


# ---- jobs survive restarts ----------------------------------------------------------------------
def test_a_job_survives_its_worker_being_killed(stack: StackUrls, http: httpx.Client) -> None:
    body = {
        "model_name": "e2e-slow",
        "dataset": {"builtin": "digits"},
        "algorithm": "random_forest",
        "params": {"n_estimators": 400},
    }
    job_id = http.post(f"{stack.trainer}/v1/train", json=body).json()["job_id"]
    assert wait_until(
        lambda: http.get(f"{stack.trainer}/v1/jobs/{job_id}").json()["status"] == "running", 60
    )
    stack.kill("trainer-worker")
    final = wait_for_job(http, stack, job_id, timeout_s=300)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 2


def test_jobs_survive_an_api_restart(stack: StackUrls, http: httpx.Client) -> None:
    job = train(http, stack, {"model_name": "e2e-iris", "dataset": {"builtin": "iris"}})
    stack.kill("trainer")

    def back() -> bool:
        return http.get(f"{stack.trainer}/v1/jobs/{job['job_id']}").json()["status"] == "succeeded"

    assert wait_until(back, 90)


# ---- bad input gets a 4xx naming the field ------------------------------------------------------
def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_trainer_rejects_bad_requests(stack: StackUrls, http: httpx.Client) -> None:
    url = f"{stack.trainer}/v1/train"
    bad_json = http.post(
        url, content=b'{"model_name": "x",', headers={"content-type": "application/json"}
    )
    assert error_of(bad_json, 422)["field"] == "body"
    unknown_set = http.post(url, json={"model_name": "x", "dataset": {"builtin": "mnist"}})
    assert error_of(unknown_set, 422)["field"] == "dataset.builtin"
    unknown_algo = http.post(
        url, json={"model_name": "x", "dataset": {"builtin": "iris"}, "algorithm": "xgboost"}
    )
    assert error_of(unknown_algo, 422)["field"] == "algorithm"
    stack.s3().put_object(Bucket="data", Key="e2e/no-target.csv", Body=b"a,b\n1,2\n3,4\n")
    missing_target = http.post(
        url,
        json={"model_name": "x", "dataset": {"uri": "s3://data/e2e/no-target.csv", "target": "y"}},
    )
    error = error_of(missing_target, 422)
    assert error["field"] == "dataset.target" and "'y'" in error["message"]
    missing_object = http.post(
        url, json={"model_name": "x", "dataset": {"uri": "s3://data/e2e/absent.csv", "target": "y"}}
    )
    assert error_of(missing_object, 422)["field"] == "dataset.uri"
    assert error_of(http.get(f"{stack.trainer}/v1/jobs/nope"), 404)["field"] == "job_id"


def test_gateway_rejects_unknown_models_and_aliases(stack: StackUrls, http: httpx.Client) -> None:
    assert (
        error_of(http.get(f"{stack.gateway}/v1/models/no-such-model/aliases/champion"), 404)[
            "field"
        ]
        == "name"
    )
    assert (
        error_of(http.get(f"{stack.gateway}/v1/models/demo/aliases/no-such-alias"), 404)["field"]
        == "alias"
    )
    assert (
        error_of(
            http.put(f"{stack.gateway}/v1/models/demo/aliases/champion", json={"version": 999}), 404
        )["field"]
        == "version"
    )
    assert (
        error_of(http.put(f"{stack.gateway}/v1/models/demo/aliases/champion", json={}), 422)[
            "field"
        ]
        == "version"
    )


def test_inference_rejects_bad_rows(stack: StackUrls, http: httpx.Client) -> None:
    url = f"{stack.inference}/predict"
    row = rows_of(load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(1))[0]
    missing = {k: v for k, v in row.items() if k != "mean radius"}
    assert "mean radius" in error_of(http.post(url, json={"instances": [missing]}), 422)["message"]
    wrong_type = {**row, "mean radius": "large"}
    assert "mean radius" in error_of(http.post(url, json={"instances": [wrong_type]}), 422)["field"]
    unknown = {**row, "colour": 3}
    assert "colour" in error_of(http.post(url, json={"instances": [unknown]}), 422)["message"]
    short = list(row.values())[:-1]
    assert error_of(http.post(url, json={"instances": [short]}), 422)["field"].startswith(
        "instances"
    )
    assert error_of(http.post(url, json={"instances": []}), 422)["field"] == "instances"
    malformed = http.post(url, content=b"{", headers={"content-type": "application/json"})
    assert error_of(malformed, 422)["field"] == "body"
    assert http.post(url, json={"instances": [row]}).status_code == 200


def test_lineage_walks_from_the_served_model_back_to_its_data_in_s3(
    churn_model: dict[str, Any], stack: StackUrls, http: httpx.Client
) -> None:
    url = churn_model["url"]
    info = http.get(f"{url}/model-info").json()
    lineage: dict[str, Any] = {}

    def reported() -> bool:
        # Inference tells the gateway what it serves with its next alias poll (every second).
        response = http.get(
            f"{stack.gateway}/v1/models/{info['name']}/versions/{info['version']}/lineage"
        )
        assert response.status_code == 200, response.text
        lineage.clear()
        lineage.update(response.json())
        return any(s["instance"].endswith(":18801") for s in lineage["served_by"])

    assert wait_until(reported, 15), lineage.get("served_by")
    version = lineage["version"]
    assert version["signature"]["status"] == "verified", version["signature"]
    assert version["signature"]["manifest_sha256"] == info["manifest_sha256"]
    run = lineage["training_run"]
    assert run["run_id"] == churn_model["job"]["run_id"]
    assert run["job_id"] == churn_model["job"]["job_id"]
    assert run["metrics"]["roc_auc"] == churn_model["job"]["metrics"]["roc_auc"]
    moves = lineage["alias_moves"]
    assert any(m["alias"] == "champion" and m["to_version"] == info["version"] for m in moves)
    assert "champion" in lineage["aliases_now"]
    # Back to the objects: the data set it was trained on, and the files inference verified.
    dataset = lineage["dataset"]
    assert dataset["source"] == "s3://data/e2e/churn.csv"
    assert dataset["rows"] == len(churn_model["frame"])
    bucket, key = dataset["source"].removeprefix("s3://").split("/", 1)
    assert stack.s3().head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    art_bucket, art_prefix = version["artifact_uri"].removeprefix("s3://").split("/", 1)
    listed = stack.s3().list_objects_v2(Bucket=art_bucket, Prefix=art_prefix.rstrip("/") + "/")
    names = {obj["Key"].rsplit("/", 1)[-1] for obj in listed.get("Contents", [])}
    assert {"mlops-signature.json", "model.skops", "MLmodel"} <= names


def test_every_run_logs_its_plots(churn_model: dict[str, Any], mlflow_env: None) -> None:
    from mlflow.tracking import MlflowClient

    listed = MlflowClient().list_artifacts(churn_model["job"]["run_id"], "plots")
    names = {Path(a.path).name for a in listed}
    assert {
        "confusion_matrix.png",
        "roc_curve.png",
        "precision_recall_curve.png",
        "feature_importance.png",
    } <= names
    assert all(a.file_size and a.file_size > 1000 for a in listed if a.path.endswith(".png"))


def test_predictions_and_feedback_are_logged_to_s3_joinable_by_request_id(
    churn_model: dict[str, Any], stack: StackUrls, http: httpx.Client
) -> None:
    url = churn_model["url"]
    rows = rows_of(churn_model["frame"].drop(columns=["churned"]).head(4))
    answer = http.post(
        f"{url}/predict", json={"instances": rows}, headers={"X-Request-Id": "e2e-log-1"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Request-Id"] == answer.json()["request_id"] == "e2e-log-1"
    feedback = http.post(f"{url}/v1/feedback", json={"request_id": "e2e-log-1", "label": 1})
    assert feedback.status_code == 202, feedback.text
    s3 = stack.s3()

    def rows_for(prefix: str) -> pd.DataFrame:
        """Every logged row of request e2e-log-1 under ``prefix`` (empty until flushed)."""
        found = s3.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", [])
        tables = [
            pd.read_parquet(io.BytesIO(s3.get_object(Bucket="data", Key=o["Key"])["Body"].read()))
            for o in found
        ]
        merged = pd.concat(tables) if tables else pd.DataFrame({"request_id": []})
        return merged[merged["request_id"] == "e2e-log-1"]

    # Written by the writer thread within INFERENCE_PREDICTION_LOG_FLUSH_INTERVAL_S (2 s here).
    assert wait_until(lambda: len(rows_for("predictions/e2e-churn/")) == 4, 30, 1.0)
    mine = rows_for("predictions/e2e-churn/")
    assert list(mine["prediction"]) == answer.json()["predictions"]
    assert set(mine["version"]) == {answer.json()["model"]["version"]}
    probabilities = {f"proba.{c}" for c in answer.json()["classes"]}
    assert {"feature.tenure_months", "feature.contract"} | probabilities <= set(mine.columns)
    assert wait_until(lambda: len(rows_for("feedback/e2e-churn/")) == 1, 30, 1.0)
    joined = mine.merge(rows_for("feedback/e2e-churn/")[["request_id", "label"]], on="request_id")
    assert len(joined) == 4 and set(joined["label"]) == {1}
    metrics = http.get(f"{url}/metrics").text
    written = [
        line
        for line in metrics.splitlines()
        if line.startswith('inference_prediction_log_records_total{outcome="written"}')
    ]
    assert written and float(written[0].split()[-1]) >= 4
