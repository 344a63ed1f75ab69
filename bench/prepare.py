"""Models for the benchmark, prepared through the platform's own HTTP API, and the rows to send.

Three models, each trained by the trainer (``POST /v1/train``) and promoted to ``champion`` unless
it already has one:

- ``lr``: bench-lr, the logistic-regression pipeline on scikit-learn's breast_cancer (30 numeric
  features); the serving overhead dominates its cost.
- ``rf``: bench-rf, a random forest of 100 trees on the same data; its own predict dominates.
- ``mixed``: bench-mixed, logistic regression on a small synthetic churn table with categorical
  columns and missing values (uploaded to ``s3://data/bench/``), so the comparison is not
  numeric-only.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pandas as pd
from common import BenchError, auth_headers, log

MIXED_URI = "s3://data/bench/mixed-churn-v1.csv"
MIXED_TARGET = "churned"


@dataclass(frozen=True)
class ModelSpec:
    key: str
    name: str
    description: str
    train_body: dict[str, Any]


MODELS: dict[str, ModelSpec] = {
    "lr": ModelSpec(
        key="lr",
        name="bench-lr",
        description="LR pipeline, breast_cancer (30 numeric)",
        train_body={
            "model_name": "bench-lr",
            "dataset": {"builtin": "breast_cancer"},
            "algorithm": "logistic_regression",
            "promote": {"alias": "champion"},
        },
    ),
    "rf": ModelSpec(
        key="rf",
        name="bench-rf",
        description="RF(100 trees), breast_cancer (30 numeric)",
        train_body={
            "model_name": "bench-rf",
            "dataset": {"builtin": "breast_cancer"},
            "algorithm": "random_forest",
            "params": {"n_estimators": 100},
            "promote": {"alias": "champion"},
        },
    ),
    "mixed": ModelSpec(
        key="mixed",
        name="bench-mixed",
        description="LR pipeline, synthetic churn (3 categorical + 3 numeric, with missing values)",
        train_body={
            "model_name": "bench-mixed",
            "dataset": {"uri": MIXED_URI, "target": MIXED_TARGET},
            "algorithm": "logistic_regression",
            "promote": {"alias": "champion"},
        },
    ),
}


@dataclass(frozen=True)
class RegisteredModel:
    """The champion version of a benchmark model, as the model-gateway resolves it."""

    key: str
    name: str
    version: int
    run_id: str | None
    artifact_uri: str
    signature: dict[str, Any]

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(name, MLflow type) of each input column, in signature order."""
        inputs = self.signature.get("inputs") or []
        return [(str(col["name"]), str(col.get("type", "double"))) for col in inputs]


def mixed_frame(rows: int = 3000, seed: int = 7) -> pd.DataFrame:
    """A deterministic churn-like table: categorical and numeric columns, missing values in both.

    Row 0 has a missing category and a missing number, so even the 1-row request exercises them.
    """
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "pro", "enterprise"], size=rows, p=[0.5, 0.35, 0.15]).astype(object)
    region = rng.choice(["north", "south", "east", "west"], size=rows).astype(object)
    channel = rng.choice(["web", "store", "phone"], size=rows, p=[0.6, 0.3, 0.1]).astype(object)
    age = rng.integers(18, 80, size=rows).astype(float)
    income = np.round(rng.lognormal(mean=10.5, sigma=0.5, size=rows), 2)
    tenure = rng.integers(0, 120, size=rows)
    logit = (
        -0.03 * tenure
        + 0.9 * (plan == "basic")
        - 0.7 * (plan == "enterprise")
        + 0.4 * (channel == "phone")
        + 0.015 * (age - 45)
        - 0.00001 * (income - 40000)
        + rng.normal(0, 0.5, size=rows)
    )
    churned = (1 / (1 + np.exp(-logit)) > 0.5).astype(int)
    plan[rng.random(rows) < 0.08] = None
    region[rng.random(rows) < 0.05] = None
    age[rng.random(rows) < 0.07] = np.nan
    income[rng.random(rows) < 0.05] = np.nan
    plan[0] = None
    income[0] = np.nan
    return pd.DataFrame(
        {
            "plan": plan,
            "region": region,
            "channel": channel,
            "age": age,
            "income": income,
            "tenure_months": tenure,
            MIXED_TARGET: churned,
        }
    )


