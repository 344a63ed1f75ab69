"""A job from the DAG: trained on the ETL's train split, challenger and champion scored on its test
split, the decision in the result and on the new version, and the alias left to the DAG.

A real job against a local MLflow tracking store; the data set and the champion (a version an
earlier job registered, files copied as they were signed) are in an object store in memory.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from mlflow.tracking import MlflowClient
from mlops_common.datasets import frame_digest, load_builtin
from mlops_common.signing import generate_key_pair
from mlops_common.storage import S3Uri
from sklearn.model_selection import train_test_split
from trainer.schemas import TrainRequest
from trainer.training import Trainer

from .conftest import MemoryObjectStore
from .test_promotion import FakeGateway

PRIVATE, _ = generate_key_pair()
PREFIX = "s3://data/processed/breast_cancer/abc-t20-s42"
CHAMPION_URI = "s3://mlflow/1/models/m-champion/artifacts"


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _etl_output(store: MemoryObjectStore) -> pd.DataFrame:
    whole = load_builtin("breast_cancer")
    train, test = train_test_split(whole, test_size=0.2, random_state=42, stratify=whole.target)
    store.put_bytes(S3Uri.parse(f"{PREFIX}/train.parquet"), _parquet(train))
    store.put_bytes(S3Uri.parse(f"{PREFIX}/test.parquet"), _parquet(test))
    return test.reset_index(drop=True)


def _trainer(tracking: MlflowClient, store: MemoryObjectStore, gateway: FakeGateway) -> Trainer:
    return Trainer(
        store=store,  # type: ignore[arg-type]
        gateway=httpx.Client(base_url="http://gw", transport=httpx.MockTransport(gateway.handle)),
        mlflow_client=tracking,
        experiment="tests",
        max_rows=10_000,
        signing_key=PRIVATE,
    )


def _request(algorithm: str, params: dict[str, Any]) -> TrainRequest:
    return TrainRequest.model_validate(
        {
            "model_name": "cancer",
            "dataset": {
                "uri": f"{PREFIX}/train.parquet",
                "test_uri": f"{PREFIX}/test.parquet",
                "target": "target",
            },
            "algorithm": algorithm,
            "params": params,
            "promote": {"alias": "champion", "metric": "roc_auc", "move_alias": False},
            "lineage": {
                "dag_id": "train_and_promote",
                "dag_run_id": "scheduled__2026-12-07T03:00:00+00:00",
                "etl_manifest": f"{PREFIX}/manifest.json",
            },
        }
    )


def _publish_as_champion(tracking: MlflowClient, store: MemoryObjectStore, version: int) -> None:
    """Copy a registered version's stored files to where the gateway says the champion is."""
    source = str(tracking.get_model_version("cancer", str(version)).source)
    location = tracking.get_logged_model(source.removeprefix("models:/")).artifact_location
    store.put_dir(Path(location.removeprefix("file://")), S3Uri.parse(CHAMPION_URI))


def test_a_dag_job_compares_on_the_etl_test_split(tracking_store: MlflowClient) -> None:
    store = MemoryObjectStore()
    test = _etl_output(store)
    first = _trainer(tracking_store, store, FakeGateway(None)).run(
        _request("random_forest", {"n_estimators": 5, "max_depth": 2}), "job-first"
    )
    assert first.promotion is not None and first.promotion["promote"] is True
    assert first.promoted is False  # decide only: the DAG moves the alias
    _publish_as_champion(tracking_store, store, first.model_version)
    gateway = FakeGateway({"version": 1, "run_id": first.run_id, "artifact_uri": CHAMPION_URI})

    second = _trainer(tracking_store, store, gateway).run(
        _request("logistic_regression", {}), "job-second"
    )

    promotion = second.promotion
    assert promotion is not None and gateway.moves == []
    comparison = promotion["comparison"]
    # The ETL's test split, whole: the same rows (and digest) as its manifest names.
    assert comparison["rows_source"] == f"{PREFIX}/test.parquet"
    assert comparison["rows"] == len(test)
    assert comparison["rows_digest"] == frame_digest(test)
    # The champion's score is its own on these rows, not what its run recorded.
    assert promotion["current_value"] == comparison["champion_metrics"]["roc_auc"]
    assert promotion["candidate_value"] == second.metrics["roc_auc"]
    assert comparison["champion_error"] is None and comparison["champion_manifest_sha256"]
    assert promotion["promote"] is (promotion["candidate_value"] > promotion["current_value"])
    tags = tracking_store.get_model_version("cancer", str(second.model_version)).tags
    assert tags["mlops.compare.rows_digest"] == frame_digest(test)
    assert tags["mlops.compare.champion_version"] == "1"
    assert tags["mlops.compare.decision"] in {"promote", "keep"}
    assert tags["mlops.etl_manifest"] == f"{PREFIX}/manifest.json"
    params = tracking_store.get_run(second.run_id).data.params
    # Trained on all of the train split: the ETL split is the split.
    assert params["dataset_rows"] == str(len(load_builtin("breast_cancer")) - len(test))
    assert params["test_size"] == "unused" and params["eval_rows_count"] == str(len(test))
