"""One training job, start to finish: load, split, fit, evaluate, track, sign, register, promote."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlops_common.errors import Unprocessable
from mlops_common.promotion import DEFAULT_METRIC, METRICS, Task, decide
from mlops_common.signing import (
    SIGNATURE_FILE,
    Manifest,
    ManifestSigner,
    ManifestVerifier,
    public_key_of,
)
from mlops_common.storage import ObjectStore
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES
from sklearn.model_selection import train_test_split
from skops import io as skops_io

from trainer.algorithms import resolve_algorithm
from trainer.datasets import (
    DEFAULT_DATASET_BUCKETS,
    DEFAULT_MAX_DATASET_BYTES,
    LoadedDataset,
    load_builtin,
    load_uri,
)
from trainer.pipeline import build_pipeline, evaluate, infer_task, normalise_categoricals
from trainer.schemas import Promotion, TrainRequest

log = logging.getLogger(__name__)

# On every version the trainer registers: the job that made it, so a retry finds it.
JOB_TAG = "mlops.job_id"
# Pinned so log_model does not spend ~17 s guessing requirements from the environment.
PIP_REQUIREMENTS = ["scikit-learn", "pandas", "numpy", "skops"]


class JobFailed(Exception):
    """A job that cannot succeed with this request (bad data, bad params): no point retrying."""


@dataclass
class TrainingResult:
    task: Task
    algorithm: str
    run_id: str
    model_version: int
    metrics: dict[str, float]
    promoted: bool | None = None
    promotion: dict[str, Any] | None = None


class Trainer:
    def __init__(
        self,
        store: ObjectStore,
        gateway: httpx.Client,
        mlflow_client: MlflowClient,
        experiment: str,
        max_rows: int,
        *,
        dataset_buckets: Collection[str] = DEFAULT_DATASET_BUCKETS,
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        signing_key: str,
    ) -> None:
        self.store = store
        self.signer = ManifestSigner(signing_key)
        self.verifier = ManifestVerifier([public_key_of(signing_key)])
        self.gateway = gateway
        self.client = mlflow_client
        self.experiment = experiment
        self.max_rows = max_rows
        self.dataset_buckets = frozenset(dataset_buckets)
        self.max_dataset_bytes = max_dataset_bytes

    def load(self, request: TrainRequest) -> LoadedDataset:
        spec = request.dataset
        if spec.builtin is not None:
            return load_builtin(spec.builtin)
        assert spec.uri is not None and spec.target is not None  # guaranteed by DatasetSpec
        return load_uri(
            self.store,
            spec.uri,
            spec.target,
            self.max_rows,
            buckets=self.dataset_buckets,
            max_bytes=self.max_dataset_bytes,
        )

    def run(self, request: TrainRequest, job_id: str) -> TrainingResult:
        started = time.monotonic()

        def step(message: str) -> None:
            log.info("job %s: %s (+%.1fs)", job_id, message, time.monotonic() - started)

        # A retry (after a crash, a timeout or a database error) whose earlier attempt already
        # registered a version finishes that one: one version per job, whatever happened.
        earlier = self.registered_by(request.model_name, job_id)
        if earlier is not None:
            step(f"an earlier attempt registered {request.model_name} v{earlier.model_version}")
            return self._finish(request, earlier, job_id, step)
        try:
            data = self.load(request)
        except Unprocessable as exc:
            raise JobFailed(exc.message) from exc
        step(f"loaded {data.source}: {data.rows} rows, {data.features.shape[1]} features")
        task: Task = request.task or infer_task(data.target)
        step(f"task: {task}" + ("" if request.task else " (inferred from the target)"))
        try:
            algorithm_name, estimator = resolve_algorithm(task, request.algorithm, request.params)
        except Unprocessable as exc:
            raise JobFailed(exc.message) from exc
        features = normalise_categoricals(data.features)
        stratify = (
            data.target
            if task == "classification" and data.target.value_counts().min() >= 2
            else None
        )
        x_train, x_test, y_train, y_test = train_test_split(
            features,
            data.target,
            test_size=request.test_size,
            random_state=request.random_state,
            stratify=stratify,
        )
        pipeline = build_pipeline(features, estimator)
        try:
            pipeline.fit(x_train, y_train)
        except ValueError as exc:
            raise JobFailed(f"fitting {algorithm_name} failed: {exc}") from exc
        metrics = evaluate(task, pipeline, x_test, y_test)
        step(f"fitted {algorithm_name} ({task}); holdout {_fmt(metrics)}")

        mlflow.set_experiment(self.experiment)
        with mlflow.start_run(run_name=f"{request.model_name}-{job_id[:8]}") as run:
            mlflow.set_tags({"trainer.job_id": job_id, "model_name": request.model_name})
            mlflow.log_params(
                {
                    "task": task,
                    "algorithm": algorithm_name,
                    "dataset_source": data.source,
                    "dataset_digest": data.digest,
                    "dataset_rows": data.rows,
                    "test_size": request.test_size,
                    "random_state": request.random_state,
                    **{f"param.{k}": v for k, v in request.params.items()},
                }
            )
            mlflow.log_metrics(metrics)
            whole = data.features.assign(**{str(data.target.name): data.target})
            # Built-in sets have no resolvable URI; MLflow then records the code that made them.
            located = {"source": data.source} if data.source.startswith("s3://") else {}
            mlflow.log_input(
                from_pandas(whole, targets=str(data.target.name), name=data.source, **located),
                context="training",
            )
            signature = infer_signature(x_train, pipeline.predict(x_train.head(20)))
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                signature=signature,
                input_example=x_train.head(5),
                pip_requirements=PIP_REQUIREMENTS,
                skops_trusted_types=trusted_types(pipeline),
            )
            step(f"logged run {run.info.run_id}")
            # Registered only once signed: no version exists that inference would refuse.
            manifest = self.sign(info, request.model_name, run.info.run_id, pipeline, x_test)
            step(f"signed {len(manifest.files)} files ({manifest.key_id}, {manifest.digest[:12]})")
            registered = mlflow.register_model(
                info.model_uri,
                request.model_name,
                tags={
                    "mlops.manifest_sha256": manifest.digest,
                    "mlops.signed_by": manifest.key_id,
                    JOB_TAG: job_id,
                },
            )
            version = int(registered.version)
        step(f"registered {request.model_name} v{version}")
        result = TrainingResult(task, algorithm_name, run.info.run_id, version, metrics)
        return self._finish(request, result, job_id, step)

    def _finish(
        self,
        request: TrainRequest,
        result: TrainingResult,
        job_id: str,
        step: Callable[[str], None],
    ) -> TrainingResult:
        if request.promote is not None:
            result.promoted, result.promotion = self.promote(
                request.model_name,
                result.model_version,
                result.task,
                result.metrics,
                request.promote,
                job_id,
            )
            step(f"promotion: {result.promotion['reason']}")
        return result

    def registered_by(self, model_name: str, job_id: str) -> TrainingResult | None:
        """The version an earlier attempt of ``job_id`` registered, with its run's results."""
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None
        runs = self.client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`trainer.job_id` = '{job_id}'"
        )
        for run in runs:
            versions = self.client.search_model_versions(f"run_id = '{run.info.run_id}'")
            mine = [v for v in versions if v.name == model_name]
            if mine:
                params = run.data.params
                return TrainingResult(
                    task=params["task"],  # type: ignore[arg-type]
                    algorithm=params["algorithm"],
                    run_id=run.info.run_id,
                    model_version=min(int(v.version) for v in mine),
                    metrics=dict(run.data.metrics),
                )
        return None

    def sign(
        self, info: ModelInfo, model_name: str, run_id: str, pipeline: Any, check: pd.DataFrame
    ) -> Manifest:
        """Sign the model's files as they are in the artifact store; store the signature there.

        The files are read back from the store rather than taken from the local save, so what
        is signed is what inference will download. A change made there in the moments between
        upload and read-back would have to predict exactly as the fitted pipeline does, and
        inference's own checks still apply to it.
        """
        with tempfile.TemporaryDirectory(prefix="mlops-sign-") as scratch:
            # From the storage location itself: a models:/ download adds a file of MLflow's own.
            location = self.client.get_logged_model(info.model_id).artifact_location
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=scratch)
            )
            stored = skops_io.load(local / "model.skops", trusted=list(PLATFORM_TRUSTED_TYPES))
            rows = check.head(50)
            if not np.array_equal(
                np.asarray(stored.predict(rows)), np.asarray(pipeline.predict(rows))
            ):
                raise RuntimeError("the stored model does not predict as the fitted one does")
            envelope = self.signer.sign_dir(local, model_name=model_name, run_id=run_id)
            # Checked with the public half, as inference will: a signing bug fails the job here.
            manifest = self.verifier.verify(envelope, model_name=model_name)
            (local / SIGNATURE_FILE).write_bytes(envelope)
            self.client.log_model_artifact(info.model_id, str(local / SIGNATURE_FILE))
        return manifest

    def promote(
        self,
        model_name: str,
        version: int,
        task: Task,
        metrics: dict[str, float],
        spec: Promotion,
        job_id: str,
    ) -> tuple[bool, dict[str, Any]]:
        metric = spec.metric or DEFAULT_METRIC[task]
        if metric not in METRICS[task]:
            return False, {
                "alias": spec.alias,
                "metric": metric,
                "reason": f"metric {metric!r} does not apply to {task}",
            }
        mine = metrics.get(metric)
        decision: dict[str, Any] = {
            "alias": spec.alias,
            "metric": metric,
            "min_improvement": spec.min_improvement,
            "candidate_version": version,
            "candidate_value": mine,
        }
        holder: dict[str, Any] | None = None
        theirs: float | None = None
        if mine is not None:
            current = self.gateway.get(f"/v1/models/{model_name}/aliases/{spec.alias}")
            if current.status_code != 404:
                current.raise_for_status()
                holder = current.json()
        if holder is not None and int(holder["version"]) == version:
            # An earlier attempt of this job moved it already: moved once, not again.
            return True, {**decision, "reason": f"{spec.alias} already points to v{version}"}
        if holder is not None:
            theirs = self.client.get_run(holder["run_id"]).data.metrics.get(metric)
            decision.update(current_version=holder["version"], current_value=theirs)
        verdict = decide(
            metric,
            mine,
            theirs,
            spec.min_improvement,
            alias=spec.alias,
            current_version=holder["version"] if holder else None,
        )
        if not verdict.promote:
            return False, {**decision, "reason": verdict.reason}
        moved = self.gateway.put(
            f"/v1/models/{model_name}/aliases/{spec.alias}",
            json={"version": version, "reason": verdict.reason},
            headers={"X-Actor": f"trainer:job/{job_id}"},
        )
        moved.raise_for_status()
        return True, {**decision, "reason": verdict.reason}


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust for this pipeline, all from the platform's list.

    Inference loads with ``PLATFORM_TRUSTED_TYPES`` and nothing else, so a pipeline holding any
    other type could be registered but never served: refuse it here, before it is logged.
    """
    found = skops_io.get_untrusted_types(data=skops_io.dumps(model))
    foreign = sorted(set(found) - set(PLATFORM_TRUSTED_TYPES))
    if foreign:
        raise ValueError(
            f"the pipeline holds types inference will not load: {', '.join(foreign)} "
            "(see mlops_common.trusted_types)"
        )
    return sorted(found)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