def upload_mixed_dataset(env: dict[str, str]) -> None:
    """Write the mixed table as CSV to ``MIXED_URI`` with boto3 (the stack's S3 settings)."""
    import boto3

    bucket, _, key = MIXED_URI.removeprefix("s3://").partition("/")
    buffer = io.StringIO()
    mixed_frame().to_csv(buffer, index=False)
    client = boto3.client(
        "s3",
        endpoint_url=env.get("S3_ENDPOINT_URL"),
        aws_access_key_id=env.get("S3_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("S3_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    client.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue().encode())
    log(f"uploaded {len(buffer.getvalue())} bytes of CSV to {MIXED_URI}")


def champion(gateway_url: str, name: str, headers: dict[str, str]) -> RegisteredModel | None:
    """The model's ``champion`` version from the gateway; None when it has none yet."""
    response = httpx.get(
        f"{gateway_url}/v1/models/{name}/aliases/champion", headers=headers, timeout=30
    )
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise BenchError(f"gateway: {name}@champion -> {response.status_code} {response.text}")
    body = response.json()
    return RegisteredModel(
        key="",
        name=name,
        version=int(body["version"]),
        run_id=body.get("run_id"),
        artifact_uri=str(body["artifact_uri"]),
        signature=body.get("signature") or {},
    )


def ensure_model(spec: ModelSpec, env: dict[str, str], timeout_s: float = 600) -> RegisteredModel:
    """Train and promote ``spec`` through the trainer unless it already has a champion."""
    gateway, trainer = env["GATEWAY_URL"], env["TRAINER_URL"]
    headers = auth_headers(env)
    found = champion(gateway, spec.name, headers)
    if found is not None:
        log(f"model {spec.name}: champion is v{found.version}; skipping training")
        return _with_key(found, spec.key)
    if spec.key == "mixed":
        upload_mixed_dataset(env)
    response = httpx.post(f"{trainer}/v1/train", json=spec.train_body, headers=headers, timeout=60)
    if response.status_code != 202:
        raise BenchError(
            f"trainer: POST /v1/train ({spec.name}) -> {response.status_code} {response.text}"
        )
    job_id = response.json()["job_id"]
    log(f"model {spec.name}: training job {job_id} queued")
    deadline = time.monotonic() + timeout_s
    status = "queued"
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{trainer}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        status = str(job.get("status"))
        if status in ("succeeded", "failed"):
            break
        time.sleep(1.0)
    if status != "succeeded":
        raise BenchError(f"training {spec.name} did not succeed ({status}): {job.get('error')}")
    log(
        f"model {spec.name}: trained v{job.get('model_version')} metrics {job.get('metrics')} "
        f"promoted={job.get('promoted')}"
    )
    found = champion(gateway, spec.name, headers)
    if found is None:
        raise BenchError(f"{spec.name} has no champion after training: {job.get('promotion')}")
    return _with_key(found, spec.key)


def _with_key(model: RegisteredModel, key: str) -> RegisteredModel:
    return RegisteredModel(
        key=key,
        name=model.name,
        version=model.version,
        run_id=model.run_id,
        artifact_uri=model.artifact_uri,
        signature=model.signature,
    )


def benchmark_rows(model: RegisteredModel, count: int) -> pd.DataFrame:
    """``count`` fixed feature rows for ``model``, columns in signature order (NaN = missing)."""
    if model.key == "mixed":
        frame = mixed_frame().drop(columns=[MIXED_TARGET])
    else:
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).data
    names = [name for name, _ in model.columns] or list(frame.columns)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise BenchError(f"{model.name}'s signature has columns the data lacks: {missing}")
    if count > len(frame):
        raise BenchError(f"at most {len(frame)} rows available, asked for {count}")
    return frame.loc[: count - 1, names].reset_index(drop=True)
