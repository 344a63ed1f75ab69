"""Loading the version an alias names, as inference would: only as the platform signed it.

The champion is scored in the worker on the challenger's rows, so its files are code the worker
runs. They are fetched from S3 (the location the gateway resolves), and before a byte of the model
is read: the signed manifest must verify with the platform's public key for this model name, the
listing must match it (no file added, removed or resized), and after the download every file's
SHA-256 must too. ``model.skops`` is then loaded with the platform's trusted types, never pickle.

Every refusal is a ``ChampionRefused``; a store that could not be asked is ``ChampionUnavailable``
(the decision treats them differently: ``mlops_common.promotion.decide_on_same_rows``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlops_common.artifacts import ArtifactRefused, listed_files, read_manifest
from mlops_common.signing import (
    SIGNATURE_FILE,
    Manifest,
    ManifestVerifier,
    SignatureError,
    check_files,
)
from mlops_common.storage import ObjectStore, S3Uri, S3UriError
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_FILE = "model.skops"
# A champion bigger than this is not downloaded into a worker to be scored.
DEFAULT_MAX_CHAMPION_BYTES = 2 * 1024**3


class ChampionRefused(Exception):
    """The version is not as the platform signed it, or cannot be loaded: the message says why."""


class ChampionUnavailable(Exception):
    """Its files could not be fetched (store unreachable or failing): nothing is known of it."""


def load_signed_model(
    store: ObjectStore,
    verifier: ManifestVerifier,
    model_name: str,
    artifact_uri: str,
    scratch: Path,
    *,
    max_bytes: int = DEFAULT_MAX_CHAMPION_BYTES,
) -> tuple[Any, Manifest]:
    """The model under ``artifact_uri`` (downloaded into ``scratch``) and its verified manifest."""
    try:
        prefix = S3Uri.parse(artifact_uri)
    except S3UriError as exc:
        raise ChampionRefused(f"artifact_uri {artifact_uri!r} is not an s3:// location") from exc
    base = prefix.key.rstrip("/") + "/"
    listing = _store(lambda: store.list_objects(S3Uri(prefix.bucket, base)), "listing")
    try:
        objects = listed_files(base, listing)
        manifest = _store(
            lambda: read_manifest(store, verifier, model_name, prefix.bucket, objects),
            f"reading {SIGNATURE_FILE}",
        )
    except ArtifactRefused as exc:
        raise ChampionRefused(str(exc)) from None
    total = sum(digest.size for digest in manifest.files.values())
    if total > max_bytes:
        raise ChampionRefused(f"its files are {total} bytes; at most {max_bytes} are scored")
    if MODEL_FILE not in manifest.files:
        raise ChampionRefused(f"it has no {MODEL_FILE} (only skops models are scored)")
    for relative in manifest.files:
        # Every manifest path is a listed key's (check_sizes), so inside the folder.
        target = scratch / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        key = S3Uri(prefix.bucket, objects[relative].key)
        try:
            store.download_file(key, str(target))
        except Exception as exc:
            raise ChampionUnavailable(f"downloading {relative} failed: {_describe(exc)}") from exc
    try:
        check_files(scratch, manifest)
    except SignatureError as exc:
        raise ChampionRefused(str(exc)) from None
    return _load_skops(scratch / MODEL_FILE), manifest


def _load_skops(path: Path) -> Any:
    from skops import io as skops_io

    try:
        # The platform's list, never the one the artifact carries (see trusted_types).
        return skops_io.load(path, trusted=list(PLATFORM_TRUSTED_TYPES))
    except Exception as exc:
        raise ChampionRefused(f"{MODEL_FILE} cannot be loaded safely: {_describe(exc)}") from None


def _store(call: Callable[[], T], what: str) -> T:
    try:
        return call()
    except ArtifactRefused:
        raise
    except Exception as exc:
        raise ChampionUnavailable(f"{what} failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
