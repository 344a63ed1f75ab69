"""Artifact URI mapping and MLmodel parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml
from mlops_common.errors import UpstreamError

MLFLOW_ARTIFACTS_SCHEME = "mlflow-artifacts"
PREFERRED_FLAVOR = "sklearn"
FALLBACK_FLAVOR = "python_function"
SIGNATURE_PARTS = ("inputs", "outputs", "params")


@dataclass(frozen=True)
class ModelArtifacts:
    """What a model version's MLmodel file says; immutable once the version exists."""

    artifact_uri: str
    flavor: str
    flavors: list[str]
    signature: dict[str, Any] | None
    model_id: str | None = None


def to_s3_uri(artifact_uri: str, artifacts_destination: str) -> str:
    """Map MLflow's download URI to the ``s3://`` location of the same objects."""
    uri = artifact_uri.rstrip("/")
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        return uri
    if scheme == MLFLOW_ARTIFACTS_SCHEME:
        # Both mlflow-artifacts:/path and mlflow-artifacts://host:port/path occur.
        path = urlsplit(uri).path.lstrip("/")
        if path:
            return f"{artifacts_destination.rstrip('/')}/{path}"
    raise UpstreamError(
        f"MLflow returned an artifact URI with scheme '{scheme or '(none)'}'; the gateway "
        "only serves s3:// and mlflow-artifacts:/ locations",
        upstream="mlflow",
        artifact_uri_scheme=scheme,
    )


def parse_mlmodel(raw: bytes, artifact_uri: str) -> ModelArtifacts:
    where = f"{artifact_uri}/MLmodel"
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UpstreamError(f"{where} is not valid YAML", upstream="s3") from exc
    if not isinstance(doc, dict):
        raise UpstreamError(f"{where} is not a YAML mapping", upstream="s3")
    flavors_doc = doc.get("flavors")
    if not isinstance(flavors_doc, dict) or not flavors_doc:
        raise UpstreamError(f"{where} declares no flavors", upstream="s3")
    flavors = [str(f) for f in flavors_doc]
    flavor = PREFERRED_FLAVOR if PREFERRED_FLAVOR in flavors else FALLBACK_FLAVOR
    return ModelArtifacts(
        artifact_uri=artifact_uri,
        flavor=flavor,
        flavors=flavors,
        signature=_signature(doc.get("signature"), where),
        model_id=doc["model_id"] if isinstance(doc.get("model_id"), str) else None,
    )


def _signature(raw: Any, mlmodel: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UpstreamError(f"{mlmodel} has a malformed signature", upstream="s3")
    return {p: _json_part(raw.get(p), f"{mlmodel} signature.{p}") for p in SIGNATURE_PARTS}


def _json_part(value: Any, where: str) -> Any:
    # MLflow stores each part as a JSON string inside the YAML document.
    if value is None or isinstance(value, list | dict):
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise UpstreamError(f"{where} is not valid JSON", upstream="s3") from exc
    raise UpstreamError(f"{where} has an unexpected type", upstream="s3")
