"""Reading a registered version's files from the object store as the platform signed them.

Inference (before serving) and the trainer (before scoring a champion) fetch model files the
same way: the listing's keys must stay inside the model's folder, the signed manifest
(``mlops-signature.json``) must verify for the model's name, and the listing must match it: no
file added, removed or resized. Both then download and check every file's SHA-256
(``signing.check_files``). Every refusal here is an ``ArtifactRefused``; errors of the store
propagate as they are, for the caller to tell an outage from a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Protocol

from mlops_common.signing import (
    MAX_ENVELOPE_BYTES,
    SIGNATURE_FILE,
    Manifest,
    ManifestVerifier,
    SignatureError,
    check_sizes,
)
from mlops_common.storage import ObjectTooLarge, S3Uri, StoredObject


class ArtifactRefused(Exception):
    """The files are not as the platform signed or stores them: the message says why."""


class EnvelopeSource(Protocol):
    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes: ...


def unsafe_relative_path(relative: str) -> str | None:
    """Why ``relative`` could land outside the folder it is joined to, or None if it cannot."""
    if "\\" in relative:
        return "contains a backslash"
    if "\x00" in relative:
        return "contains a NUL byte"
    if relative.startswith("/") or PurePosixPath(relative).is_absolute():
        return "is an absolute path"
    parts = relative.split("/")
    if ".." in parts:
        return "has a '..' segment"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' segment"
    return None


def relative_path(base: str, key: str) -> str:
    """Where object ``key`` (under the ``base`` prefix) goes in the model's folder; refused
    when it would be written outside that folder."""
    if not key.startswith(base):
        raise ArtifactRefused(f"artifact key {key!r} is not under {base!r}")
    relative = key[len(base) :]
    problem = unsafe_relative_path(relative)
    if problem is not None:
        raise ArtifactRefused(
            f"artifact key {key!r} {problem}: it would be written outside the model's folder"
        )
    return relative


def listed_files(base: str, listing: Iterable[StoredObject]) -> dict[str, StoredObject]:
    """The objects of a listing under ``base`` by their path in the model's folder."""
    return {relative_path(base, o.key): o for o in listing if not o.key.endswith("/")}


def read_manifest(
    source: EnvelopeSource,
    verifier: ManifestVerifier,
    model_name: str,
    bucket: str,
    files: Mapping[str, StoredObject],
) -> Manifest:
    """The verified manifest of ``files`` (``listed_files``), matched against their sizes."""
    envelope = files.get(SIGNATURE_FILE)
    if envelope is None:
        raise ArtifactRefused(f"not signed by the platform (no {SIGNATURE_FILE})")
    if envelope.size > MAX_ENVELOPE_BYTES:
        raise ArtifactRefused(f"{SIGNATURE_FILE} is {envelope.size} bytes")
    try:
        # Bounded again: the object may have been replaced since it was listed.
        data = source.get_bytes(S3Uri(bucket, envelope.key), MAX_ENVELOPE_BYTES)
    except ObjectTooLarge as exc:
        raise ArtifactRefused(f"{SIGNATURE_FILE} is {exc.size} bytes or more") from None
    try:
        manifest = verifier.verify(data, model_name=model_name)
        check_sizes(manifest, {path: obj.size for path, obj in files.items()})
    except SignatureError as exc:
        raise ArtifactRefused(str(exc)) from None
    return manifest
