"""A served model: version metadata, loading from a local MLflow model dir, predicting.

Models are loaded by ``safe_load``, never by ``mlflow.sklearn.load_model``: only skops files,
trusting only the platform's types, and nothing an artifact ships is run.

``ServedModel`` is the seam for other flavors; only scikit-learn exists today.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel, ConfigDict

from inference.errors import ModelLoadError, describe_exception
from inference.fastpath import CompiledPipeline, Decoded, Unsupported, compile_pipeline
from inference.safe_load import check_model_dir, load_skops
from inference.validation import InputColumn, InputSchema

log = logging.getLogger(__name__)


class ModelVersion(BaseModel):
    """What the gateway says the alias points to."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: int
    alias: str
    artifact_uri: str
    run_id: str | None = None
    flavor: str | None = None
    flavors: list[str] | dict[str, Any] | None = None
    signature: dict[str, Any] | None = None
    model_id: str | None = None
    source: str | None = None
    created_at: str | int | float | None = None
    # Set by inference from the verified signed manifest (whatever the gateway's answer says).
    manifest_sha256: str | None = None
    signed_by: str | None = None


@dataclass(frozen=True)
class Prediction:
    predictions: list[Any]
    probabilities: list[list[float | None]] | None = None
    classes: list[Any] | None = None


