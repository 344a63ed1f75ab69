"""Diagnostic plots of a fitted model on the rows it was evaluated on, logged under ``plots/``.

People look at a run in the MLflow UI: a confusion matrix or a residual plot says there what a
single holdout number hides. Only the worker imports this module, and matplotlib only when a
run is logged (it costs the API start-up time and memory for nothing).

A plot that fails is a warning in the job's log, never a failed job: the model is what the job
is for, and a model without one of its plots is still a good model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlops_common.promotion import Task

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
# Permutation importance refits nothing but predicts rows x features x repeats times: bounded so
# that a wide or long holdout costs seconds, not minutes. Fixed seed: the same run, the same plot.
MAX_PERMUTATION_ROWS = 2000
PERMUTATION_REPEATS = 3
PERMUTATION_SEED = 0
# Each column is shuffled and predicted PERMUTATION_REPEATS times: past this many, skipped.
MAX_PERMUTATION_COLUMNS = 200
# More bars than this are unreadable; the JSON next to the plot keeps every feature.
TOP_FEATURES = 20
# A one-vs-rest curve per class is legible up to about this many classes.
MAX_CURVE_CLASSES = 12
SKIPPED_TAG = "mlops.plots.skipped"


@dataclass(frozen=True)
class Importance:
    method: str
    values: dict[str, float]


def log_plots(
    task: Task, model: Any, features: pd.DataFrame, target: pd.Series, *, log_figure: Any = None
) -> list[str]:
    """Log every plot that applies to ``model`` on these rows; the names of those logged.

    ``log_figure(figure, artifact_file)`` defaults to ``mlflow.log_figure`` (the active run).
    """
    try:
        import matplotlib

        # No display on a worker; Agg renders to memory whatever the environment asks for.
        matplotlib.use("Agg")
        import mlflow
    except Exception:
        log.warning("plots skipped: matplotlib cannot be loaded", exc_info=True)
        return []
    write = log_figure or mlflow.log_figure
    plots: dict[str, Callable[[], Figure | None]] = {}
    predicted = _safe(lambda: np.asarray(model.predict(features)), "predict")
    if predicted is None:
        return []
    if task == "classification":
        plots["confusion_matrix"] = lambda: _confusion_matrix(target, predicted)
        proba = _probabilities(model, features)
        if proba is not None:
            classes = list(model.classes_)
            plots["roc_curve"] = lambda: _roc(target, proba, classes)
            plots["precision_recall_curve"] = lambda: _precision_recall(target, proba, classes)
    else:
        plots["predicted_vs_actual"] = lambda: _predicted_vs_actual(target, predicted)
        plots["residuals"] = lambda: _residuals(target, predicted)
    importance = _safe(lambda: feature_importance(model, features, target), "feature importance")
    if importance is not None:
        plots["feature_importance"] = lambda: _importance_figure(importance)
        _safe(lambda: _log_importance_json(importance), "feature_importance.json")
    logged = []
    for name, draw in plots.items():
        if _draw_and_log(name, draw, write):
            logged.append(name)
    return logged


def feature_importance(model: Any, features: pd.DataFrame, target: pd.Series) -> Importance | None:
    """The estimator's own importances mapped to the pipeline's output feature names when it has
    them, else permutation importance on (a bounded sample of) the rows, by input column."""
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    names = _output_names(model)
    own = _own_importance(estimator)
    if own is not None and names is not None and len(names) == len(own[1]):
        method, weights = own
        return Importance(method, dict(zip(names, map(float, weights), strict=True)))
    from sklearn.inspection import permutation_importance

    if features.shape[1] > MAX_PERMUTATION_COLUMNS:
        _skip(
            f"feature importance: the estimator has none of its own, and permutation importance "
            f"is bounded to {MAX_PERMUTATION_COLUMNS} columns ({features.shape[1]} here)"
        )
        return None
    sample = features
    labels = target
    if len(features) > MAX_PERMUTATION_ROWS:
        sample = features.sample(MAX_PERMUTATION_ROWS, random_state=PERMUTATION_SEED)
        labels = target.loc[sample.index]
    result = permutation_importance(
        model,
        sample,
        labels,
        n_repeats=PERMUTATION_REPEATS,
        random_state=PERMUTATION_SEED,
        n_jobs=1,
    )
    values = dict(zip(map(str, sample.columns), map(float, result.importances_mean), strict=True))
    return Importance(f"permutation importance ({len(sample)} rows)", values)


def _own_importance(estimator: Any) -> tuple[str, np.ndarray] | None:
    if hasattr(estimator, "feature_importances_"):
        return "impurity importance", np.asarray(estimator.feature_importances_, dtype=float)
    if hasattr(estimator, "coef_"):
        coef = np.abs(np.asarray(estimator.coef_, dtype=float))
        # One row per class (multiclass): a feature matters as much as it does for any class.
        values = coef.mean(axis=0) if coef.ndim == 2 else coef.ravel()
        return "|coefficient| (standardised features)", values
    return None


def _output_names(model: Any) -> list[str] | None:
    """Names of the columns the estimator sees (after encoding), when the pipeline tells."""
    if not hasattr(model, "steps") or len(model.steps) < 2:
        return None
    try:
        names = model[:-1].get_feature_names_out()
    except Exception:
        return None
    # "numeric__age" reads better as "age"; an encoded column keeps its "column_value" name.
    return [str(n).split("__", 1)[-1] for n in names]


def _probabilities(model: Any, features: pd.DataFrame) -> np.ndarray | None:
    if not hasattr(model, "predict_proba"):
        _skip("roc/precision-recall curves: the estimator has no predict_proba")
        return None
    if len(model.classes_) > MAX_CURVE_CLASSES:
        _skip(f"roc/precision-recall curves: more than {MAX_CURVE_CLASSES} classes")
        return None
    return _safe(lambda: np.asarray(model.predict_proba(features)), "predict_proba")


def _skip(reason: str) -> None:
    log.info("plots: skipped %s", reason)
    _safe(lambda: _set_tag(SKIPPED_TAG, reason), "tagging a skipped plot")


def _set_tag(key: str, value: str) -> None:
    import mlflow

    mlflow.set_tag(key, value)


def _log_importance_json(importance: Importance) -> None:
    import mlflow

    ranked = dict(sorted(importance.values.items(), key=lambda kv: -abs(kv[1])))
    mlflow.log_dict(
        {"method": importance.method, "importances": ranked},
        f"{PLOTS_DIR}/feature_importance.json",
    )


def _draw_and_log(name: str, draw: Callable[[], Figure | None], write: Any) -> bool:
    import matplotlib.pyplot as plt

    figure = None
    try:
        figure = draw()
        if figure is None:
            return False
        write(figure, f"{PLOTS_DIR}/{name}.png")
        return True
    except Exception:
        log.warning("plot %s skipped: it failed", name, exc_info=True)
        return False
    finally:
        # pyplot keeps every figure it made until closed: a long-lived worker would grow.
        if figure is not None:
            plt.close(figure)


def _safe(make: Callable[[], Any], what: str) -> Any:
    try:
        return make()
    except Exception:
        log.warning("plots: %s failed", what, exc_info=True)
        return None


def _figure(title: str) -> tuple[Figure, Any]:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    axes.set_title(title)
    return figure, axes


def _confusion_matrix(target: pd.Series, predicted: np.ndarray) -> Figure:
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = _figure("Confusion matrix (holdout)")
    ConfusionMatrixDisplay.from_predictions(
        target, predicted, ax=axes, colorbar=False, xticks_rotation="vertical"
    )
    axes.set_title("Confusion matrix (holdout)")
    figure.tight_layout()
    return figure


def _one_vs_rest(
    target: pd.Series, proba: np.ndarray, classes: list[Any]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, is this class, its probability) per class that has positives and negatives."""
    actual = np.asarray(target)
    if len(classes) == 2:
        positive = actual == classes[1]
        return (
            [(str(classes[1]), positive, proba[:, 1])] if 0 < positive.sum() < len(actual) else []
        )
    curves = []
    for index, cls in enumerate(classes):
        positive = actual == cls
        if 0 < positive.sum() < len(actual):
            curves.append((str(cls), positive, proba[:, index]))
    return curves


