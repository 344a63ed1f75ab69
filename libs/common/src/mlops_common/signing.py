"""Signed manifests of model artifacts: inference serves only the files the trainer registered.

When the trainer registers a model it lists every file of the model's artifact folder with its
size and SHA-256, adds the registered model's name, and signs that manifest with the platform's
Ed25519 key. The signed manifest is stored next to the files as ``mlops-signature.json``.
Inference checks the signature against the public keys it trusts and every file it downloaded
against the manifest before it reads a byte of them: a version nobody signed, signed by an
unknown key, signed for another model, or with one file changed, added or removed is refused.

The signature covers the manifest bytes exactly as stored (no re-serialisation, so nothing can
be smuggled through a canonical form), prefixed with a context string so that a signature made
by this key for anything else can never pass as a manifest signature. The manifest's own
SHA-256 is the identity of one exact set of files: inference keys its download cache by it.

Keys are 32 raw bytes in base64, so they fit in one environment variable; a key's id is a hash
of its public half, named in every envelope so inference can trust several keys during rotation
(docs/security.md, "Rotating the signing key").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

SIGNATURE_FILE = "mlops-signature.json"
ENVELOPE_FORMAT = "mlops.signed-manifest/v1"
MANIFEST_FORMAT = "mlops.model-manifest/v1"
_CONTEXT = b"mlops.model-manifest/v1\x00"
# An envelope is a few hundred bytes per file; anything near these limits is not ours.
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_FILES = 10_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


class SignatureError(Exception):
    """The artifacts are not what the platform signed; the message says what differs."""


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: the files of one model version as the trainer registered them."""

    model_name: str
    run_id: str | None
    signed_at: str
    key_id: str
    files: Mapping[str, FileDigest]
    # SHA-256 of the signed manifest bytes: names this exact set of files.
    digest: str


def key_id(public_key: Ed25519PublicKey) -> str:
    return "ed25519:" + hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def generate_key_pair() -> tuple[str, str]:
    """A new signing key: (private key, public key), each 32 raw bytes in base64."""
    private = Ed25519PrivateKey.generate()
    return _b64(private.private_bytes_raw()), _b64(private.public_key().public_bytes_raw())


def public_key_of(private_key: str) -> str:
    """The public half (base64) of a base64 private key."""
    return _b64(_load_private(private_key).public_key().public_bytes_raw())


def file_digests(root: Path) -> dict[str, FileDigest]:
    """Every regular file below ``root`` (except the signature itself) by relative POSIX path."""
    files: dict[str, FileDigest] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise SignatureError(f"{path.relative_to(root).as_posix()} is a symbolic link")
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if relative == SIGNATURE_FILE:
            continue
        files[relative] = FileDigest(size=path.stat().st_size, sha256=_sha256_file(path))
        if len(files) > MAX_FILES:
            raise SignatureError(f"more than {MAX_FILES} files")
    return files


class ManifestSigner:
    """Signs artifact folders with the platform's private key (the trainer holds it)."""

    def __init__(self, private_key: str) -> None:
        self._key = _load_private(private_key)
        self.key_id = key_id(self._key.public_key())

    def sign_dir(self, root: Path, *, model_name: str, run_id: str | None = None) -> bytes:
        """The envelope (to store as ``SIGNATURE_FILE`` in ``root``) for the files in ``root``."""
        files = file_digests(root)
        if not files:
            raise SignatureError(f"{root} holds no files to sign")
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_name": model_name,
            "run_id": run_id,
            "signed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "key_id": self.key_id,
            "files": {
                path: {"size": digest.size, "sha256": digest.sha256}
                for path, digest in files.items()
            },
        }
        payload = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        envelope = {
            "format": ENVELOPE_FORMAT,
            "key_id": self.key_id,
            "payload": _b64(payload),
            "signature": _b64(self._key.sign(_CONTEXT + payload)),
        }
        return json.dumps(envelope, indent=2).encode() + b"\n"


