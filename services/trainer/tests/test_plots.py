"""Every run logs its diagnostic plots under plots/, and a plot that fails fails no job.

Real training jobs against a local MLflow tracking store (SQLite and a folder), as in
test_signing.py: the same calls the worker makes against the tracking server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from mlflow.tracking import MlflowClient
from mlops_common.signing import generate_key_pair
from trainer.schemas import TrainRequest
from trainer.training import Trainer, trainer_version

PRIVATE, _ = generate_key_pair()


def _trainer(tracking: MlflowClient, image: str | None = None) -> Trainer:
    return Trainer(
        store=None,  # type: ignore[arg-type]  # a built-in data set reads nothing from S3
        gateway=None,  # type: ignore[arg-type]  # no promotion asked for
        mlflow_client=tracking,
        experiment="tests",
        max_rows=10_000,
        signing_key=PRIVATE,
        image=image,
    )


def _plots(tracking: MlflowClient, run_id: str) -> set[str]:
    return {Path(a.path).name for a in tracking.list_artifacts(run_id, "plots")}


@pytest.mark.parametrize(
    ("builtin", "algorithm", "expected"),
    [
        (
            "breast_cancer",
            "logistic_regression",
            {"confusion_matrix", "roc_curve", "precision_recall_curve", "feature_importance"},
        ),
        (
            "iris",
            "random_forest",
            {"confusion_matrix", "roc_curve", "precision_recall_curve", "feature_importance"},
        ),
        ("diabetes", "ridge", {"predicted_vs_actual", "residuals", "feature_importance"}),
    ],
)
def test_a_run_logs_the_plots_of_its_task(
    tracking_store: MlflowClient, builtin: str, algorithm: str, expected: set[str]
) -> None:
    request = TrainRequest.model_validate(
        {"model_name": f"plots-{builtin}", "dataset": {"builtin": builtin}, "algorithm": algorithm}
    )
    result = _trainer(tracking_store).run(request, f"job-{builtin}")

    logged = _plots(tracking_store, result.run_id)
    assert {f"{name}.png" for name in expected} | {"feature_importance.json"} == logged
    local = Path(tracking_store.download_artifacts(result.run_id, "plots/feature_importance.json"))
    importance = json.loads(local.read_text())
    # The estimator's own importances, by the names of the columns it was fitted on.
    assert importance["method"] in {"impurity importance", "|coefficient| (standardised features)"}
    assert "mean radius" in importance["importances"] or builtin != "breast_cancer"
    # pyplot holds no figure once the run is logged: a long-lived worker does not grow.
    assert plt.get_fignums() == []


def test_an_estimator_without_importances_gets_permutation_importance(
    tracking_store: MlflowClient,
) -> None:
    request = TrainRequest.model_validate(
        {
            "model_name": "plots-hgb",
            "dataset": {"builtin": "iris"},
            "algorithm": "hist_gradient_boosting",
            "params": {"max_iter": 10},
        }
    )
    result = _trainer(tracking_store).run(request, "job-hgb")

    local = Path(tracking_store.download_artifacts(result.run_id, "plots/feature_importance.json"))
    importance = json.loads(local.read_text())
    assert importance["method"] == "permutation importance (30 rows)"
    assert set(importance["importances"]) == {
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    }


def test_a_failing_plot_is_skipped_and_the_job_succeeds(
    tracking_store: MlflowClient, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("no ink")

    monkeypatch.setattr("trainer.plots._confusion_matrix", broken)
    request = TrainRequest.model_validate(
        {"model_name": "plots-broken", "dataset": {"builtin": "iris"}}
    )
    result = _trainer(tracking_store).run(request, "job-broken")

    assert result.model_version == 1
    logged = _plots(tracking_store, result.run_id)
    assert "confusion_matrix.png" not in logged and "roc_curve.png" in logged
    assert "plot confusion_matrix skipped" in caplog.text
    assert plt.get_fignums() == []


def test_a_run_and_its_version_carry_their_lineage(tracking_store: MlflowClient) -> None:
    request = TrainRequest.model_validate(
        {
            "model_name": "lineage",
            "dataset": {"builtin": "iris"},
            "lineage": {
                "dag_id": "train_and_promote",
                "dag_run_id": "manual__2026-12-02T17:00:00+00:00",
                "etl_manifest": "s3://data/processed/iris/abc-t20-s42/manifest.json",
            },
        }
    )
    result = _trainer(tracking_store, image="registry.local/mlops/trainer:0.3.0").run(
        request, "job-lineage"
    )

    expected = {
        "mlops.trainer_version": trainer_version(),
        "mlops.image": "registry.local/mlops/trainer:0.3.0",
        "mlops.dag_id": "train_and_promote",
        "mlops.dag_run_id": "manual__2026-12-02T17:00:00+00:00",
        "mlops.etl_manifest": "s3://data/processed/iris/abc-t20-s42/manifest.json",
    }
    run_tags = tracking_store.get_run(result.run_id).data.tags
    version_tags = tracking_store.get_model_version("lineage", "1").tags
    assert expected.items() <= run_tags.items()
    assert expected.items() <= version_tags.items()
    assert trainer_version() != "unknown"


def test_a_run_without_lineage_or_image_is_tagged_with_the_trainer_version_only(
    tracking_store: MlflowClient,
) -> None:
    request = TrainRequest.model_validate({"model_name": "plain", "dataset": {"builtin": "iris"}})
    result = _trainer(tracking_store).run(request, "job-plain")

    tags = tracking_store.get_run(result.run_id).data.tags
    assert tags["mlops.trainer_version"] == trainer_version()
    assert not {"mlops.image", "mlops.dag_id", "mlops.dag_run_id", "mlops.etl_manifest"} & set(tags)


def test_permutation_importance_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row sample of at most MAX_PERMUTATION_ROWS, and no permutation past the column bound."""
    import pandas as pd
    import sklearn.inspection
    from sklearn.ensemble import HistGradientBoostingClassifier
    from trainer import plots
    from trainer.pipeline import build_pipeline

    seen: list[int] = []
    real = sklearn.inspection.permutation_importance

    def counting(model: Any, x: Any, y: Any, **kwargs: Any) -> Any:
        seen.append(len(x))
        return real(model, x, y, **kwargs)

    monkeypatch.setattr("sklearn.inspection.permutation_importance", counting)
    monkeypatch.setattr(plots, "_set_tag", lambda *_: None)
    rows = 2500
    features = pd.DataFrame({"a": range(rows), "b": [i % 7 for i in range(rows)]}, dtype=float)
    target = pd.Series([i % 2 for i in range(rows)])
    model = build_pipeline(features, HistGradientBoostingClassifier(max_iter=5)).fit(
        features, target
    )
    importance = plots.feature_importance(model, features, target)
    assert importance is not None and seen == [plots.MAX_PERMUTATION_ROWS]

    monkeypatch.setattr(plots, "MAX_PERMUTATION_COLUMNS", 1)
    assert plots.feature_importance(model, features, target) is None
    assert seen == [plots.MAX_PERMUTATION_ROWS]


def test_a_classifier_without_probabilities_skips_its_curves_with_the_reason(
    tracking_store: MlflowClient,
) -> None:
    import mlflow
    from sklearn.svm import LinearSVC
    from trainer.datasets import load_builtin
    from trainer.pipeline import build_pipeline
    from trainer.plots import SKIPPED_TAG, log_plots

    data = load_builtin("iris")
    model = build_pipeline(data.features, LinearSVC()).fit(data.features, data.target)
    mlflow.set_experiment("tests")
    with mlflow.start_run() as run:
        logged = log_plots("classification", model, data.features, data.target)

    assert logged == ["confusion_matrix", "feature_importance"]
    assert _plots(tracking_store, run.info.run_id) == {
        "confusion_matrix.png",
        "feature_importance.png",
        "feature_importance.json",
    }
    reason = tracking_store.get_run(run.info.run_id).data.tags[SKIPPED_TAG]
    assert reason == "roc/precision-recall curves: the estimator has no predict_proba"