def _roc(target: pd.Series, proba: np.ndarray, classes: list[Any]) -> Figure | None:
    from sklearn.metrics import RocCurveDisplay

    return _curves(
        target, proba, classes, RocCurveDisplay, "ROC curve", "ROC curves", diagonal=True
    )


def _precision_recall(target: pd.Series, proba: np.ndarray, classes: list[Any]) -> Figure | None:
    from sklearn.metrics import PrecisionRecallDisplay

    return _curves(
        target, proba, classes, PrecisionRecallDisplay, "Precision-recall curve", "Precision-recall"
    )


def _curves(
    target: pd.Series,
    proba: np.ndarray,
    classes: list[Any],
    display: Any,
    binary_title: str,
    multiclass_title: str,
    *,
    diagonal: bool = False,
) -> Figure | None:
    """One curve per class (one vs rest) of a scikit-learn ``display``, on one figure."""
    curves = _one_vs_rest(target, proba, classes)
    if not curves:
        _skip(f"{binary_title.lower()}: the rows hold a single class")
        return None
    title = binary_title if len(classes) == 2 else f"{multiclass_title} (one vs rest)"
    figure, axes = _figure(title)
    for label, positive, score in curves:
        display.from_predictions(positive, score, name=f"class {label}", ax=axes)
    if diagonal:
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set_title(title)
    figure.tight_layout()
    return figure


def _predicted_vs_actual(target: pd.Series, predicted: np.ndarray) -> Figure:
    actual = np.asarray(target, dtype=float)
    figure, axes = _figure("Predicted vs actual (holdout)")
    axes.scatter(actual, predicted, s=12, alpha=0.6)
    low = float(min(actual.min(), predicted.min()))
    high = float(max(actual.max(), predicted.max()))
    axes.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    axes.set_xlabel("actual")
    axes.set_ylabel("predicted")
    figure.tight_layout()
    return figure


def _residuals(target: pd.Series, predicted: np.ndarray) -> Figure:
    residuals = np.asarray(target, dtype=float) - predicted
    figure, axes = _figure("Residuals (actual - predicted) vs predicted")
    axes.scatter(predicted, residuals, s=12, alpha=0.6)
    axes.axhline(0.0, linestyle="--", color="grey", linewidth=1)
    axes.set_xlabel("predicted")
    axes.set_ylabel("residual")
    figure.tight_layout()
    return figure


def _importance_figure(importance: Importance) -> Figure:
    ranked = sorted(importance.values.items(), key=lambda kv: abs(kv[1]), reverse=True)
    shown = ranked[:TOP_FEATURES][::-1]
    figure, axes = _figure(f"Feature importance: {importance.method}")
    axes.barh([name[:40] for name, _ in shown], [value for _, value in shown])
    if len(ranked) > TOP_FEATURES:
        axes.set_xlabel(f"top {TOP_FEATURES} of {len(ranked)} features")
    axes.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    return figure
