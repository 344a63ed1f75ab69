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

Every refusal is a ``ModelRejected`` naming the file or key. A store that cannot be asked
(unreachable, timing out, answering 5xx) is a ``StoreUnavailable``: nothing is known about the
version then, and it is worth asking again soon.

The copy being served is named in ``current.json`` (``remember``), so that a start while the
registry or the store is down can serve it (``remembered``), verified again as a download is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from mlops_common.artifacts import (
    ArtifactRefused,
    listed_files,
    read_manifest,
    unsafe_relative_path,
)
from mlops_common.signing import (
    MAX_ENVELOPE_BYTES,
    SIGNATURE_FILE,
    Manifest,
    ManifestVerifier,
    SignatureError,
    check_files,
)
from mlops_common.storage import S3Uri, S3UriError, StoredObject
from pydantic import ValidationError

from inference.errors import ModelLoadError, ModelRejected, StoreUnavailable, describe_exception
from inference.model import ModelVersion

log = logging.getLogger(__name__)

# Names the copy being served and the version metadata it was served as (see ``remember``).
CURRENT_FILE = "current.json"
CURRENT_FORMAT = "mlops.inference-current/v1"
_MAX_CURRENT_BYTES = 64 * 1024
# Error codes of a store that is failing or overloaded rather than refusing the request.
_UNAVAILABLE_CODES = frozenset(
    {"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown", "Throttling"}
)


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
    # False when an existing copy was reused (the store's listing had not changed).
    downloaded: bool = True


@dataclass(frozen=True)
class RememberedModel:
    """The copy last served, checked again, and the version metadata it was served as."""

    fetched: FetchedModel
    meta: ModelVersion


