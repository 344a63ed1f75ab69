"""One training job, start to finish: load, split, fit, evaluate, track, sign, register, promote."""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
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
from mlops_common.datasets import frame_digest
from mlops_common.errors import Unprocessable
from mlops_common.promotion import (
    DEFAULT_METRIC,
    METRICS,
    ChampionProblem,
    Task,
    decide_on_same_rows,
)
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
from trainer.champion import ChampionRefused, ChampionUnavailable, load_signed_model
from trainer.datasets import (
    DEFAULT_DATASET_BUCKETS,
    DEFAULT_MAX_DATASET_BYTES,
    LoadedDataset,
    load_builtin,
    load_uri,
)
from trainer.pipeline import build_pipeline, evaluate, infer_task, normalise_categoricals
from trainer.plots import log_plots
from trainer.schemas import Promotion, TrainRequest

log = logging.getLogger(__name__)

# On every version the trainer registers: the job that made it, so a retry finds it.
JOB_TAG = "mlops.job_id"
# Pinned so log_model does not spend ~17 s guessing requirements from the environment.
PIP_REQUIREMENTS = ["scikit-learn", "pandas", "numpy", "skops"]
# Where the evaluation rows came from when they are the job's own split of its data set.
HOLDOUT = "holdout"
COMPARE_TAG_PREFIX = "mlops.compare."
# MLflow refuses longer tag values (8000 characters on its SQL stores).
MAX_TAG_CHARS = 5000


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
    # Digest of the rows ``metrics`` were measured on, as the run recorded it.
    rows_digest: str | None = None


