"""Fetching a model version's files: only where they belong, only as the platform signed them.

``ArtifactCache.fetch`` lists the version's objects, and before it writes a byte:

- refuses any key that would land outside the model's folder (S3 keys are free text: a key
  such as ``models/m/artifacts/../../../../etc/cron.d/x`` joined to a path escapes it);
- verifies the signed manifest (``mlops_common.signing``) and compares the listing with it, so
  an unsigned version, an unknown signer, another model's signature, or a file added, removed
  or resized is refused without downloading the model;

then downloads into a scratch folder, checks every file's SHA-256 against the manifest, and
renames the folder into the cache under the manifest's digest. A restart reuses a cached copy
only while the listing (sizes and ETags) is unchanged and the files still match the manifest;
a file changed in the object store is downloaded again, and then refused.

Every refusal is a ``ModelRejected`` naming the file or key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlops_common.signing import (
    MAX_ENVELOPE_BYTES,
    SIGNATURE_FILE,
    Manifest,
    ManifestVerifier,
    SignatureError,
    check_files,
    check_sizes,
)
from mlops_common.storage import ObjectTooLarge, S3Uri, S3UriError, StoredObject

from inference.errors import ModelLoadError, ModelRejected, describe_exception
from inference.safe_load import unsafe_relative_path

log = logging.getLogger(__name__)


class ArtifactSource(Protocol):
    """What fetching needs of ``mlops_common.storage.ObjectStore``."""

    def list_objects(self, prefix: S3Uri) -> list[StoredObject]: ...

    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes: ...

    def download_file(self, uri: S3Uri, filename: str) -> None: ...


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    # None only when signatures are not required (INFERENCE_REQUIRE_SIGNED_MODELS=false).
    manifest: Manifest | None


class ArtifactCache:
    """One model's downloaded versions, each in ``root/<manifest digest>``."""

    def __init__(
        self, source: ArtifactSource, root: Path, verifier: ManifestVerifier | None
    ) -> None:
        self._source = source
        self.root = root
        self._verifier = verifier

    def fetch(self, model_name: str, artifact_uri: str) -> FetchedModel:
        try:
            prefix = S3Uri.parse(artifact_uri)
        except S3UriError as exc:
            raise ModelLoadError(f"artifact_uri is not usable: {exc}") from exc
        base = prefix.key.rstrip("/") + "/"
        try:
            listing = self._source.list_objects(S3Uri(prefix.bucket, base))
        except Exception as exc:
            raise ModelLoadError(
                f"listing {artifact_uri} failed: {describe_exception(exc)}"
            ) from exc
        objects = {
            relative_path(base, obj.key): obj for obj in listing if not obj.key.endswith("/")
        }
        if not objects:
            raise ModelLoadError(f"no artifacts under {artifact_uri}")
        manifest = self._verified_manifest(model_name, prefix.bucket, objects)
        name = manifest.digest if manifest else "unsigned-" + _sha256(artifact_uri.encode())[:32]
        dest = self.root / name
        record = self.root / f"{name}.source.json"
        fingerprint = _fingerprint(artifact_uri, objects)
        if self._reusable(dest, record, fingerprint, manifest):
            log.info("using the cached copy in %s", dest)
            return FetchedModel(dest, manifest)
        self.root.mkdir(parents=True, exist_ok=True)
        # Downloaded next to the final place and renamed: a crash never leaves a half-copied
        # folder that a restart would take for a complete model.
        partial = self.root / f".partial-{uuid.uuid4().hex[:12]}"
        try:
            for relative, obj in objects.items():
                target = partial / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self._source.download_file(S3Uri(prefix.bucket, obj.key), str(target))
            if manifest is not None:
                try:
                    check_files(partial, manifest)
                except SignatureError as exc:
                    raise ModelRejected(f"refused: {exc}") from None
            shutil.rmtree(dest, ignore_errors=True)
            partial.rename(dest)
            record.write_text(fingerprint)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"download of {artifact_uri} failed: {describe_exception(exc)}"
            ) from exc
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return FetchedModel(dest, manifest)

    def discard(self, fetched: FetchedModel) -> None:
        """Forget a copy that failed to load, so the next attempt downloads it again."""
        shutil.rmtree(fetched.path, ignore_errors=True)
        fetched.path.with_name(f"{fetched.path.name}.source.json").unlink(missing_ok=True)

    def prune(self, keep: Path) -> None:
        """Delete every other copy: the served model is in memory, nothing reads them."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name in (keep.name, f"{keep.name}.source.json"):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _verified_manifest(
        self, model_name: str, bucket: str, objects: dict[str, StoredObject]
    ) -> Manifest | None:
        if self._verifier is None:
            return None
        envelope = objects.get(SIGNATURE_FILE)
        if envelope is None:
            raise ModelRejected(
                f"refused: not signed by the platform (no {SIGNATURE_FILE}); only versions "
                "the trainer registered are served"
            )
        if envelope.size > MAX_ENVELOPE_BYTES:
            raise ModelRejected(f"refused: {SIGNATURE_FILE} is {envelope.size} bytes")
        try:
            # Bounded again: the object may have been replaced since it was listed.
            data = self._source.get_bytes(S3Uri(bucket, envelope.key), MAX_ENVELOPE_BYTES)
        except ObjectTooLarge as exc:
            raise ModelRejected(f"refused: {SIGNATURE_FILE} is {exc.size} bytes or more") from None
        except Exception as exc:
            raise ModelLoadError(
                f"reading {SIGNATURE_FILE} failed: {describe_exception(exc)}"
            ) from exc
        try:
            manifest = self._verifier.verify(data, model_name=model_name)
            check_sizes(manifest, {path: obj.size for path, obj in objects.items()})
        except SignatureError as exc:
            raise ModelRejected(f"refused: {exc}") from None
        return manifest

    def _reusable(
        self, dest: Path, record: Path, fingerprint: str, manifest: Manifest | None
    ) -> bool:
        try:
            if not dest.is_dir() or record.read_text() != fingerprint:
                return False
        except OSError:
            return False
        if manifest is None:
            return True
        try:
            check_files(dest, manifest)
        except SignatureError as exc:
            # Changed on this disk, not in the store: download it again.
            log.warning("the cached copy in %s is not as signed (%s); downloading again", dest, exc)
            return False
        return True


def relative_path(base: str, key: str) -> str:
    """Where object ``key`` (under the ``base`` prefix) goes in the model's folder.

    Refused when it would be written outside that folder.
    """
    if not key.startswith(base):
        raise ModelRejected(f"refused: artifact key {key!r} is not under {base!r}")
    relative = key[len(base) :]
    problem = unsafe_relative_path(relative)
    if problem is not None:
        raise ModelRejected(
            f"refused: artifact key {key!r} {problem}: it would be written outside the model's "
            "folder"
        )
    return relative


def _fingerprint(artifact_uri: str, objects: dict[str, StoredObject]) -> str:
    listing = {path: [obj.size, obj.etag] for path, obj in sorted(objects.items())}
    return json.dumps({"artifact_uri": artifact_uri, "objects": listing}, sort_keys=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