class ArtifactCache:
    """One model's downloaded versions, each in ``root/<manifest digest>``."""

    def __init__(
        self, source: ArtifactSource, root: Path, verifier: ManifestVerifier | None
    ) -> None:
        self._source = source
        self.root = root
        self._verifier = verifier
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Make a download in progress give up before its next file: the service is stopping,
        and its exit waits for the thread that downloads."""
        self._stopping.set()

    def fetch(self, model_name: str, artifact_uri: str) -> FetchedModel:
        try:
            prefix = S3Uri.parse(artifact_uri)
        except S3UriError as exc:
            raise ModelLoadError(f"artifact_uri is not usable: {exc}") from exc
        base = prefix.key.rstrip("/") + "/"
        try:
            listing = self._source.list_objects(S3Uri(prefix.bucket, base))
        except Exception as exc:
            raise _store_failure(f"listing {artifact_uri} failed", exc) from exc
        try:
            objects = listed_files(base, listing)
        except ArtifactRefused as exc:
            raise ModelRejected(f"refused: {exc}") from None
        if not objects:
            raise ModelLoadError(f"no artifacts under {artifact_uri}")
        manifest = self._verified_manifest(model_name, prefix.bucket, objects)
        name = manifest.digest if manifest else "unsigned-" + _sha256(artifact_uri.encode())[:32]
        dest = self.root / name
        record = self.root / f"{name}.source.json"
        fingerprint = _fingerprint(artifact_uri, objects)
        if self._reusable(dest, record, fingerprint, manifest):
            log.info("using the cached copy in %s", dest)
            return FetchedModel(dest, manifest, downloaded=False)
        self.root.mkdir(parents=True, exist_ok=True)
        # Downloaded next to the final place and renamed: a crash never leaves a half-copied
        # folder that a restart would take for a complete model.
        partial = self.root / f".partial-{uuid.uuid4().hex[:12]}"
        try:
            for relative, obj in objects.items():
                if self._stopping.is_set():
                    raise ModelLoadError(f"download of {artifact_uri} stopped: shutting down")
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
            raise _store_failure(f"download of {artifact_uri} failed", exc) from exc
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return FetchedModel(dest, manifest)

    def discard(self, fetched: FetchedModel) -> None:
        """Forget a copy that failed to load, so the next attempt downloads it again."""
        shutil.rmtree(fetched.path, ignore_errors=True)
        fetched.path.with_name(f"{fetched.path.name}.source.json").unlink(missing_ok=True)

    def prune(self, *keep: Path) -> None:
        """Delete every copy but ``keep`` (the served one, and the one served before it, so a
        rollback is not a download): the served model is in memory, nothing reads the rest."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        kept = {CURRENT_FILE} | {p.name for p in keep} | {f"{p.name}.source.json" for p in keep}
        for entry in entries:
            if entry.name in kept:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def remember(self, path: Path, meta: ModelVersion) -> None:
        """Record durably that the copy in ``path`` is served as ``meta`` (``current.json``).

        Written to a temporary file and renamed over the old record: a crash leaves the old
        record or the new one, never a torn one.
        """
        record = {
            "format": CURRENT_FORMAT,
            "folder": path.name,
            "manifest_sha256": meta.manifest_sha256,
            "model": meta.model_dump(mode="json"),
        }
        _write_atomically(self.root / CURRENT_FILE, json.dumps(record, indent=2).encode())

    def forget(self) -> None:
        """Drop the record: the copy it names must not be served again without the registry."""
        (self.root / CURRENT_FILE).unlink(missing_ok=True)

    def remembered(self, model_name: str) -> RememberedModel:
        """The copy ``current.json`` names, checked as a download is: the signature by a trusted
        key for ``model_name`` and every file's SHA-256. ``ModelLoadError`` says why not."""
        record = self._read_record()
        folder = record.get("folder")
        # One plain name in this folder: never a path elsewhere, nor a scratch folder.
        if (
            not isinstance(folder, str)
            or "/" in folder
            or folder.startswith(".")
            or unsafe_relative_path(folder) is not None
        ):
            raise ModelLoadError(f"{CURRENT_FILE} names no copy in {self.root}")
        try:
            meta = ModelVersion.model_validate(record.get("model"))
        except ValidationError as exc:
            raise ModelLoadError(f"{CURRENT_FILE} holds no usable version: {exc}") from None
        path = self.root / folder
        if path.is_symlink() or not path.is_dir():
            raise ModelLoadError(f"the copy {CURRENT_FILE} names is gone ({path})")
        manifest = self._verified_local_manifest(model_name, path)
        if manifest is not None and record.get("manifest_sha256") != manifest.digest:
            raise ModelRejected(
                f"refused: {CURRENT_FILE} names manifest {record.get('manifest_sha256')}, but "
                f"the copy in {path} is signed as {manifest.digest}"
            )
        return RememberedModel(FetchedModel(path, manifest, downloaded=False), meta)

    def _read_record(self) -> dict[str, Any]:
        current = self.root / CURRENT_FILE
        try:
            if current.stat().st_size > _MAX_CURRENT_BYTES:
                raise ModelLoadError(f"{current} is larger than {_MAX_CURRENT_BYTES} bytes")
            record = json.loads(current.read_bytes())
        except FileNotFoundError:
            raise ModelLoadError(f"no copy was served from {self.root} before") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {current}: {describe_exception(exc)}") from None
        if not isinstance(record, dict) or record.get("format") != CURRENT_FORMAT:
            raise ModelLoadError(f"{current} is not a {CURRENT_FORMAT} record")
        return record

    def _verified_local_manifest(self, model_name: str, path: Path) -> Manifest | None:
        if self._verifier is None:
            return None
        envelope = path / SIGNATURE_FILE
        try:
            if envelope.is_symlink() or envelope.stat().st_size > MAX_ENVELOPE_BYTES:
                raise ModelRejected(f"refused: the cached {SIGNATURE_FILE} is not a plain file")
            data = envelope.read_bytes()
        except FileNotFoundError:
            raise ModelRejected(
                f"refused: the cached copy is not signed by the platform (no {SIGNATURE_FILE})"
            ) from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read {envelope}: {describe_exception(exc)}") from None
        try:
            manifest = self._verifier.verify(data, model_name=model_name)
            check_files(path, manifest)
        except SignatureError as exc:
            raise ModelRejected(f"refused: the cached copy: {exc}") from None
        return manifest

    def _verified_manifest(
        self, model_name: str, bucket: str, objects: dict[str, StoredObject]
    ) -> Manifest | None:
        if self._verifier is None:
            return None
        try:
            return read_manifest(self._source, self._verifier, model_name, bucket, objects)
        except ArtifactRefused as exc:
            if SIGNATURE_FILE not in objects:
                raise ModelRejected(
                    f"refused: {exc}; only versions the trainer registered are served"
                ) from None
            raise ModelRejected(f"refused: {exc}") from None
        except Exception as exc:
            raise _store_failure(f"reading {SIGNATURE_FILE} failed", exc) from exc

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


def _store_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (from boto3 or a wrapper around it) means the store could not be asked:
    no connection, a timeout, a dropped or truncated answer, a 5xx or throttling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Local OSErrors (a full disk) are not the store's; these are the network's.
        if isinstance(
            current,
            BotoConnectionError
            | HTTPClientError
            | IncompleteReadError
            | ConnectionError
            | TimeoutError,
        ):
            return True
        if isinstance(current, ClientError) and _server_side(current):
            return True
        # boto3's download_file wraps its last error in RetriesExceededError.last_exception.
        last = getattr(current, "last_exception", None)
        current = last if isinstance(last, BaseException) else current.__cause__
    return False


def _server_side(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = exc.response.get("Error", {}).get("Code", "")
    return (isinstance(status, int) and status >= 500) or code in _UNAVAILABLE_CODES


def _store_failure(what: str, exc: Exception) -> ModelLoadError:
    error = StoreUnavailable if _store_unavailable(exc) else ModelLoadError
    return error(f"{what}: {describe_exception(exc)}")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    # The rename itself is durable only once the folder is.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _fingerprint(artifact_uri: str, objects: dict[str, StoredObject]) -> str:
    listing = {path: [obj.size, obj.etag] for path, obj in sorted(objects.items())}
    return json.dumps({"artifact_uri": artifact_uri, "objects": listing}, sort_keys=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