class ManifestVerifier:
    """Checks envelopes against the public keys inference trusts, and folders against them."""

    def __init__(self, public_keys: Iterable[str]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for encoded in public_keys:
            try:
                key = Ed25519PublicKey.from_public_bytes(_unb64(encoded, size=32))
            except ValueError as exc:
                raise ValueError(f"not an Ed25519 public key (32 bytes, base64): {exc}") from exc
            self._keys[key_id(key)] = key
        if not self._keys:
            raise ValueError("no public key to verify signatures with")

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, envelope: bytes, *, model_name: str) -> Manifest:
        """The manifest in ``envelope`` if a trusted key signed it for ``model_name``."""
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise SignatureError(f"{SIGNATURE_FILE} is larger than {MAX_ENVELOPE_BYTES} bytes")
        outer = _json_object(envelope, SIGNATURE_FILE)
        if outer.get("format") != ENVELOPE_FORMAT:
            raise SignatureError(f"{SIGNATURE_FILE} is not a {ENVELOPE_FORMAT} envelope")
        signer = outer.get("key_id")
        key = self._keys.get(signer) if isinstance(signer, str) else None
        if key is None or not isinstance(signer, str):
            raise SignatureError(
                f"signed by {signer!r}, which is not a trusted key (trusted: "
                f"{', '.join(self.key_ids)})"
            )
        try:
            payload = _unb64(outer.get("payload"))
            signature = _unb64(outer.get("signature"), size=64)
            key.verify(signature, _CONTEXT + payload)
        except (ValueError, InvalidSignature) as exc:
            raise SignatureError(f"the signature of {SIGNATURE_FILE} is not valid") from exc
        # Signed by us from here on; still checked, as a bug in the trainer must not pass.
        manifest = _json_object(payload, "the signed manifest")
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("key_id") != signer:
            raise SignatureError("the signed manifest is not a model manifest of this key")
        if manifest.get("model_name") != model_name:
            raise SignatureError(
                f"signed for model {manifest.get('model_name')!r}, not {model_name!r}"
            )
        return Manifest(
            model_name=model_name,
            run_id=manifest.get("run_id") if isinstance(manifest.get("run_id"), str) else None,
            signed_at=str(manifest.get("signed_at")),
            key_id=signer,
            files=_files(manifest.get("files")),
            digest=hashlib.sha256(payload).hexdigest(),
        )


def check_sizes(manifest: Manifest, listing: Mapping[str, int]) -> None:
    """Compare an object listing (path -> size) with the manifest before downloading anything."""
    _compare(manifest, {path: FileDigest(size, "") for path, size in listing.items()}, hashes=False)


def check_files(root: Path, manifest: Manifest) -> None:
    """Raise unless the files below ``root`` are exactly the manifest's, byte for byte."""
    _compare(manifest, file_digests(root), hashes=True)


def _compare(manifest: Manifest, found: Mapping[str, FileDigest], *, hashes: bool) -> None:
    found = {path: digest for path, digest in found.items() if path != SIGNATURE_FILE}
    added = sorted(set(found) - set(manifest.files))
    if added:
        raise SignatureError(f"{added[0]} is not in the signed manifest (added after signing)")
    missing = sorted(set(manifest.files) - set(found))
    if missing:
        raise SignatureError(f"{missing[0]} is in the signed manifest but missing")
    for path, expected in manifest.files.items():
        actual = found[path]
        if actual.size != expected.size or (hashes and actual.sha256 != expected.sha256):
            raise SignatureError(f"{path} changed after it was signed")


def _files(value: Any) -> dict[str, FileDigest]:
    if not isinstance(value, dict) or not value or len(value) > MAX_FILES:
        raise SignatureError("the signed manifest lists no files")
    files = {}
    for path, entry in value.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if (
            not isinstance(size, int)
            or size < 0
            or not isinstance(digest, str)
            or not _SHA256.fullmatch(digest)
        ):
            raise SignatureError(f"the signed manifest's entry for {path!r} is malformed")
        files[str(path)] = FileDigest(size=size, sha256=digest)
    return files


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise SignatureError(f"{what} is not a JSON object")
    return value


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load_private(encoded: str) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(_unb64(encoded, size=32))
    except ValueError as exc:
        # Never echo the value: it is the key.
        raise ValueError("not an Ed25519 private key (32 bytes, base64)") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, *, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        data = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes, got {len(data)}")
    return data
