"""What ``GET /v2/models/{name}`` says about the served model: inputs and outputs as V2 tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from inference.model import ServedModel
from inference.v2.codec import PREDICT, PREDICT_PROBA, classes_parameter, datatype_of
from inference.v2.schemas import MetadataTensor, ModelMetadata

_MLFLOW_TO_V2 = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    # ISO 8601 strings, as /predict takes them.
    "datetime": "BYTES",
}


def describe(model: ServedModel) -> ModelMetadata:
    """The served model's inputs (from its signature) and outputs, as V2 tensors."""
    schema = model.input_schema
    inputs = [
        MetadataTensor(name=c.name, datatype=_MLFLOW_TO_V2.get(c.type, "BYTES"), shape=[-1])
        for c in (schema.columns if schema is not None else ())
    ]
    classes = model.proba_classes
    outputs = [MetadataTensor(name=PREDICT, datatype=_predict_datatype(model, classes), shape=[-1])]
    if classes is not None:
        outputs.append(
            MetadataTensor(
                name=PREDICT_PROBA,
                datatype="FP64",
                shape=[-1, len(classes)],
                parameters={"classes": classes_parameter(classes)},
            )
        )
    return ModelMetadata(
        name=model.meta.name,
        versions=[str(model.meta.version)],
        platform=model.flavor,
        inputs=inputs,
        outputs=outputs,
    )


def _predict_datatype(model: ServedModel, classes: list[Any] | None) -> str:
    outputs = (model.signature or {}).get("outputs")
    if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict):
        spec = outputs[0]
        if spec.get("type") == "tensor":
            dtype = (spec.get("tensor-spec") or {}).get("dtype")
            try:
                return _numpy_datatype(np.dtype(dtype))
            except TypeError:
                pass
        elif spec.get("type") in _MLFLOW_TO_V2:
            return _MLFLOW_TO_V2[spec["type"]]
    if classes:
        return datatype_of(classes)
    return "FP64"


def _numpy_datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in "iu":
        return f"{'U' if dtype.kind == 'u' else ''}INT{dtype.itemsize * 8}"
    if dtype.kind == "f":
        return f"FP{dtype.itemsize * 8}"
    return "BYTES"
