"""Downloading a model version's files, none of them outside the folder they are meant for.

``ObjectStore.download_prefix`` joins each object key to the destination as it comes: a key such
as ``models/m/artifacts/../../../../etc/cron.d/x`` (S3 keys are free text) would be written
outside it. ``SafeArtifactStore`` checks every key first and downloads nothing if one could land
outside; the refusal is a ``ModelRejected`` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mlops_common.storage import S3Uri

from inference.errors import ModelRejected
from inference.safe_load import unsafe_relative_path


class _Downloader(Protocol):
    def download_file(self, bucket: str, key: str, filename: str, /) -> None: ...


class KeyListingStore(Protocol):
    """What ``SafeArtifactStore`` needs of ``mlops_common.storage.ObjectStore``."""

    @property
    def client(self) -> _Downloader: ...

    def list_keys(self, prefix: S3Uri) -> list[str]: ...


class SafeArtifactStore:
    """``download_prefix`` of an ``ObjectStore``, refusing keys that escape the destination."""

    def __init__(self, store: KeyListingStore) -> None:
        self._store = store

    def download_prefix(self, prefix: S3Uri, dest: Path) -> int:
        """Copy every object under ``prefix`` into ``dest``, keeping relative paths. Returns count.

        Every key is checked before the first byte is written.
        """
        base = prefix.key.rstrip("/") + "/"
        keys = [k for k in self._store.list_keys(S3Uri(prefix.bucket, base)) if not k.endswith("/")]
        plan = [(key, safe_target(dest, base, key)) for key in keys]
        for key, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._store.client.download_file(prefix.bucket, key, str(target))
        return len(plan)


def safe_target(dest: Path, base: str, key: str) -> Path:
    """Where object ``key`` (under the ``base`` prefix) goes in ``dest``; refused if outside."""
    if not key.startswith(base):
        raise ModelRejected(f"refused: artifact key {key!r} is not under {base!r}")
    relative = key[len(base) :]
    problem = unsafe_relative_path(relative)
    if problem is None:
        root = dest.resolve()
        if not (root / relative).resolve().is_relative_to(root):
            problem = "resolves outside the download folder"
    if problem is not None:
        raise ModelRejected(
            f"refused: artifact key {key!r} {problem}: it would be written outside the model's "
            "folder"
        )
    return dest / relative
