"""The ETL tasks both DAGs use: extract, check, split. Data moves through S3; XComs carry URIs."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, task
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

ETL_PARAMS: dict[str, Any] = {
    "source": Param(
        "breast_cancer", type="string", description="built-in set or s3://data/raw/….csv|parquet"
    ),
    "target": Param("", type="string", description="target column (required for s3:// sources)"),
    "dataset_name": Param("breast_cancer", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
    "test_size": Param(0.2, type="number", exclusiveMinimum=0, exclusiveMaximum=0.9),
    "seed": Param(42, type="integer"),
    "max_null_fraction": Param(0.5, type="number", minimum=0, maximum=1),
    "ranges": Param(
        {}, type="object", description='{"column": [low, high]}; null for an open bound'
    ),
}

# Every task: retried with backoff on transient failures, and never left hanging.
TASK_DEFAULTS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(minutes=20),
}


# Tasks read the run's params (injected by Airflow as ``params``): both DAGs declare the same
# ETL params, so one set of tasks serves both.
@task
def extract(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the raw table (built-in set or s3://data/raw/…) and stage it as Parquet."""
    assert params is not None
    # Heavy imports stay inside tasks so that parsing the DAG files is fast.
    from mlops_common.datasets import frame_digest
    from mlops_common.storage import S3Uri

    from mlops_dags import etl
    from mlops_dags.connections import object_store

    source, target, name = params["source"], params["target"], params["dataset_name"]
    try:
        spec = etl.parse_source(source, target or None)
    except etl.DataCheckFailed as exc:
        raise AirflowFailException(str(exc)) from exc
    store = object_store()
    frame = etl.load_raw(store, spec)
    digest = frame_digest(frame)
    staged = S3Uri(etl.DATA_BUCKET, f"staging/{name}/{digest}.parquet")
    store.put_bytes(staged, etl.to_parquet(frame))
    log.info("extracted %s: %d rows x %d columns -> %s", source, len(frame), frame.shape[1], staged)
    return {"source": spec, "staged_uri": str(staged), "digest": digest, "rows": len(frame)}


@task
def validate(staged: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Schema, target, null and range checks; a failed check fails the run with the reason."""
    assert params is not None
    from mlops_dags import etl
    from mlops_dags.connections import object_store

    frame = etl.load_table(object_store(), staged["staged_uri"])
    checks = etl.Checks(
        max_null_fraction=float(params["max_null_fraction"]), ranges=params["ranges"] or {}
    )
    try:
        summary = etl.check(frame, staged["source"]["target"], checks)
    except etl.DataCheckFailed as exc:
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from exc
    log.info("checks passed: %s", summary)
    return {**staged, "checks": summary}


@task
def split_and_write(
    checked: dict[str, Any], params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Split reproducibly and write train/test Parquet and a manifest under s3://data/processed/."""
    assert params is not None
    from mlops_dags import etl
    from mlops_dags.connections import object_store

    store = object_store()
    frame = etl.load_table(store, checked["staged_uri"])
    manifest = etl.write_processed(
        store,
        params["dataset_name"],
        checked["source"],
        frame,
        float(params["test_size"]),
        int(params["seed"]),
    )
    log.info(
        "wrote %s (train %d rows, test %d rows)",
        manifest["manifest_uri"],
        manifest["rows"]["train"],
        manifest["rows"]["test"],
    )
    return manifest
