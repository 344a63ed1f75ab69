"""A compiled form of common scikit-learn pipelines: JSON rows to predictions with numpy alone.

Serving a pipeline through scikit-learn costs milliseconds per call that have nothing to do with
the model: building a DataFrame, ColumnTransformer's bookkeeping, feature-name checks. For the
pipelines the trainer builds (imputers, scaling, one-hot encoding, then an estimator) the same
arithmetic is a few vector operations. This module reads the fitted parameters once, at load,
and the model checks the compiled form against scikit-learn itself on real and edge-case rows
before using it; anything it does not recognise simply stays on the scikit-learn path.

Linear estimators are evaluated here directly; other estimators (forests, boosting) receive the
transformed matrix, which skips the per-call pandas and ColumnTransformer overhead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np

from inference.validation import InputSchema

log = logging.getLogger(__name__)

NUMERIC_KINDS = frozenset({"double", "float", "long", "integer"})


class Unsupported(Exception):
    """The pipeline has a part this compiler does not know; scikit-learn serves it as it is."""


@dataclass
class _Numeric:
    """Numeric columns: impute, then optionally standardise."""

    columns: list[int]  # indices into the numeric input matrix
    fill: np.ndarray | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def width(self) -> int:
        return len(self.columns)


@dataclass
class _Categorical:
    """String columns: impute, then one-hot encode (unknown categories give all zeros)."""

    columns: list[int]  # indices into the categorical input lists
    fill: list[Any] | None = None
    lookups: list[dict[Any, int]] = field(default_factory=list)
    width: int = 0


@dataclass
class Decoded:
    """Validated rows: numbers as one float matrix, strings as per-column lists."""

    numeric: np.ndarray
    categorical: list[list[Any]]

    @property
    def rows(self) -> int:
        return int(self.numeric.shape[0])


class CompiledPipeline:
    """Preprocessing and estimator of a fitted pipeline, as numpy operations."""

    def __init__(
        self, schema: InputSchema, blocks: list[_Numeric | _Categorical], estimator: Any
    ) -> None:
        self.schema = schema
        self.blocks = blocks
        self.names = schema.names
        self.n_columns = len(self.names)
        self.numeric_names = [c.name for c in schema.columns if c.type in NUMERIC_KINDS]
        self.string_names = [c.name for c in schema.columns if c.type == "string"]
        numeric_pos = [i for i, c in enumerate(schema.columns) if c.type in NUMERIC_KINDS]
        string_pos = [i for i, c in enumerate(schema.columns) if c.type == "string"]
        self._numbers_by_name = _getter(self.numeric_names)
        self._strings_by_name = _getter(self.string_names)
        self._numbers_by_pos = _getter(numeric_pos)
        self._strings_by_pos = _getter(string_pos)
        self._body = _body_decoder(self.numeric_names, self.string_names)
        numeric_kinds = [c.type for c in schema.columns if c.type in NUMERIC_KINDS]
        integers = [i for i, kind in enumerate(numeric_kinds) if kind in _INT_BOUNDS]
        self._int_columns = np.array(integers, dtype=np.intp)
        self._int_low = np.array([_INT_BOUNDS[numeric_kinds[i]][0] for i in integers])
        self._int_high = np.array([_INT_BOUNDS[numeric_kinds[i]][1] for i in integers])
        # Numeric columns no imputer fills: scikit-learn refuses a null there, so the compiled
        # path leaves such rows to it (and to the validator's 422).
        filled = {
            i for b in blocks if isinstance(b, _Numeric) and b.fill is not None for i in b.columns
        }
        unfilled = [i for i in range(len(self.numeric_names)) if i not in filled]
        self._unfilled = np.array(unfilled, dtype=np.intp)
        self.unfilled_names = frozenset(self.numeric_names[i] for i in unfilled)
        self.width = sum(b.width for b in blocks)
        self.estimator = estimator
        self._linear = _linear_parts(estimator)
        self.classes: np.ndarray | None = getattr(estimator, "classes_", None)
        self.has_proba = self.classes is not None and hasattr(estimator, "predict_proba")

    # ---- rows -> arrays ------------------------------------------------------------------------
    def decode_json(self, raw: bytes) -> Decoded | None:
        """A ``{"instances": [{column: value}, ...]}`` body straight to arrays, or None.

        msgspec parses and type-checks the body in one pass in C, against a struct made from the
        signature (numbers may be ints, floats or null; strings str or null; every column present,
        no other). Parsing into Python dicts first and checking each value costs a 100-row request
        twice as much. None for anything else (rows as lists, a wrong type, a missing or unknown
        column, malformed JSON): the general path then parses the body and explains the problem.
        """
        try:
            rows = self._body.decode(raw).instances
        except msgspec.DecodeError:  # ValidationError included
            return None
        if not rows:
            return None
        # Struct fields are numbers first, then strings (see _body_decoder).
        values = list(map(msgspec.structs.astuple, rows))
        split = len(self.numeric_names)
        if self.string_names:
            numbers: list[Any] = [row[:split] for row in values]
            columns = [list(c) for c in zip(*(row[split:] for row in values), strict=True)]
        else:
            numbers, columns = values, []
        # None becomes NaN here, the missing value the imputers fill.
        matrix = np.array(numbers, dtype=np.float64).reshape(len(rows), split)
        return Decoded(matrix, columns) if self._usable(matrix) else None

    def _usable(self, matrix: np.ndarray) -> bool:
        """No infinity; no null where nothing imputes it; integers whole and in range."""
        if np.isinf(matrix).any():
            return False
        if self._unfilled.size and np.isnan(matrix[:, self._unfilled]).any():
            return False
        return self._integers_fit(matrix)

    def _integers_fit(self, matrix: np.ndarray) -> bool:
        """Integer columns hold whole numbers in their type's range (or nulls), as the full
        validator demands: 3.0 is fine, 2.5 is not."""
        if not self._int_columns.size:
            return True
        part = matrix[:, self._int_columns]
        whole = (np.floor(part) == part) & (part >= self._int_low) & (part < self._int_high)
        return bool((whole | np.isnan(part)).all())

    def decode(self, instances: Sequence[Any]) -> Decoded | None:
        """Rows to arrays when every value is plainly valid; None sends the request to the full
        validator, which explains any problem (or accepts a rarer form) field by field."""
        n = len(instances)
        if n == 0:
            return None
        numbers: list[Any] = []
        strings: list[Any] = []
        first = instances[0]
        # itemgetter pulls a row's values out in C; the checks below are set operations over the
        # value types, also in C: per-value Python work would dominate a linear model's cost.
        if type(first) is dict:
            if set(map(type, instances)) != {dict} or set(map(len, instances)) != {self.n_columns}:
                return None
            get_numbers, get_strings = self._numbers_by_name, self._strings_by_name
        elif type(first) is list:
            if set(map(type, instances)) != {list} or set(map(len, instances)) != {self.n_columns}:
                return None
            get_numbers, get_strings = self._numbers_by_pos, self._strings_by_pos
        else:
            return None
        try:
            if get_numbers is not None:
                numbers = list(chain.from_iterable(map(get_numbers, instances)))
            if get_strings is not None:
                strings = list(map(get_strings, instances))
        except KeyError:
            return None
        if not set(map(type, numbers)) <= _NUMBER_TYPES:
            return None
        columns = [list(c) for c in zip(*strings, strict=True)] if strings else []
        for j, column in enumerate(columns):
            kinds = set(map(type, column))
            if kinds <= _STRING_TYPES:
                continue
            # NaN stands for a missing string in pandas' JSON (and MLflow's saved examples).
            if kinds <= _STRING_OR_NAN and all(v != v for v in column if type(v) is float):
                columns[j] = [None if type(v) is float else v for v in column]
                continue
            return None
        try:
            matrix = np.array(numbers, dtype=np.float64).reshape(n, len(self.numeric_names))
        except (OverflowError, ValueError):
            return None
        return Decoded(matrix, columns) if self._usable(matrix) else None

    def decode_columns(self, columns: Mapping[str, list[Any]], rows: int) -> Decoded | None:
        """Named columns (V2 tensors) to arrays when every value is plainly valid, else None (the
        full validator then judges them): the same rules as ``decode``, without building rows."""
        if len(columns) != self.n_columns:
            return None
        try:
            numbers = [columns[name] for name in self.numeric_names]
            strings = [columns[name] for name in self.string_names]
        except KeyError:
            return None
        if not all(set(map(type, column)) <= _NUMBER_TYPES for column in numbers):
            return None
        if not all(set(map(type, column)) <= _STRING_TYPES for column in strings):
            return None
        try:
            # One row per column, then transposed: a view, no copy.
            matrix = np.array(numbers, dtype=np.float64).reshape(len(numbers), rows).T
        except (OverflowError, ValueError):
            return None
        return Decoded(matrix, strings) if self._usable(matrix) else None

    def transform(self, decoded: Decoded) -> np.ndarray:
        out = np.empty((decoded.rows, self.width), dtype=np.float64)
        offset = 0
        for block in self.blocks:
            if isinstance(block, _Numeric):
                values = decoded.numeric[:, block.columns]
                if block.fill is not None:
                    values = np.where(np.isnan(values), block.fill, values)
                if block.mean is not None:
                    values = values - block.mean
                if block.scale is not None:
                    values = values / block.scale
                out[:, offset : offset + block.width] = values
            else:
                part = out[:, offset : offset + block.width]
                part.fill(0.0)
                for lookup, col_index, fill in zip(
                    block.lookups,
                    block.columns,
                    block.fill or [None] * len(block.columns),
                    strict=True,
                ):
                    for row, value in enumerate(decoded.categorical[col_index]):
                        if value is None:
                            value = fill
                        position = lookup.get(value)
                        if position is not None:
                            part[row, position] = 1.0
            offset += block.width
        return out

    # ---- arrays -> predictions -------------------------------------------------------------------
    def predict_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and (for classifiers) class probabilities of transformed rows."""
        if self._linear is not None:
            coef, intercept, kind = self._linear
            scores = x @ coef.T + intercept
            if kind == "regressor":
                return (scores.ravel() if scores.shape[1] == 1 else scores), None
            assert self.classes is not None
            if scores.shape[1] == 1:
                positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
                proba = np.column_stack([1.0 - positive, positive])
                return self.classes[(scores[:, 0] > 0).astype(np.intp)], proba
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            proba = shifted / shifted.sum(axis=1, keepdims=True)
            return self.classes[scores.argmax(axis=1)], proba
        if self.has_proba:
            proba = self.estimator.predict_proba(x)
            assert self.classes is not None
            return self.classes[proba.argmax(axis=1)], proba
        return self.estimator.predict(x), None


