"""Drift and live quality of a served model: its recent prediction log against its training data.

A monitoring job (``POST /v1/monitor``, run by the workers like a training job) takes the version
``alias`` names now and

1. reads the model's prediction log in the window (``s3://<bucket>/predictions/<model>/
   date=…/*.parquet``, written by inference; rows outside the window are left out, and at most
   ``TRAINER_MONITOR_MAX_ROWS`` of the newest files are read);
2. loads the reference: the data set recorded with that version's run (``dataset_source``: a
   built-in set or an ``s3://`` table), restricted to the features the log holds;
3. compares each feature with Evidently's ``DataDriftPreset`` (its default test per column kind
   and size) and reports the share of drifted features;
4. joins the labels sent to ``POST /v1/feedback`` (``s3://<bucket>/feedback/<model>/…``) with the
   log's rows by request id and computes the live metric per version (accuracy, or RMSE for
   regression), compared with the same metric of the version's own run;
5. decides whether to retrain (``decide``) against the request's thresholds, and logs it all as
   an MLflow run of the ``TRAINER_MONITOR_EXPERIMENT`` experiment, with Evidently's HTML report.

Too few rows in the window (``min_rows``) or too few labels (``min_labels``) give no drift or no
quality figure, and never a retraining.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlops_common.storage import ObjectStore, S3Uri

from trainer.datasets import (
    DEFAULT_DATASET_BUCKETS,
    DEFAULT_MAX_DATASET_BYTES,
    load_builtin,
    load_table,
)
from trainer.schemas import MonitorRequest
from trainer.training import JobFailed

log = logging.getLogger(__name__)

FEATURE_PREFIX = "feature."
BUILTIN_PREFIX = "sklearn:"
# The metric the live figure is compared with, per task: what the run logged on its holdout.
LIVE_METRIC: dict[str, tuple[str, bool]] = {
    "classification": ("accuracy", True),  # (name, higher is better)
    "regression": ("rmse", False),
}
REFERENCE_SAMPLE_ROWS = 50_000

# Evidently reports usage to its authors unless told not to; a self-hosted platform must not.
os.environ.setdefault("DO_NOT_TRACK", "1")


@dataclass(frozen=True)
class FeatureDrift:
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class Drift:
    share: float
    drifted: int
    features: dict[str, FeatureDrift]


@dataclass(frozen=True)
class Quality:
    metric: str
    version: int
    labelled: int
    live: float
    reference: float | None
    # How much worse than the reference, relative to it (0.1: 10% worse); negative is better.
    drop: float | None


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reasons: list[str]


@dataclass
class MonitorResult:
    model_name: str
    alias: str
    version: int
    window_start: str
    window_end: str
    rows: int
    rows_by_version: dict[str, int]
    reference: dict[str, Any]
    drift: Drift | None
    quality: list[Quality]
    decision: Decision
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), allow_nan=False, default=str))

    def metrics(self) -> dict[str, float]:
        """The figures the job reports (and /metrics exports): finite numbers only."""
        figures: dict[str, float] = {"rows": float(self.rows)}
        if self.drift is not None:
            figures["drift_share"] = self.drift.share
            figures["drifted_features"] = float(self.drift.drifted)
        served = self.served_quality()
        if served is not None:
            figures[f"live_{served.metric}"] = served.live
            figures["labelled_rows"] = float(served.labelled)
            if served.drop is not None:
                figures["quality_drop"] = served.drop
        return {k: v for k, v in figures.items() if math.isfinite(v)}

    def served_quality(self) -> Quality | None:
        return next((q for q in self.quality if q.version == self.version), None)


# ---- the computations, without I/O ---------------------------------------------------------------
def feature_frame(log_rows: pd.DataFrame) -> pd.DataFrame:
    """The logged inputs, named as the model's features."""
    columns = [c for c in log_rows.columns if c.startswith(FEATURE_PREFIX)]
    return log_rows[columns].rename(columns=lambda c: c[len(FEATURE_PREFIX) :])