class ServedModel(Protocol):
    """A loaded model version: what it is, and how to score rows with it.

    ``predict`` scores a validated DataFrame (any model). A model with a compiled numpy form
    also takes plainly valid input straight to arrays: ``decode_*`` then ``transform`` and
    ``predict_matrix``. The ``decode_*`` methods return None when they cannot (no compiled form,
    or input only the full validator can judge), and ``predict`` serves the request.
    """

    @property
    def meta(self) -> ModelVersion: ...

    @property
    def flavor(self) -> str: ...

    @property
    def loaded_at(self) -> datetime:
        """When ``load`` finished: only loaded models are served."""
        ...

    @property
    def input_schema(self) -> InputSchema | None:
        """Named input columns to validate requests against; None accepts rows as they come."""
        ...

    @property
    def signature(self) -> dict[str, Any] | None:
        """The signature as JSON (``{"inputs": [...], "outputs": [...]}``)."""
        ...

    @property
    def input_example(self) -> list[Any] | None:
        """The saved input example as request rows (objects or lists), for the load check."""
        ...

    @property
    def proba_classes(self) -> list[Any] | None:
        """Labels of ``predict_proba``'s columns; None unless a classifier that has it."""
        ...

    @property
    def compiled(self) -> bool:
        """Whether plainly valid input is scored on the compiled numpy path."""
        ...

    @property
    def call_cost_s(self) -> float:
        """Seconds a one-row ``predict_matrix`` call takes (measured at load; 0 if not compiled):
        what decides between scoring inline, in a thread, or batched."""
        ...

    def load(self) -> None: ...

    def predict(self, frame: pd.DataFrame) -> Prediction: ...

    def decode_json(self, raw: bytes) -> Decoded | None:
        """A ``{"instances": [{column: value}, ...]}`` body straight to arrays, or None."""
        ...

    def decode_rows(self, instances: Sequence[Any]) -> Decoded | None:
        """Rows (objects or lists in signature order) to arrays, or None."""
        ...

    def decode_columns(self, columns: Mapping[str, list[Any]], rows: int) -> Decoded | None:
        """Named columns of ``rows`` values each to arrays, or None."""
        ...

    def transform(self, decoded: Decoded) -> np.ndarray:
        """Decoded input to the matrix ``predict_matrix`` takes (the pipeline's preprocessing)."""
        ...

    def predict_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and (classifiers) probabilities of transformed rows."""
        ...

    def as_prediction(self, predictions: Any, probabilities: Any) -> Prediction:
        """A ``predict_matrix`` result in the form ``predict`` gives."""
        ...


class SklearnModel:
    """An MLflow model with the ``sklearn`` flavor, typically a full preprocessing Pipeline."""

    flavor = "sklearn"

    def __init__(self, local_dir: Path, meta: ModelVersion, *, fast_path: bool = True) -> None:
        self.local_dir = local_dir
        self._meta = meta
        self._want_fast = fast_path
        # The compiled numpy form of the pipeline, when it reproduces scikit-learn's answers.
        self._compiled: CompiledPipeline | None = None
        self._call_cost_s = 0.0
        self._estimator: Any = None
        self._input_schema: InputSchema | None = None
        self._signature: dict[str, Any] | None = None
        self._input_example: list[Any] | None = None
        self._loaded_at: datetime | None = None

    @property
    def meta(self) -> ModelVersion:
        return self._meta

    @property
    def loaded_at(self) -> datetime:
        if self._loaded_at is None:
            raise RuntimeError("model not loaded")
        return self._loaded_at

    @property
    def input_schema(self) -> InputSchema | None:
        return self._input_schema

    @property
    def signature(self) -> dict[str, Any] | None:
        return self._signature

    @property
    def input_example(self) -> list[Any] | None:
        return self._input_example

    @property
    def proba_classes(self) -> list[Any] | None:
        from sklearn.base import is_classifier

        estimator = self._estimator
        # hasattr honours Pipeline's available_if: False when the last step has no predict_proba.
        if not is_classifier(estimator) or not hasattr(estimator, "predict_proba"):
            return None
        classes = getattr(estimator, "classes_", None)
        if not isinstance(classes, np.ndarray) or classes.ndim != 1:
            return None  # multi-output classifiers have one label array per output
        labels: list[Any] = classes.tolist()
        return labels

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @property
    def call_cost_s(self) -> float:
        return self._call_cost_s

    def load(self) -> None:
        import sklearn
        from mlflow.models.signature import ModelSignature

        # Read as data and checked before anything is deserialized; see safe_load.
        checked = check_model_dir(self.local_dir)
        conf = checked.sklearn
        trained_with = conf.get("sklearn_version")
        if trained_with and trained_with != sklearn.__version__:
            log.warning(
                "%s v%s was saved with scikit-learn %s, serving with %s",
                self._meta.name,
                self._meta.version,
                trained_with,
                sklearn.__version__,
            )
        try:
            signature = ModelSignature.from_dict(checked.signature) if checked.signature else None
        except Exception as exc:
            raise ModelLoadError(
                f"the MLmodel's signature is unreadable: {describe_exception(exc)}"
            ) from exc
        estimator = load_skops(checked.model_file)
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"the loaded {type(estimator).__name__} has no predict()")
        if signature is not None:
            self._signature = {
                "inputs": signature.inputs.to_dict() if signature.inputs else None,
                "outputs": signature.outputs.to_dict() if signature.outputs else None,
            }
            self._input_schema = _input_schema(signature.inputs)
        self._input_example = _read_input_example(checked.input_example)
        self._estimator = estimator
        if self._want_fast:
            self._compiled, self._call_cost_s = _compile_checked(
                estimator, self._input_schema, self._input_example, self._meta
            )
        self._loaded_at = datetime.now(UTC)

    def decode_json(self, raw: bytes) -> Decoded | None:
        return self._compiled.decode_json(raw) if self._compiled is not None else None

    def decode_rows(self, instances: Sequence[Any]) -> Decoded | None:
        return self._compiled.decode(instances) if self._compiled is not None else None

    def decode_columns(self, columns: Mapping[str, list[Any]], rows: int) -> Decoded | None:
        compiled = self._compiled
        return compiled.decode_columns(columns, rows) if compiled is not None else None

    def transform(self, decoded: Decoded) -> np.ndarray:
        return self._require_compiled().transform(decoded)

    def predict_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._require_compiled().predict_matrix(x)

    def as_prediction(self, predictions: Any, probabilities: Any) -> Prediction:
        classes = self._require_compiled().classes
        return Prediction(
            predictions=_plain(predictions),
            probabilities=_plain(probabilities) if probabilities is not None else None,
            classes=_plain(classes) if classes is not None else None,
        )

    def _require_compiled(self) -> CompiledPipeline:
        # Only reached with a Decoded from this model, which only a compiled model returns.
        if self._compiled is None:
            raise RuntimeError("no compiled path: decode_* returned None")
        return self._compiled

    def predict(self, frame: pd.DataFrame) -> Prediction:
        from sklearn.base import is_classifier

        estimator = self._estimator
        if estimator is None:
            raise RuntimeError("model not loaded")
        predictions = _plain(estimator.predict(frame))
        if not is_classifier(estimator):
            return Prediction(predictions=predictions)
        classes = _plain(getattr(estimator, "classes_", None))
        probabilities = None
        # hasattr honours Pipeline's available_if: False when the final step has no predict_proba.
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(frame)
            # Multi-output classifiers return one array per output; there is no single matrix.
            if not isinstance(proba, list):
                probabilities = _plain(proba)
        return Prediction(
            predictions=predictions,
            probabilities=probabilities,
            classes=classes if isinstance(classes, list) else None,
        )


def load_served_model(
    local_dir: Path, meta: ModelVersion, *, fast_path: bool = True
) -> ServedModel:
    """Build and load the ``ServedModel`` for ``local_dir`` (sklearn is the only flavor so far)."""
    model = SklearnModel(local_dir, meta, fast_path=fast_path)
    model.load()
    return model


def _same_decoded(left: Decoded | None, right: Decoded) -> bool:
    return (
        left is not None
        and np.array_equal(left.numeric, right.numeric, equal_nan=True)
        and left.categorical == right.categorical
    )


def _check_rows(compiled: CompiledPipeline, example: list[Any] | None) -> list[dict[str, Any]]:
    """The saved example plus rows that exercise every null and unseen-category branch."""
    names = compiled.names
    rows: list[dict[str, Any]] = []
    for row in example or []:
        if isinstance(row, dict):
            rows.append(dict(row))
        elif isinstance(row, list) and len(row) == len(names):
            rows.append(dict(zip(names, row, strict=True)))
    base = rows[0] if rows else {n: (0.0 if n in compiled.numeric_names else "x") for n in names}
    rows.append({n: None for n in names})
    rows.append(
        {n: (v if n in compiled.numeric_names else "__never_seen__") for n, v in base.items()}
    )
    for name in names:
        rows.append({**base, name: None})
    # A null where nothing imputes it never reaches the compiled path (see CompiledPipeline).
    unfilled = compiled.unfilled_names
    return [row for row in rows if not any(_missing(row.get(n)) for n in unfilled)]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _compile_checked(
    estimator: Any, schema: InputSchema | None, example: list[Any] | None, meta: ModelVersion
) -> tuple[CompiledPipeline | None, float]:
    """Compile the pipeline and keep it only if it answers exactly as scikit-learn does."""
    from inference.validation import build_frame

    try:
        compiled = compile_pipeline(estimator, schema)
        rows = _check_rows(compiled, example)
        decoded = compiled.decode(rows)
        if decoded is None:
            raise Unsupported("the check rows do not decode")
        # /predict bodies take the JSON decoder: it must read the same rows to the same arrays.
        body = orjson.dumps({"instances": rows}, option=orjson.OPT_SERIALIZE_NUMPY)
        if not _same_decoded(compiled.decode_json(body), decoded):
            raise Unsupported("the JSON decoder reads the check rows differently")
        predictions, probabilities = compiled.predict_matrix(compiled.transform(decoded))
        frame = build_frame(rows, schema)
        expected = np.asarray(estimator.predict(frame))
        if not np.array_equal(np.asarray(predictions), expected):
            raise Unsupported("predictions differ from scikit-learn's")
        if probabilities is not None:
            reference = np.asarray(estimator.predict_proba(frame))
            if not np.allclose(probabilities, reference, rtol=1e-9, atol=1e-12):
                raise Unsupported("probabilities differ from scikit-learn's")
    except Unsupported as exc:
        log.info("%s v%s: served through scikit-learn (%s)", meta.name, meta.version, exc)
        return None, 0.0
    except Exception as exc:  # a surprise in the check must never stop the model from loading
        log.warning(
            "%s v%s: compiled path disabled: %s", meta.name, meta.version, describe_exception(exc)
        )
        return None, 0.0
    one = compiled.transform(decoded)[:1]
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        compiled.predict_matrix(one)
        timings.append(time.perf_counter() - started)
    cost = float(np.median(timings))
    log.info(
        "%s v%s: compiled path on (one-row model call %.3f ms)", meta.name, meta.version, cost * 1e3
    )
    return compiled, cost


def _input_schema(inputs: Any) -> InputSchema | None:
    from mlflow.types.schema import DataType

    # Tensor signatures and unnamed columns have nothing to match rows against by name.
    if inputs is None or inputs.is_tensor_spec() or not inputs.has_input_names():
        return None
    columns = []
    for spec in inputs.inputs:
        kind = spec.type.name if isinstance(spec.type, DataType) else "any"
        columns.append(InputColumn(name=str(spec.name), type=kind, required=bool(spec.required)))
    return InputSchema(tuple(columns))


def _read_input_example(path: Path | None) -> list[Any] | None:
    """The saved example as the rows a client would send.

    Read as raw JSON rather than through MLflow's loader, so the load check goes through the
    same validation and conversion as a real request.
    """
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read the input example %s: %s", path, exc)
        return None
    if isinstance(data, dict) and isinstance(data.get("columns"), list) and "data" in data:
        columns = data["columns"]
        return [dict(zip(columns, row, strict=False)) for row in data["data"]]
    if isinstance(data, dict) and isinstance(data.get("inputs"), list):
        return list(data["inputs"])
    if isinstance(data, list) and all(isinstance(row, dict | list) for row in data):
        return data
    log.info("input example in %s has an unsupported layout; skipping the load check", path)
    return None


def _plain(values: Any) -> Any:
    """numpy -> JSON-ready Python values; NaN and infinities become null (JSON has neither)."""
    if values is None:
        return None
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        return values.tolist()
    if isinstance(values, np.ndarray) and values.dtype.kind == "f" and np.isfinite(values).all():
        return values.tolist()
    as_list = values.tolist() if hasattr(values, "tolist") else list(values)
    return _finite(as_list)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