# [low, high) of the signature's integer kinds, as doubles; a value the bounds cannot tell apart
# from an out-of-range one in floating point goes to the full validator.
_INT_BOUNDS = {"long": (-(2.0**63), 2.0**63), "integer": (-(2.0**31), 2.0**31)}
_NUMBER_TYPES = frozenset({float, int, type(None)})
_STRING_TYPES = frozenset({str, type(None)})
_STRING_OR_NAN = frozenset({str, type(None), float})


def _getter(keys: Sequence[Any]) -> Callable[[Any], tuple[Any, ...]] | None:
    """itemgetter that always returns a tuple (itemgetter of one key returns the bare value)."""
    if not keys:
        return None
    if len(keys) == 1:
        key = keys[0]
        return lambda row: (row[key],)
    return itemgetter(*keys)


def _body_decoder(numeric: list[str], strings: list[str]) -> msgspec.json.Decoder[Any]:
    """A JSON decoder for ``{"instances": [row, ...]}`` whose rows must match the signature."""
    # Attribute names are positional: column names need not be Python identifiers.
    fields: list[tuple[str, Any, Any]] = [
        (f"n{i}", float | None, msgspec.field(name=name)) for i, name in enumerate(numeric)
    ]
    fields += [(f"s{i}", str | None, msgspec.field(name=name)) for i, name in enumerate(strings)]
    row = msgspec.defstruct("Row", fields, forbid_unknown_fields=True, gc=False)
    body = msgspec.defstruct("Body", [("instances", list[row])], forbid_unknown_fields=True)  # type: ignore[valid-type]
    return msgspec.json.Decoder(body)