@dataclass(frozen=True)
class EvalRows:
    """The rows a job is evaluated on, and its champion too: the same rows for both."""

    features: pd.DataFrame
    target: pd.Series
    # HOLDOUT (the job's own split) or the s3:// URI of dataset.test_uri.
    source: str
    digest: str

    @property
    def count(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Prepared:
    """A job's data, split, and the estimator it asked for: everything before the fit."""

    data: LoadedDataset
    task: Task
    algorithm: str
    estimator: Any
    x_train: pd.DataFrame
    y_train: pd.Series
    rows: EvalRows
    test: LoadedDataset | None = None


@dataclass(frozen=True)
class ChampionScore:
    """The champion's metrics on the comparison rows, or why it has none."""

    metrics: dict[str, float] = field(default_factory=dict)
    problem: ChampionProblem | None = None
    detail: str = ""
    manifest_sha256: str | None = None


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
        image: str | None = None,
    ) -> None:
        self.store = store
        self.image = image
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
        return self._load_uri(spec.uri, spec.target)

    def load_test(self, request: TrainRequest) -> LoadedDataset | None:
        spec = request.dataset
        if spec.test_uri is None:
            return None
        assert spec.target is not None  # guaranteed by DatasetSpec
        return self._load_uri(spec.test_uri, spec.target)

    def _load_uri(self, uri: str, target: str) -> LoadedDataset:
        return load_uri(
            self.store,
            uri,
            target,
            self.max_rows,
            buckets=self.dataset_buckets,
            max_bytes=self.max_dataset_bytes,
        )

    def prepare(self, request: TrainRequest) -> Prepared:
        """Load, split and pick the estimator; a request that cannot work is a JobFailed."""
        try:
            data = self.load(request)
            test = self.load_test(request)
        except Unprocessable as exc:
            raise JobFailed(exc.message) from exc
        task: Task = request.task or infer_task(data.target)
        try:
            algorithm, estimator = resolve_algorithm(task, request.algorithm, request.params)
        except Unprocessable as exc:
            raise JobFailed(exc.message) from exc
        features = normalise_categoricals(data.features)
        if test is not None:
            # Split already (the ETL's): all of the data set trains, the given rows evaluate.
            rows = EvalRows(
                _same_columns(features, test), test.target, str(test.source), test.digest
            )
            return Prepared(data, task, algorithm, estimator, features, data.target, rows, test)
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
        rows = EvalRows(x_test, y_test, HOLDOUT, _rows_digest(x_test, y_test))
        return Prepared(data, task, algorithm, estimator, x_train, y_train, rows)

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
        prepared = self.prepare(request)
        data, task, algorithm_name, rows = (
            prepared.data,
            prepared.task,
            prepared.algorithm,
            prepared.rows,
        )
        step(f"loaded {data.source}: {data.rows} rows, {data.features.shape[1]} features")
        step(f"task: {task}" + ("" if request.task else " (inferred from the target)"))
        x_train = prepared.x_train
        pipeline = build_pipeline(x_train, prepared.estimator)
        try:
            pipeline.fit(x_train, prepared.y_train)
        except ValueError as exc:
            raise JobFailed(f"fitting {algorithm_name} failed: {exc}") from exc
        try:
            metrics = evaluate(task, pipeline, rows.features, rows.target)
        except ValueError as exc:
            raise JobFailed(f"evaluating on {rows.source} failed: {exc}") from exc
        step(f"fitted {algorithm_name} ({task}); {rows.source} ({rows.count} rows) {_fmt(metrics)}")

        mlflow.set_experiment(self.experiment)
        lineage = lineage_tags(request, self.image)
        with mlflow.start_run(run_name=f"{request.model_name}-{job_id[:8]}") as run:
            mlflow.set_tags({"trainer.job_id": job_id, "model_name": request.model_name, **lineage})
            mlflow.log_params(_run_params(request, prepared))
            mlflow.log_metrics(metrics)
            self._log_inputs(data, prepared.test)
            plotted = log_plots(task, pipeline, rows.features, rows.target)
            step(f"logged plots: {', '.join(plotted) or 'none'}")
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
            manifest = self.sign(info, request.model_name, run.info.run_id, pipeline, rows.features)
            step(f"signed {len(manifest.files)} files ({manifest.key_id}, {manifest.digest[:12]})")
            registered = mlflow.register_model(
                info.model_uri,
                request.model_name,
                tags={
                    "mlops.manifest_sha256": manifest.digest,
                    "mlops.signed_by": manifest.key_id,
                    JOB_TAG: job_id,
                    **lineage,
                },
            )
            version = int(registered.version)
        step(f"registered {request.model_name} v{version}")
        result = TrainingResult(
            task, algorithm_name, run.info.run_id, version, metrics, rows_digest=rows.digest
        )
        return self._finish(request, result, job_id, step, rows)

    def _log_inputs(self, data: LoadedDataset, test: LoadedDataset | None) -> None:
        for dataset, context in ((data, "training"), (test, "testing")):
            if dataset is None:
                continue
            whole = dataset.features.assign(**{str(dataset.target.name): dataset.target})
            # Built-in sets have no resolvable URI; MLflow then records the code that made them.
            located = {"source": dataset.source} if dataset.source.startswith("s3://") else {}
            mlflow.log_input(
                from_pandas(
                    whole, targets=str(dataset.target.name), name=dataset.source, **located
                ),
                context=context,
            )

    def _finish(
        self,
        request: TrainRequest,
        result: TrainingResult,
        job_id: str,
        step: Callable[[str], None],
        rows: EvalRows | None = None,
    ) -> TrainingResult:
        if request.promote is None:
            return result
        metrics = result.metrics
        if rows is None:
            # A retry: the same request splits the same data the same way, unless it changed.
            rows = self.prepare(request).rows
            if result.rows_digest is not None and rows.digest != result.rows_digest:
                log.warning(
                    "job %s: the evaluation rows changed since v%d was registered (%s, was %s): "
                    "its metrics are not comparable on them",
                    job_id,
                    result.model_version,
                    rows.digest,
                    result.rows_digest,
                )
                metrics = {}
        result.promoted, result.promotion = self.promote(
            request.model_name,
            result.model_version,
            result.task,
            metrics,
            rows,
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
                    rows_digest=params.get("eval_rows_digest"),
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
        rows: EvalRows,
        spec: Promotion,
        job_id: str,
    ) -> tuple[bool, dict[str, Any]]:
        """Score the champion on ``rows`` (``metrics``: the candidate's on the same rows), decide,
        record the comparison on the new version, and move the alias if it wins and may."""
        metric = spec.metric or DEFAULT_METRIC[task]
        if metric not in METRICS[task]:
            return False, {
                "alias": spec.alias,
                "metric": metric,
                "promote": False,
                "moved": False,
                "reason": f"metric {metric!r} does not apply to {task}",
            }
        mine = metrics.get(metric)
        decision: dict[str, Any] = {
            "alias": spec.alias,
            "metric": metric,
            "min_improvement": spec.min_improvement,
            "move_alias": spec.move_alias,
            "candidate_version": version,
            "candidate_value": mine,
        }
        holder = self._holder(model_name, spec.alias) if mine is not None else None
        if holder is not None and int(holder["version"]) == version:
            # An earlier attempt of this job moved it already: moved once, not again.
            reason = f"{spec.alias} already points to v{version}"
            return True, {**decision, "promote": True, "moved": False, "reason": reason}
        champion = self.score_champion(model_name, holder, task, rows)
        theirs = champion.metrics.get(metric)
        verdict = decide_on_same_rows(
            metric,
            mine,
            theirs,
            spec.min_improvement,
            alias=spec.alias,
            champion_version=int(holder["version"]) if holder else None,
            rows_digest=rows.digest,
            problem=champion.problem,
            detail=champion.detail,
        )
        decision.update(
            current_version=int(holder["version"]) if holder else None,
            current_value=theirs,
            promote=verdict.promote,
            gain=verdict.gain,
            reason=verdict.reason,
            comparison={
                "rows_source": rows.source,
                "rows": rows.count,
                "rows_digest": rows.digest,
                "candidate_metrics": metrics,
                "champion_metrics": champion.metrics or None,
                "champion_manifest_sha256": champion.manifest_sha256,
                "champion_error": f"{champion.problem}: {champion.detail}"
                if champion.problem
                else None,
            },
        )
        self._tag_comparison(model_name, version, decision)
        if not verdict.promote or not spec.move_alias:
            return False, {**decision, "moved": False}
        moved = self.gateway.put(
            f"/v1/models/{model_name}/aliases/{spec.alias}",
            json={"version": version, "reason": verdict.reason},
            headers={"X-Actor": f"trainer:job/{job_id}"},
        )
        moved.raise_for_status()
        return True, {**decision, "moved": True}

    def _holder(self, model_name: str, alias: str) -> dict[str, Any] | None:
        """The version ``alias`` names now (the gateway's resolved alias), or None."""
        current = self.gateway.get(f"/v1/models/{model_name}/aliases/{alias}")
        if current.status_code == 404:
            return None
        current.raise_for_status()
        holder: dict[str, Any] = current.json()
        return holder

    def score_champion(
        self, model_name: str, holder: dict[str, Any] | None, task: Task, rows: EvalRows
    ) -> ChampionScore:
        """The holder's metrics on ``rows``, loaded only as the platform signed it; never raises:
        a champion that cannot be scored is reported with why (see ``decide_on_same_rows``)."""
        if holder is None:
            return ChampionScore()
        with tempfile.TemporaryDirectory(prefix="mlops-champion-") as scratch:
            try:
                model, manifest = load_signed_model(
                    self.store,
                    self.verifier,
                    model_name,
                    str(holder.get("artifact_uri") or ""),
                    Path(scratch),
                )
            except ChampionRefused as exc:
                return _unscored("refused", model_name, holder, str(exc))
            except ChampionUnavailable as exc:
                return _unscored("unavailable", model_name, holder, str(exc))
            except Exception as exc:
                # Not a verdict on the model: it keeps the alias (see decide_on_same_rows).
                log.exception("scoring %s v%s failed", model_name, holder.get("version"))
                return _unscored("unavailable", model_name, holder, f"{type(exc).__name__}: {exc}")
            try:
                scored = evaluate(task, model, rows.features, rows.target)
            except Exception as exc:
                detail = f"it cannot predict these rows: {type(exc).__name__}: {str(exc)[:300]}"
                return _unscored("refused", model_name, holder, detail)
        return ChampionScore(metrics=scored, manifest_sha256=manifest.digest)

    def _tag_comparison(self, model_name: str, version: int, decision: dict[str, Any]) -> None:
        comparison = decision.get("comparison") or {}
        values = {
            "alias": decision["alias"],
            "metric": decision["metric"],
            "min_improvement": decision["min_improvement"],
            "candidate_value": decision["candidate_value"],
            "champion_version": decision["current_version"],
            "champion_value": decision["current_value"],
            "champion_manifest_sha256": comparison.get("champion_manifest_sha256"),
            "champion_error": comparison.get("champion_error"),
            "rows_source": comparison.get("rows_source"),
            "rows": comparison.get("rows"),
            "rows_digest": comparison.get("rows_digest"),
            "decision": "promote" if decision["promote"] else "keep",
            "reason": decision["reason"],
        }
        for key, value in values.items():
            if value is not None:
                self.client.set_model_version_tag(
                    model_name, str(version), COMPARE_TAG_PREFIX + key, str(value)[:MAX_TAG_CHARS]
                )


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


