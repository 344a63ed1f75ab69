from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlops_common.signing import (
    SIGNATURE_FILE,
    ManifestSigner,
    ManifestVerifier,
    SignatureError,
    check_files,
    check_sizes,
    generate_key_pair,
    public_key_of,
)

PRIVATE, PUBLIC = generate_key_pair()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "model.skops").write_bytes(b"\x00" * 1000)
    (root / "sub" / "extra.json").write_text("{}")
    return root


def _signed(model: Path, name: str = "churn") -> bytes:
    envelope = ManifestSigner(PRIVATE).sign_dir(model, model_name=name, run_id="r1")
    (model / SIGNATURE_FILE).write_bytes(envelope)
    return envelope


def test_a_signed_folder_verifies_and_names_its_files(model: Path) -> None:
    envelope = _signed(model)
    manifest = ManifestVerifier([PUBLIC]).verify(envelope, model_name="churn")
    assert sorted(manifest.files) == ["MLmodel", "model.skops", "sub/extra.json"]
    assert manifest.files["model.skops"].size == 1000
    assert manifest.run_id == "r1"
    assert manifest.key_id == ManifestSigner(PRIVATE).key_id
    check_files(model, manifest)  # the signature file itself is not part of the manifest
    check_sizes(manifest, {"MLmodel": 12, "model.skops": 1000, "sub/extra.json": 2})
    # Signing the same files again names the same set: only signed_at differs.
    assert len(manifest.digest) == 64


def test_the_public_key_is_derived_from_the_private_one() -> None:
    assert public_key_of(PRIVATE) == PUBLIC


def test_a_changed_payload_fails_the_signature(model: Path) -> None:
    envelope = json.loads(_signed(model))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["files"]["model.skops"]["size"] = 999
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(SignatureError, match=r"signature of mlops-signature\.json is not valid"):
        ManifestVerifier([PUBLIC]).verify(json.dumps(envelope).encode(), model_name="churn")


def test_a_signature_over_the_bare_payload_is_not_a_manifest_signature(model: Path) -> None:
    """The context prefix: the same key signing the same bytes elsewhere proves nothing here."""
    envelope = json.loads(_signed(model))
    payload = base64.b64decode(envelope["payload"])
    raw = Ed25519PrivateKey.from_private_bytes(base64.b64decode(PRIVATE))
    envelope["signature"] = base64.b64encode(raw.sign(payload)).decode()
    with pytest.raises(SignatureError, match="not valid"):
        ManifestVerifier([PUBLIC]).verify(json.dumps(envelope).encode(), model_name="churn")


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (b"not json", "is not JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"format": "other"}', "is not a mlops.signed-manifest/v1 envelope"),
        (b" " * (1024 * 1024 + 1), "is larger than"),
    ],
)
def test_malformed_envelopes_are_refused(envelope: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        ManifestVerifier([PUBLIC]).verify(envelope, model_name="churn")


def test_each_difference_is_named(model: Path) -> None:
    manifest = ManifestVerifier([PUBLIC]).verify(_signed(model), model_name="churn")
    (model / "sub" / "extra.json").write_text("[]")
    with pytest.raises(SignatureError, match=r"sub/extra\.json changed after it was signed"):
        check_files(model, manifest)
    (model / "sub" / "extra.json").write_text("{}")
    (model / "late.txt").write_text("x")
    with pytest.raises(SignatureError, match=r"late\.txt is not in the signed manifest"):
        check_files(model, manifest)
    (model / "late.txt").unlink()
    (model / "MLmodel").unlink()
    with pytest.raises(SignatureError, match="MLmodel is in the signed manifest but missing"):
        check_files(model, manifest)


def test_links_are_not_followed_when_hashing(model: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("x")
    (model / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SignatureError, match="link is a symbolic link"):
        ManifestSigner(PRIVATE).sign_dir(model, model_name="churn")


def test_keys_are_checked_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="not an Ed25519 private key") as info:
        ManifestSigner("c2VjcmV0LXRoYXQtaXMtdG9vLXNob3J0")
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(ValueError, match="no public key"):
        ManifestVerifier([])