def compile_pipeline(model: Any, schema: InputSchema | None) -> CompiledPipeline:
    """Compile a fitted model whose inputs the signature names; raises Unsupported otherwise.

    Understood: ``Pipeline([ColumnTransformer(...), estimator])`` (what the trainer builds), and
    on all-numeric inputs a bare estimator or ``Pipeline([imputer?, scaler?, estimator])``.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if schema is None:
        raise Unsupported("no named input signature")
    unknown_kinds = {c.type for c in schema.columns} - NUMERIC_KINDS - {"string"}
    if unknown_kinds:
        raise Unsupported(f"input types {sorted(unknown_kinds)}")
    numeric_index = {
        c.name: i for i, c in enumerate(c for c in schema.columns if c.type in NUMERIC_KINDS)
    }
    string_index = {
        c.name: i for i, c in enumerate(c for c in schema.columns if c.type == "string")
    }
    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else [model]
    *preprocess, estimator = steps
    if len(preprocess) == 1 and isinstance(preprocess[0], ColumnTransformer):
        blocks = _column_blocks(preprocess[0], numeric_index, string_index)
    else:
        blocks = [_all_numeric_block(model, preprocess, numeric_index, string_index)]
        # Fitted on named columns, scikit-learn warns on every unnamed matrix it is given; only
        # linear models, which are evaluated here without scikit-learn, avoid that.
        bare_nonlinear = not preprocess and _linear_parts(estimator) is None
        if bare_nonlinear and hasattr(estimator, "feature_names_in_"):
            raise Unsupported("a bare non-linear estimator fitted on named columns")
    if _linear_parts(estimator) is None and not hasattr(estimator, "predict"):
        raise Unsupported(f"estimator {type(estimator).__name__}")
    return CompiledPipeline(schema, blocks, estimator)


def _column_blocks(
    preprocess: Any, numeric_index: dict[str, int], string_index: dict[str, int]
) -> list[_Numeric | _Categorical]:
    from sklearn.pipeline import Pipeline

    feature_names = [str(n) for n in getattr(preprocess, "feature_names_in_", [])]
    blocks: list[_Numeric | _Categorical] = []
    for name, transformer, columns in preprocess.transformers_:
        if transformer == "drop" or (isinstance(columns, list | np.ndarray) and len(columns) == 0):
            continue
        names = _column_names(columns, feature_names)
        steps = transformer.steps if isinstance(transformer, Pipeline) else [(name, transformer)]
        if all(n in numeric_index for n in names):
            blocks.append(_numeric_block([numeric_index[n] for n in names], steps))
        elif all(n in string_index for n in names):
            blocks.append(_categorical_block([string_index[n] for n in names], steps))
        else:
            raise Unsupported(f"transformer {name!r} mixes or misses columns {names}")
    return blocks


def _all_numeric_block(
    model: Any, steps: list[Any], numeric_index: dict[str, int], string_index: dict[str, int]
) -> _Numeric:
    """Every input column, in the order the model was fitted on, through ``steps``."""
    if string_index:
        raise Unsupported("string inputs without a ColumnTransformer")
    fitted = getattr(model, "feature_names_in_", None)
    names = [str(n) for n in fitted] if fitted is not None else list(numeric_index)
    if sorted(names) != sorted(numeric_index):
        raise Unsupported(f"fitted on columns {names[:5]}…, not the signature's")
    # Pipeline allows None for a skipped step.
    named = [("step", "passthrough" if step is None else step) for step in steps]
    return _numeric_block([numeric_index[n] for n in names], named)


def _column_names(columns: Any, feature_names: list[str]) -> list[str]:
    if isinstance(columns, str):
        return [columns]
    values = list(columns)
    if all(isinstance(c, str) for c in values):
        return values
    if (
        all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in values)
        and feature_names
    ):
        return [feature_names[int(c)] for c in values]
    raise Unsupported(f"column selector {columns!r}")


def _numeric_block(columns: list[int], steps: list[tuple[str, Any]]) -> _Numeric:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    block = _Numeric(columns)
    for _, step in steps:
        if step == "passthrough":
            continue
        if isinstance(step, SimpleImputer) and block.mean is None and block.fill is None:
            if not _imputes_nan(step) or step.add_indicator:
                raise Unsupported("numeric SimpleImputer that does not impute NaN")
            stats = np.asarray(step.statistics_, dtype=np.float64)
            if stats.shape[0] != len(columns) or np.isnan(stats).any():
                # keep_empty_features=False drops all-NaN columns: the widths would not line up.
                raise Unsupported("numeric imputer with dropped or NaN statistics")
            block.fill = stats
        elif isinstance(step, StandardScaler) and block.mean is None and block.scale is None:
            block.mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None
            block.scale = np.asarray(step.scale_, dtype=np.float64) if step.with_std else None
        else:
            raise Unsupported(f"numeric step {type(step).__name__}")
    return block


def _categorical_block(columns: list[int], steps: list[tuple[str, Any]]) -> _Categorical:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    block = _Categorical(columns)
    encoded = False
    for _, step in steps:
        if isinstance(step, SimpleImputer) and not encoded:
            if step.add_indicator:
                raise Unsupported("imputer with missing indicator")
            if block.fill is None:
                # The validator turns every null into NaN, so the NaN imputer is the one that acts;
                # later imputers (e.g. for None) then see no missing values at all.
                if not _imputes_nan(step):
                    raise Unsupported("categorical imputer that does not impute NaN")
                block.fill = list(step.statistics_)
        elif isinstance(step, OneHotEncoder) and not encoded:
            if step.drop_idx_ is not None or step.handle_unknown not in (
                "ignore",
                "infrequent_if_exist",
            ):
                raise Unsupported("OneHotEncoder with drop or handle_unknown=error")
            if getattr(step, "_infrequent_enabled", False) and any(
                c is not None for c in step.infrequent_categories_
            ):
                raise Unsupported("OneHotEncoder with infrequent categories")
            offset = 0
            for categories in step.categories_:
                block.lookups.append({c: offset + i for i, c in enumerate(categories)})
                offset += len(categories)
            block.width = offset
            encoded = True
        else:
            raise Unsupported(f"categorical step {type(step).__name__}")
    if not encoded:
        raise Unsupported("string columns without a OneHotEncoder")
    return block


def _imputes_nan(imputer: Any) -> bool:
    missing = imputer.missing_values
    return isinstance(missing, float) and np.isnan(missing)


def _linear_parts(estimator: Any) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(coef, intercept, kind) of a fitted linear model whose output is a plain affine map."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    if isinstance(estimator, LogisticRegression):
        kind = "classifier"
    elif type(estimator) in (LinearRegression, Ridge):
        kind = "regressor"
    else:
        return None
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    return coef, intercept, kind