def drift(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[Drift, str]:
    """Per-feature drift of ``current`` against ``reference`` (same columns), and the HTML
    report. Evidently picks each column's test by its kind and the number of rows."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numerical = [c for c in current.columns if pd.api.types.is_numeric_dtype(current[c])]
    categorical = [c for c in current.columns if c not in numerical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    features: dict[str, FeatureDrift] = {}
    share, drifted = 0.0, 0
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if config["type"].endswith(":DriftedColumnsCount"):
            share, drifted = float(value["share"]), int(value["count"])
        elif config["type"].endswith(":ValueDrift"):
            method, threshold = str(config["method"]), float(config["threshold"])
            score = float(value)
            # p-value tests drift below their threshold, distances at or above it.
            is_drift = score < threshold if "p_value" in method else score >= threshold
            features[str(config["column"])] = FeatureDrift(method, score, threshold, is_drift)
    return Drift(share, drifted, features), snapshot.get_html_str(as_iframe=False)


def live_quality(
    log_rows: pd.DataFrame,
    labels: pd.DataFrame,
    task: str,
    reference_metrics: dict[int, float],
    min_labels: int,
) -> list[Quality]:
    """The live metric of each version with at least ``min_labels`` labelled rows.

    A label names a request; only requests that scored one row are matched (a request of
    several rows has one id for all of them). The newest label of a request wins.
    """
    metric, higher_is_better = LIVE_METRIC[task]
    if log_rows.empty or labels.empty:
        return []
    single = log_rows[~log_rows["request_id"].duplicated(keep=False)]
    newest = labels.sort_values("ts").drop_duplicates("request_id", keep="last")
    joined = single.merge(newest[["request_id", "label"]], on="request_id", how="inner")
    results = []
    for key, rows in joined.groupby("version"):
        version = int(str(key))
        if len(rows) < min_labels:
            continue
        live = _score(task, rows["prediction"], rows["label"])
        if live is None:
            continue
        reference = reference_metrics.get(version)
        drop = None
        if reference is not None and reference != 0:
            change = (reference - live) if higher_is_better else (live - reference)
            drop = change / abs(reference)
        results.append(Quality(metric, version, len(rows), live, reference, drop))
    return results


def _score(task: str, predicted: pd.Series, actual: pd.Series) -> float | None:
    if task == "classification":
        # Labels arrive as JSON: compare as text, so 1 and "1" are the same class.
        return float((predicted.astype(str).to_numpy() == actual.astype(str).to_numpy()).mean())
    pred = pd.to_numeric(predicted, errors="coerce").to_numpy(dtype=float)
    true = pd.to_numeric(actual, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(pred) & np.isfinite(true)
    if not ok.any():
        return None
    return float(np.sqrt(np.mean((pred[ok] - true[ok]) ** 2)))


def answered(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a variant answered. A rollout's mirror scores copies of requests (``mirror``
    true): they repeat request ids and were never returned, so they are neither traffic nor
    quality of anything served. Files from before rollouts have no such column."""
    if rows.empty or "mirror" not in rows.columns:
        return rows
    copies = rows["mirror"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return rows[~copies].reset_index(drop=True)


def decide(
    request: MonitorRequest, served: int, found: Drift | None, quality: list[Quality]
) -> Decision:
    """Retrain when the drift share or the served version's quality drop passes its threshold."""
    reasons = []
    if found is not None and found.share >= request.max_drift_share:
        names = sorted(n for n, f in found.features.items() if f.drifted)
        shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
        reasons.append(
            f"drift share {found.share:.2f} >= {request.max_drift_share:.2f} "
            f"({found.drifted} of {len(found.features)} features drifted: {shown})"
        )
    current = next((q for q in quality if q.version == served), None)
    if (
        current is not None
        and current.drop is not None
        and current.drop >= request.max_quality_drop
    ):
        reasons.append(
            f"live {current.metric} {current.live:.4f} is {current.drop:.1%} worse than the "
            f"run's {current.reference:.4f} (>= {request.max_quality_drop:.1%}, "
            f"{current.labelled} labelled rows)"
        )
    return Decision(bool(reasons), reasons)


# ---- the job -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    version: int
    run_id: str
    task: str
    dataset_source: str
    dataset_digest: str | None


class Monitor:
    def __init__(
        self,
        store: ObjectStore,
        client: MlflowClient,
        *,
        experiment: str,
        bucket: str,
        max_rows: int,
        max_dataset_rows: int,
        dataset_buckets: Collection[str] = DEFAULT_DATASET_BUCKETS,
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
    ) -> None:
        self.store = store
        self.client = client
        self.experiment = experiment
        self.bucket = bucket
        self.max_rows = max_rows
        self.max_dataset_rows = max_dataset_rows
        self.dataset_buckets = frozenset(dataset_buckets)
        self.max_dataset_bytes = max_dataset_bytes

    def run(self, request: MonitorRequest, job_id: str) -> MonitorResult:
        end = request.end or datetime.now(UTC)
        start = request.start or end - timedelta(hours=request.window_hours)
        name = request.model_name
        served = self._served(name, request.alias)
        log.info(
            "monitoring %s@%s (v%d), %s to %s", name, request.alias, served.version, start, end
        )
        rows = answered(self._read_log("predictions", name, start, end, until=end))
        notes: list[str] = []
        rows_by_version = (
            {str(k): int(v) for k, v in rows["version"].value_counts().sort_index().items()}
            if not rows.empty
            else {}
        )
        found: Drift | None = None
        html: str | None = None
        current = feature_frame(rows) if not rows.empty else pd.DataFrame()
        reference_info: dict[str, Any] = {
            "run_id": served.run_id,
            "source": served.dataset_source,
            "digest": served.dataset_digest,
        }
        if len(current) < request.min_rows:
            notes.append(
                f"{len(current)} logged rows in the window, fewer than min_rows "
                f"{request.min_rows}: no drift figure"
            )
        else:
            reference = self._reference(served, list(current.columns))
            reference_info["rows"] = len(reference)
            current = current[list(reference.columns)]
            log.info("drift: %d rows against %d reference rows", len(current), len(reference))
            found, html = drift(reference, _aligned(current, reference))
        labels = self._read_log("feedback", name, start, datetime.now(UTC), until=None)
        quality = live_quality(
            rows,
            labels,
            served.task,
            self._reference_metrics(name, rows_by_version, served),
            request.min_labels,
        )
        if not any(q.version == served.version for q in quality):
            notes.append(
                f"fewer than min_labels {request.min_labels} labelled one-row requests for "
                f"v{served.version}: no live quality figure"
            )
        result = MonitorResult(
            model_name=name,
            alias=request.alias,
            version=served.version,
            window_start=start.isoformat(),
            window_end=end.isoformat(),
            rows=len(rows),
            rows_by_version=rows_by_version,
            reference=reference_info,
            drift=found,
            quality=quality,
            decision=decide(request, served.version, found, quality),
            notes=notes,
        )
        result.run_id = self._log_run(request, job_id, result, html)
        for line in [*result.decision.reasons, *notes]:
            log.info("monitor %s: %s", name, line)
        return result

    # ---- inputs --------------------------------------------------------------------------------
    def _served(self, name: str, alias: str) -> Served:
        try:
            version = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise JobFailed(f"{name}@{alias} does not resolve: {exc.message}") from exc
            raise
        if not version.run_id:
            raise JobFailed(f"{name} v{version.version} has no training run to compare with")
        run = self.client.get_run(version.run_id)
        params = run.data.params
        source = params.get("dataset_source")
        task = params.get("task")
        if not source or task not in LIVE_METRIC:
            raise JobFailed(
                f"the run of {name} v{version.version} records no data set or task "
                "(not trained by this platform's trainer)"
            )
        return Served(
            int(version.version), version.run_id, task, source, params.get("dataset_digest")
        )

    def _reference(self, served: Served, features: list[str]) -> pd.DataFrame:
        """The served version's training data, as the features the log holds."""
        source = served.dataset_source
        if source.startswith(BUILTIN_PREFIX):
            table = load_builtin(source[len(BUILTIN_PREFIX) :]).features
        else:
            table = load_table(
                self.store,
                source,
                self.max_dataset_rows,
                buckets=self.dataset_buckets,
                max_bytes=self.max_dataset_bytes,
            )
        shared = [c for c in features if c in table.columns]
        if not shared:
            raise JobFailed(
                f"the logged features ({', '.join(features[:10])}) are not columns of {source}"
            )
        table = table[shared]
        if len(table) > REFERENCE_SAMPLE_ROWS:
            table = table.sample(REFERENCE_SAMPLE_ROWS, random_state=0)
        return table.reset_index(drop=True)

    def _reference_metrics(
        self, name: str, rows_by_version: dict[str, int], served: Served
    ) -> dict[int, float]:
        """Each logged version's holdout metric, as its run recorded it."""
        metric = LIVE_METRIC[served.task][0]
        found: dict[int, float] = {}
        for text in {*rows_by_version, str(served.version)}:
            try:
                version = self.client.get_model_version(name, text)
                run = self.client.get_run(version.run_id) if version.run_id else None
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                continue  # a deleted version: no reference, the live figure stays
            if run is not None and metric in run.data.metrics:
                found[int(text)] = float(run.data.metrics[metric])
        return found

    def _read_log(
        self, kind: str, name: str, start: datetime, end: datetime, *, until: datetime | None
    ) -> pd.DataFrame:
        """Rows of ``kind`` (predictions, feedback) with ``ts`` in [start, end], newest files
        first, at most ``max_rows``."""
        tables: list[pa.Table] = []
        total = 0
        for key in self._keys(kind, name, start, end):
            table = pq.read_table(io.BytesIO(self.store.get_bytes(S3Uri(self.bucket, key))))
            ts = table.column("ts").to_pandas()
            keep = (ts >= pd.Timestamp(start)) & (ts <= pd.Timestamp(until or end))
            if not keep.any():
                continue
            table = table.filter(pa.array(keep.to_numpy()))
            tables.append(table)
            total += table.num_rows
            if total >= self.max_rows:
                log.warning(
                    "%s of %s: %d rows read, the most a job reads (TRAINER_MONITOR_MAX_ROWS); "
                    "older files are left out",
                    kind,
                    name,
                    total,
                )
                break
        if not tables:
            return pd.DataFrame()
        merged = pa.concat_tables(tables, promote_options="permissive")
        return merged.to_pandas().sort_values("ts", kind="stable").reset_index(drop=True)

    def _keys(self, kind: str, name: str, start: datetime, end: datetime) -> Iterator[str]:
        day = end.date()
        while day >= start.date():
            prefix = S3Uri(self.bucket, f"{kind}/{name}/date={day.isoformat()}/")
            # The key holds the write time after the instance: newest last within one instance.
            keys = (o.key for o in self.store.list_objects(prefix))
            yield from sorted((k for k in keys if k.endswith(".parquet")), reverse=True)
            day -= timedelta(days=1)

    # ---- outputs -------------------------------------------------------------------------------
    def _log_run(
        self, request: MonitorRequest, job_id: str, result: MonitorResult, html: str | None
    ) -> str:
        experiment = mlflow.set_experiment(self.experiment)
        with mlflow.start_run(
            experiment_id=experiment.experiment_id,
            run_name=f"monitor-{result.model_name}-v{result.version}",
        ) as run:
            mlflow.set_tags(
                {
                    "trainer.job_id": job_id,
                    "model_name": result.model_name,
                    "mlops.monitor.alias": result.alias,
                    "mlops.monitor.version": str(result.version),
                    "mlops.monitor.reference_run_id": result.reference["run_id"],
                    "mlops.monitor.retrain": str(result.decision.retrain).lower(),
                    "mlops.monitor.reasons": "; ".join(result.decision.reasons)[:5000]
                    or "thresholds not passed",
                }
            )
            mlflow.log_params(
                {
                    "window_start": result.window_start,
                    "window_end": result.window_end,
                    "min_rows": request.min_rows,
                    "min_labels": request.min_labels,
                    "max_drift_share": request.max_drift_share,
                    "max_quality_drop": request.max_quality_drop,
                    "reference_source": result.reference["source"],
                }
            )
            metrics = result.metrics()
            if result.drift is not None:
                for feature, score in result.drift.features.items():
                    metrics[f"drift_score.{_metric_key(feature)}"] = score.score
            mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
            with tempfile.TemporaryDirectory() as tmp:
                summary = Path(tmp, "monitor.json")
                summary.write_text(json.dumps(result.as_json(), indent=2))
                mlflow.log_artifact(str(summary), "monitoring")
                if html is not None:
                    report = Path(tmp, "drift_report.html")
                    report.write_text(html)
                    mlflow.log_artifact(str(report), "monitoring")
            return str(run.info.run_id)


def _metric_key(feature: str) -> str:
    # MLflow metric names: alphanumerics, _ - . / and space.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in feature)[:200]


def _aligned(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The log's columns in the reference's types where they convert, so a test compares like
    with like (the log keeps the signature's types; a CSV reference may have read others)."""
    out = current.copy()
    for column in reference.columns:
        if pd.api.types.is_numeric_dtype(reference[column]):
            out[column] = pd.to_numeric(out[column], errors="coerce")
    return out