def _run_params(request: TrainRequest, prepared: Prepared) -> dict[str, Any]:
    data, rows = prepared.data, prepared.rows
    return {
        "task": prepared.task,
        "algorithm": prepared.algorithm,
        "dataset_source": data.source,
        "dataset_digest": data.digest,
        "dataset_rows": data.rows,
        # With test_uri the data set is not split again: the ETL's split is the split.
        "test_size": request.test_size if prepared.test is None else "unused",
        "random_state": request.random_state,
        "eval_rows": rows.source,
        "eval_rows_count": rows.count,
        "eval_rows_digest": rows.digest,
        **{f"param.{k}": v for k, v in request.params.items()},
    }


def lineage_tags(request: TrainRequest, image: str | None) -> dict[str, str]:
    """Where a run came from: this trainer's version and image, and the pipeline that asked."""
    tags = {"mlops.trainer_version": trainer_version()}
    if image:
        tags["mlops.image"] = image
    if request.lineage is not None:
        tags["mlops.dag_id"] = request.lineage.dag_id
        tags["mlops.dag_run_id"] = request.lineage.dag_run_id
        if request.lineage.etl_manifest:
            tags["mlops.etl_manifest"] = request.lineage.etl_manifest
        if request.lineage.reason:
            tags["mlops.trigger_reason"] = request.lineage.reason
    return tags


def trainer_version() -> str:
    try:
        return importlib.metadata.version("trainer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _same_columns(features: pd.DataFrame, test: LoadedDataset) -> pd.DataFrame:
    """The test rows with the training columns, in their order; a missing one fails the job."""
    missing = [c for c in features.columns if c not in test.features.columns]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise JobFailed(f"{test.source} lacks the data set's columns: {shown}")
    return normalise_categoricals(test.features[list(features.columns)])


def _rows_digest(features: pd.DataFrame, target: pd.Series) -> str:
    return frame_digest(features.assign(**{str(target.name): target}))


def _unscored(
    problem: ChampionProblem, model_name: str, holder: dict[str, Any], detail: str
) -> ChampionScore:
    log.warning(
        "%s v%s could not be scored (%s): %s", model_name, holder.get("version"), problem, detail
    )
    return ChampionScore(problem=problem, detail=detail)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
